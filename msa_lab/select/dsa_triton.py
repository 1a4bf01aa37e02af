"""DSA's selection in Triton (the twin of ``dsa.select_dsa``'s reference), in query chunks whose
float32 score buffer ``[B, chunk, keys]`` fits the ``score_bytes`` kernel setting, so ``N x N`` is
never held at once:

1. ``_index_scores``: a program per (``BM`` query rows, ``BN`` keys) sums ``w * ReLU(index_q .
   index_k)`` over the index heads (one dot per head against the shared index key tile), writes
   the scores with ``-0.0`` made ``+0.0``, NaN made ``-inf`` (ranked last) and ``-inf`` after each
   row's own position;
2. ``torch.topk`` of each row gives its ``top_k``-th best score ``tau`` and how many scores beat it;
3. ``_take_tokens``: a program per row streams its visible scores once and keeps those above
   ``tau`` and, in position order, the first ties at ``tau`` that fill ``top_k``: the exact rule
   (ties to the lower position), with the kept positions ascending in the row.

The first ``top_k`` rows see at most ``top_k`` tokens and take them all: they are written without
scores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import TokenSelection
from ..triton_runtime import dot_pad, dot_precision, kernel_settings

BLOCK_ROWS = 64
BLOCK_KEYS = 64
TAKE_TILE = 1024
NUM_WARPS = 4


@triton.jit
def _index_scores(
    iq_ptr, ik_ptr, w_ptr, score_ptr, q0, q1,
    sqb, sqn, sqh, skb, skn, swb, swn, swh, ssb, ssn,
    H: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(2)
    t = q0 + tl.program_id(0) * BM + tl.arange(0, BM)
    key = tl.program_id(1) * BN + tl.arange(0, BN)
    row_ok = t < q1
    out = score_ptr + b.to(tl.int64) * ssb + (t - q0)[:, None].to(tl.int64) * ssn + key[None, :]
    store_ok = row_ok[:, None] & (key < q1)[None, :]
    if tl.program_id(1) * BN > q0 + tl.program_id(0) * BM + BM - 1:  # every key after every row
        tl.store(out, tl.full([BM, BN], float("-inf"), tl.float32), mask=store_ok)
    else:
        offs_d = tl.arange(0, DI_PAD)
        d_ok = (offs_d < DI)[None, :]
        k = tl.load(ik_ptr + b.to(tl.int64) * skb + key[:, None].to(tl.int64) * skn + offs_d[None, :],
                    mask=(key < q1)[:, None] & d_ok, other=0.0)
        total = tl.zeros([BM, BN], tl.float32)
        q_rows = iq_ptr + b.to(tl.int64) * sqb + t[:, None].to(tl.int64) * sqn + offs_d[None, :]
        w_rows = w_ptr + b.to(tl.int64) * swb + t.to(tl.int64) * swn
        for j in range(H):
            q = tl.load(q_rows + j * sqh, mask=row_ok[:, None] & d_ok, other=0.0)
            logits = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            w = tl.load(w_rows + j * swh, mask=row_ok, other=0.0).to(tl.float32)
            total += w[:, None] * tl.where(logits < 0.0, 0.0, logits)  # ReLU that keeps NaN (tl.maximum drops it)
        total = tl.where(total == 0.0, 0.0, total)  # -0.0 (a negative weight times 0) ties with +0.0
        total = tl.where(total == total, total, float("-inf"))  # NaN ranks last
        total = tl.where(key[None, :] <= t[:, None], total, float("-inf"))
        tl.store(out, total, mask=store_ok)


@triton.jit
def _take_tokens(
    score_ptr, tau_ptr, above_ptr, sel_ptr, q0, C,
    ssb, ssn, sib, sin,
    K: tl.constexpr, TILE: tl.constexpr,
):
    r = tl.program_id(0)
    b = tl.program_id(1)
    t = q0 + r
    out = sel_ptr + b.to(tl.int64) * sib + t.to(tl.int64) * sin
    row = score_ptr + b.to(tl.int64) * ssb + r.to(tl.int64) * ssn
    tau = tl.load(tau_ptr + b * C + r)
    ties_wanted = K - tl.load(above_ptr + b * C + r)
    kept = 0  # slots written so far
    ties = 0  # ties at tau met so far
    for s0 in range(0, t + 1, TILE):
        pos = s0 + tl.arange(0, TILE)
        visible = pos <= t
        s = tl.load(row + pos, mask=visible, other=float("-inf"))
        tie = visible & (s == tau)
        tie_rank = ties + tl.cumsum(tie.to(tl.int32), 0)  # 1-based among the row's ties
        take = (visible & (s > tau)) | (tie & (tie_rank <= ties_wanted))
        slot = kept + tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(out + slot, pos, mask=take)
        kept += tl.sum(take.to(tl.int32), 0)
        ties += tl.sum(tie.to(tl.int32), 0)


def dsa_select_triton(index_q: torch.Tensor, index_k: torch.Tensor, index_weights: torch.Tensor,
                      top_k: int) -> TokenSelection:
    """``select_dsa`` on the Triton kernels, for checked inputs."""
    B, N, H, Di = index_q.shape
    iq, ik, w = (x.contiguous() for x in (index_q, index_k, index_weights))
    sel = torch.empty(B, 1, N, top_k, device=iq.device, dtype=torch.int32)
    # Rows 0 .. top_k - 1 see at most top_k tokens and take them all: no scores needed.
    short = min(top_k, N)
    slot = torch.arange(top_k, device=iq.device, dtype=torch.int32)
    sel[:, 0, :short] = torch.where(slot <= torch.arange(short, device=iq.device).view(-1, 1), slot, -1)
    rows = max(BLOCK_ROWS, kernel_settings().score_bytes // (4 * B * N) // BLOCK_ROWS * BLOCK_ROWS)
    for q0 in range(short, N, rows):
        q1 = min(q0 + rows, N)
        C = q1 - q0
        scores = torch.empty(B, C, q1, device=iq.device, dtype=torch.float32)
        _index_scores[(triton.cdiv(C, BLOCK_ROWS), triton.cdiv(q1, BLOCK_KEYS), B)](
            iq, ik, w, scores, q0, q1,
            iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(1),
            w.stride(0), w.stride(1), w.stride(2), scores.stride(0), scores.stride(1),
            H=H, BM=BLOCK_ROWS, BN=BLOCK_KEYS, DI=Di, DI_PAD=dot_pad(Di), PRECISION=dot_precision(iq.dtype),
            num_warps=NUM_WARPS)
        best = torch.topk(scores, top_k, dim=-1, sorted=False).values  # q1 > top_k: every row ranks
        tau = best.amin(-1).contiguous()
        above = (best > tau.unsqueeze(-1)).sum(-1, dtype=torch.int32).contiguous()
        _take_tokens[(C, B)](scores, tau, above, sel, q0, C, scores.stride(0), scores.stride(1),
                             sel.stride(0), sel.stride(2), K=top_k, TILE=TAKE_TILE)
    return TokenSelection._trusted(sel)
