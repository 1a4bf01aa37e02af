"""MoBA selection in Triton: per query head, the fp32 gate ``q[t, h] . mean(k[block, group(h)])``
for every earlier block (tensor-core products of the input-dtype values, accumulated in
fp32), then the shared top-k kernel: own block in slot 0 and counted in top_k, ties to the
lower id. Block means come from ``block_mean_keys`` (rounded to the input dtype, as MoBA's
reference does). The gate buffer holds one query chunk (the ``score_bytes`` kernel setting).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from ..triton_runtime import dot_pad, dot_precision
from ..triton_tiles import gate_rows, load_rows
from .pooling import block_mean_keys
from .topk_triton import select_in_chunks

QUERY_TILE = 128
BLOCK_TILE = 64


@triton.jit
def _gate_scores(
    q_ptr, km_ptr, score_ptr, q0, q1, NB,
    sqb, sqn, sqh, skb, skn, skh, ssb, ssh, ssn,
    G: tl.constexpr, BS: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    b, h, t, row_ok, q, own, last_own, out_rows = gate_rows(q_ptr, score_ptr, q0, q1, sqb, sqn, sqh, ssb, ssh, ssn,
                                                            BS, BM, D, D_PAD)
    for j0 in range(0, last_own, BJ):  # only blocks before a query's own block compete
        blk = j0 + tl.arange(0, BJ)
        km = load_rows(km_ptr, b, blk, h // G, skb, skn, skh, blk < NB, D, D_PAD)
        gate = tl.dot(q, tl.trans(km), input_precision=PRECISION)
        tl.store(out_rows + blk[None, :], gate, mask=row_ok[:, None] & (blk[None, :] < own[:, None]))


def moba_select_triton(q: torch.Tensor, k: torch.Tensor, block_size: int, top_k: int) -> BlockSelection:
    """The selection of ``select_moba`` computed by the Triton kernels (valid inputs)."""
    B, N, Hq, D = q.shape
    G = Hq // k.shape[2]
    kmean = block_mean_keys(k, block_size).contiguous()
    nb = kmean.shape[1]
    q = q.contiguous()

    def fill_scores(scores, q0, q1):
        _gate_scores[(triton.cdiv(q1 - q0, QUERY_TILE), Hq, B)](
            q, kmean, scores, q0, q1, nb,
            q.stride(0), q.stride(1), q.stride(2), kmean.stride(0), kmean.stride(1), kmean.stride(2),
            scores.stride(0), scores.stride(1), scores.stride(2),
            G=G, BS=block_size, BM=QUERY_TILE, BJ=BLOCK_TILE, D=D, D_PAD=dot_pad(D),
            PRECISION=dot_precision(q.dtype),
        )

    sel = select_in_chunks(B, Hq, N, nb, QUERY_TILE, block_size, top_k, q.device, fill_scores)
    return BlockSelection._trusted(sel, block_size, "head")
