"""MSA index branch in Triton: max-pooled block scores, then an exp-free top-k.

``_block_scores``: a program per (128-query tile, group, batch) loops over the key blocks
up to its last query's block; for each it computes the causal index logits
``index_q . index_k * Di**-0.5`` on the tensor cores and keeps their max per query
(max pooling: no softmax, no exponentials). Scores go to a buffer for one query chunk.

``_top_blocks``: a program per query row puts the local block in slot 0, then picks the
``top_k - 1`` best earlier blocks by repeated max, ties to the lower id (the rule of
``select_top_blocks``; NaN scores count as -inf). Unused slots are -1.

The score buffer (``[B, G, chunk, num_blocks]`` float32) is bounded by ``SCORE_BYTES``,
so 1M-token inputs never hold a ``[G, N, N / block]`` matrix at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection, num_blocks
from .runtime import dot_precision, next_pow2

SCORE_BYTES = 4 << 30
QUERY_TILE = 128


@triton.jit
def _block_scores(
    iq_ptr, ik_ptr, score_ptr, N, q0, q1, scale,
    sqb, sqn, sqg, skb, skn, skg, ssb, ssg, ssn,
    BM: tl.constexpr, BS: tl.constexpr, BS_PAD: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = t < q1
    offs_d = tl.arange(0, DI_PAD)
    d_ok = offs_d < DI
    iq = tl.load(iq_ptr + b.to(tl.int64) * sqb + t[:, None].to(tl.int64) * sqn + g * sqg + offs_d[None, :],
                 mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    offs_k = tl.arange(0, BS_PAD)
    last_blk = (tl.minimum(q0 + (tl.program_id(0) + 1) * BM, q1) - 1) // BS
    out_row = score_ptr + b.to(tl.int64) * ssb + g * ssg + (t - q0).to(tl.int64) * ssn
    for j in range(0, last_blk + 1):
        key = j * BS + offs_k
        key_ok = (offs_k < BS) & (key < N)
        ik = tl.load(ik_ptr + b.to(tl.int64) * skb + key[:, None].to(tl.int64) * skn + g * skg + offs_d[None, :],
                     mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(iq, tl.trans(ik), input_precision=PRECISION) * scale
        s = tl.where(key_ok[None, :] & (key[None, :] <= t[:, None]), s, float("-inf"))
        tl.store(out_row + j, tl.max(s, 1), mask=row_ok & (j * BS <= t))


@triton.jit
def _top_blocks(
    score_ptr, sel_ptr, q0, G,
    ssb, ssg, ssn, sib, sig, sin,
    K: tl.constexpr, BS: tl.constexpr, NB_PAD: tl.constexpr,
):
    r = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + r
    own = t // BS
    j = tl.arange(0, NB_PAD)
    avail = j < own
    x = tl.load(score_ptr + b.to(tl.int64) * ssb + g * ssg + r.to(tl.int64) * ssn + j, mask=avail,
                other=float("-inf"))
    x = tl.where(x == x, x, float("-inf"))  # NaN ranks last
    out = sel_ptr + b.to(tl.int64) * sib + g * sig + t.to(tl.int64) * sin
    tl.store(out, own)
    for s in range(1, K):
        best = tl.max(tl.where(avail, x, float("-inf")), 0)
        pick = tl.min(tl.where(avail & (x == best), j, NB_PAD), 0)
        tl.store(out + s, tl.where(s <= own, pick, -1))
        avail = avail & (j != pick)


def msa_select_triton(index_q: torch.Tensor, index_k: torch.Tensor, block_size: int,
                      top_k: int) -> BlockSelection:
    """The MSA selection of ``select_msa`` computed by the Triton kernels (valid inputs)."""
    B, N, G, Di = index_q.shape
    nb = num_blocks(N, block_size)
    iq, ik = index_q.contiguous(), index_k.contiguous()
    skg = 0 if ik.shape[2] == 1 else ik.stride(2)  # one shared index key head: stride 0
    sel = torch.empty(B, G, N, top_k, device=iq.device, dtype=torch.int32)
    C = max(QUERY_TILE, min(N, SCORE_BYTES // (B * G * nb * 4)) // QUERY_TILE * QUERY_TILE)
    scores = torch.empty(B, G, min(C, N), nb, device=iq.device, dtype=torch.float32)
    for q0 in range(0, N, C):
        q1 = min(N, q0 + C)
        _block_scores[(triton.cdiv(q1 - q0, QUERY_TILE), G, B)](
            iq, ik, scores, N, q0, q1, Di ** -0.5,
            iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(1), skg,
            scores.stride(0), scores.stride(1), scores.stride(2),
            BM=QUERY_TILE, BS=block_size, BS_PAD=max(16, next_pow2(block_size)),
            DI=Di, DI_PAD=max(16, next_pow2(Di)), PRECISION=dot_precision(iq.dtype),
        )
        _top_blocks[(q1 - q0, G, B)](
            scores, sel, q0, G,
            scores.stride(0), scores.stride(1), scores.stride(2),
            sel.stride(0), sel.stride(1), sel.stride(2),
            K=top_k, BS=block_size, NB_PAD=next_pow2(nb),
        )
    return BlockSelection._trusted(sel, block_size, "group")
