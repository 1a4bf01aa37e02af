"""Quest selection in Triton: per query head, the bound ``sum_i max(q_i * m_i, q_i * M_i)`` of
every earlier block, then the shared top-k kernel: own block in slot 0 and counted in top_k,
ties to the lower id. The key bounds ``m, M`` come from ``block_key_bounds`` (exact in the
input dtype). The gate buffer holds one query chunk (the ``score_bytes`` kernel setting).

The bound is not a dot product, but it splits into two: ``max(q_i m_i, q_i M_i)`` is
``q_i M_i`` where ``q_i >= 0`` and ``q_i m_i`` where ``q_i < 0`` (``m_i <= M_i``), so the
bound is ``q+ . M + q- . m`` with ``q+ = max(q, 0)``, ``q- = min(q, 0)``: two tensor-core
products of the input-dtype values (each term ``q_i * M_i`` or ``q_i * m_i`` as in the
reference, summed in another order), accumulated in fp32. Non-finite queries and bounds are
flagged explicitly (the split would turn ``0 * inf`` into NaN where the definition does not),
so both backends score them NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from ..triton_runtime import dot_pad, dot_precision
from ..triton_tiles import gate_rows, load_rows
from .pooling import block_key_bounds
from .topk_triton import select_in_chunks

# Shared-memory budgets of the operand tiles (bytes): the query's two halves, and one
# pipeline stage of the two bound tiles. float32 and head dim 256 get fewer rows, so every
# dtype and head dim up to 256 stays well under an H200's 227 KB with 3 stages.
QUERY_TILE_BYTES = 64 << 10
BOUND_TILE_BYTES = 32 << 10
MAX_QUERY_TILE = 128
MAX_BLOCK_TILE = 64


@triton.jit
def _bound_scores(
    q_ptr, lo_ptr, hi_ptr, score_ptr, q0, q1, NB,
    sqb, sqn, sqh, skb, skn, skh, ssb, ssh, ssn,
    G: tl.constexpr, BS: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    b, h, t, row_ok, q, own, last_own, out_rows = gate_rows(q_ptr, score_ptr, q0, q1, sqb, sqn, sqh, ssb, ssh, ssn,
                                                            BS, BM, D, D_PAD)
    # tl.maximum against a Python float promotes bf16/fp16 to fp32 (triton 3.6), and tl.dot needs
    # both operands in one dtype: back to the input dtype (exact: a max or min of q and 0 is q or 0).
    q_pos = tl.maximum(q, 0.0).to(q.dtype)
    q_neg = tl.minimum(q, 0.0).to(q.dtype)
    bad_row = tl.max(tl.where(tl.abs(q) < float("inf"), 0, 1), 1) > 0
    for j0 in range(0, last_own, BJ):  # only blocks before a query's own block compete
        blk = j0 + tl.arange(0, BJ)
        lo = load_rows(lo_ptr, b, blk, h // G, skb, skn, skh, blk < NB, D, D_PAD)
        hi = load_rows(hi_ptr, b, blk, h // G, skb, skn, skh, blk < NB, D, D_PAD)
        bad_blk = tl.max(tl.where((tl.abs(lo) < float("inf")) & (tl.abs(hi) < float("inf")), 0, 1), 1) > 0
        bound = tl.dot(q_pos, tl.trans(hi), input_precision=PRECISION)
        bound = tl.dot(q_neg, tl.trans(lo), bound, input_precision=PRECISION)
        bound = tl.where(bad_row[:, None] | bad_blk[None, :], float("nan"), bound)
        tl.store(out_rows + blk[None, :], bound, mask=row_ok[:, None] & (blk[None, :] < own[:, None]))


def _tile(budget_bytes: int, row_bytes: int, most: int) -> int:
    """Rows of a pair of operand tiles within ``budget_bytes``: a power of two in [16, most]."""
    fit = budget_bytes // (2 * row_bytes)
    return max(16, min(most, 1 << (fit.bit_length() - 1) if fit else 0))


def quest_select_triton(q: torch.Tensor, k: torch.Tensor, block_size: int, top_k: int) -> BlockSelection:
    """The selection of ``select_quest`` computed by the Triton kernels (valid inputs)."""
    B, N, Hq, D = q.shape
    G = Hq // k.shape[2]
    key_min, key_max = (x.contiguous() for x in block_key_bounds(k, block_size))
    nb = key_min.shape[1]
    q = q.contiguous()
    D_PAD = dot_pad(D)
    row_bytes = D_PAD * q.element_size()
    rows = _tile(QUERY_TILE_BYTES, row_bytes, MAX_QUERY_TILE)
    blocks = _tile(BOUND_TILE_BYTES, row_bytes, MAX_BLOCK_TILE)

    def fill_scores(scores, q0, q1):
        _bound_scores[(triton.cdiv(q1 - q0, rows), Hq, B)](
            q, key_min, key_max, scores, q0, q1, nb,
            q.stride(0), q.stride(1), q.stride(2), key_min.stride(0), key_min.stride(1), key_min.stride(2),
            scores.stride(0), scores.stride(1), scores.stride(2),
            G=G, BS=block_size, BM=rows, BJ=blocks, D=D, D_PAD=D_PAD,
            PRECISION=dot_precision(q.dtype),
        )

    sel = select_in_chunks(B, Hq, N, nb, rows, block_size, top_k, q.device, fill_scores)
    return BlockSelection._trusted(sel, block_size, "head")
