"""The shared top-k rule (``topk.top_blocks``) in Triton: a program per (query row, selection
head) puts the own block in slot 0, then picks the ``top_k - 1`` best earlier blocks by repeated
max, ties to the lower id; NaN scores count as -inf; unused slots are -1. MSA's and MoBA's
selection kernels and MSA's decode run it on their scores; ``select_in_chunks`` is the host loop the
selection twins share (score a query chunk, rank it).

A row of up to ``ROW_TILE`` blocks (the ``top_k_row_tile`` kernel setting) is held in
registers; a longer one (e.g. block 16 at 256K tokens and more) is scanned in ``ROW_TILE``
chunks once per pick, each pick the best key below
the previous one (keys are unique), so registers stay bounded at any length."""

from typing import Callable

import torch
import triton
import triton.language as tl

from ..triton_runtime import kernel_settings, next_pow2

@triton.jit
def _rank_keys(x, j, avail, NB_PAD: tl.constexpr):
    """One int64 key per block ``j`` ordering by score ``x``, then by lower id: the float's
    bits made order-preserving as a signed int, above the reversed block id (one max per
    pick). NaN ranks last; blocks not ``avail`` get int64 min (never a candidate)."""
    x = tl.where(x == x, x, float("-inf"))  # NaN ranks last
    bits = x.to(tl.int32, bitcast=True)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (bits.to(tl.int64) << 32) | (NB_PAD - 1 - j).to(tl.int64)
    taken = -9223372036854775807 - 1  # int64 min: no longer a candidate
    return tl.where(avail, key, taken)


@triton.jit
def top_blocks_kernel(
    score_ptr, sel_ptr, q0,
    ssb, ssg, ssn, sib, sig, sin,
    K: tl.constexpr, BS: tl.constexpr, NB_PAD: tl.constexpr, ROW_TILE: tl.constexpr,
):
    r = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + r
    own = t // BS
    row = score_ptr + b.to(tl.int64) * ssb + g.to(tl.int64) * ssg + r.to(tl.int64) * ssn
    taken = -9223372036854775807 - 1
    if NB_PAD <= ROW_TILE:
        j = tl.arange(0, NB_PAD)
        avail = j < own
        key = _rank_keys(tl.load(row + j, mask=avail, other=float("-inf")), j, avail, NB_PAD)
        out = sel_ptr + b.to(tl.int64) * sib + g.to(tl.int64) * sig + t.to(tl.int64) * sin
        tl.store(out, own)
        for s in range(1, K):
            best = tl.max(key, 0)
            pick = NB_PAD - 1 - (best & 0xFFFFFFFF).to(tl.int32)
            tl.store(out + s, tl.where(s <= own, pick, -1))
            key = tl.where(key == best, taken, key)
    else:
        out = sel_ptr + b.to(tl.int64) * sib + g.to(tl.int64) * sig + t.to(tl.int64) * sin
        tl.store(out, own)
        below = 9223372036854775807  # every key is below int64 max
        for s in range(1, K):
            best = taken
            if s <= own:  # at least s earlier blocks: one more pick
                for c0 in range(0, own, ROW_TILE):
                    j = c0 + tl.arange(0, ROW_TILE)
                    avail = j < own
                    key = _rank_keys(tl.load(row + j, mask=avail, other=float("-inf")), j, avail, NB_PAD)
                    best = tl.maximum(best, tl.max(tl.where(key < below, key, taken), 0))
            pick = NB_PAD - 1 - (best & 0xFFFFFFFF).to(tl.int32)
            tl.store(out + s, tl.where(s <= own, pick, -1))
            below = best


def select_in_chunks(batch: int, heads: int, seq_len: int, num_blocks: int, rows: int, block_size: int,
                     top_k: int, device, fill_scores: Callable[[torch.Tensor, int, int], None]) -> torch.Tensor:
    """``int32 [batch, heads, seq_len, top_k]`` block ids: query rows in chunks (multiples of
    the scoring kernel's ``rows``) whose float32 score buffer ``[batch, heads, chunk, num_blocks]``
    fits the ``score_bytes`` kernel setting; ``fill_scores(scores, q0, q1)`` writes the scores of rows ``q0 .. q1 - 1``
    (blocks before each row's own block), then the top-k kernel ranks them."""
    sel = torch.empty(batch, heads, seq_len, top_k, device=device, dtype=torch.int32)
    settings = kernel_settings()
    chunk = max(rows, min(seq_len, settings.score_bytes // (batch * heads * num_blocks * 4)) // rows * rows)
    scores = torch.empty(batch, heads, min(chunk, seq_len), num_blocks, device=device, dtype=torch.float32)
    for q0 in range(0, seq_len, chunk):
        q1 = min(seq_len, q0 + chunk)
        fill_scores(scores, q0, q1)
        top_blocks_kernel[(q1 - q0, heads, batch)](
            scores, sel, q0,
            scores.stride(0), scores.stride(1), scores.stride(2),
            sel.stride(0), sel.stride(1), sel.stride(2),
            K=top_k, BS=block_size, NB_PAD=next_pow2(num_blocks), ROW_TILE=settings.top_k_row_tile,
        )
    return sel
