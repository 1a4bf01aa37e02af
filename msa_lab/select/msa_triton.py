"""MSA index branch in Triton: max-pooled block scores, then an exp-free top-k.

``_block_scores``: a program per (128-query tile, group, batch) loops over the key blocks
up to its last query's block; for each it computes the causal index logits
``index_q . index_k * Di**-0.5`` on the tensor cores and keeps their max per query
(max pooling: no softmax, no exponentials). Scores go to a buffer for one query chunk.

Then the shared top-k kernel (``topk_triton.top_blocks_kernel``) ranks the scores.

The score buffer (``[B, G, chunk, num_blocks]`` float32) is bounded by ``SCORE_BYTES``,
so 1M-token inputs never hold a ``[G, N, N / block]`` matrix at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection, num_blocks
from ..triton_runtime import dot_pad, dot_precision, next_pow2
from ..triton_tiles import load_rows
from .topk_triton import top_blocks_kernel

SCORE_BYTES = 4 << 30
# Measured on an H200 at 1M tokens (docs/kernels.md): 256 query rows per program (half the
# index-key traffic per FLOP of 128), 4 blocks per store, 8 warps, 3 stages.
QUERY_TILE = 256
BLOCKS_PER_STORE = 4
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _block_scores(
    iq_ptr, ik_ptr, score_ptr, N, q0, q1, scale,
    sqb, sqn, sqg, skb, skn, skg, ssb, ssg, ssn,
    BM: tl.constexpr, JB: tl.constexpr, BS: tl.constexpr, BS_PAD: tl.constexpr,
    DI: tl.constexpr, DI_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = t < q1
    iq = load_rows(iq_ptr, b, t, g, sqb, sqn, sqg, row_ok, DI, DI_PAD)
    offs_k = tl.arange(0, BS_PAD)
    cols = tl.arange(0, JB)
    last_blk = (tl.minimum(q0 + (tl.program_id(0) + 1) * BM, q1) - 1) // BS
    out_rows = score_ptr + b.to(tl.int64) * ssb + g.to(tl.int64) * ssg + (t - q0).to(tl.int64)[:, None] * ssn
    # Scores of JB consecutive blocks are gathered into a [BM, JB] tile and stored together,
    # so each row's store is contiguous instead of one scattered column per block.
    tile = tl.full([BM, JB], float("-inf"), tl.float32)
    for j in range(0, last_blk + 1):
        key = j * BS + offs_k
        key_ok = (offs_k < BS) & (key < N)
        ik = load_rows(ik_ptr, b, key, g, skb, skn, skg, key_ok, DI, DI_PAD)
        sc = tl.dot(iq, tl.trans(ik), input_precision=PRECISION) * scale
        sc = tl.where(key_ok[None, :] & (key[None, :] <= t[:, None]), sc, float("-inf"))
        tile = tl.where(cols[None, :] == j % JB, tl.max(sc, 1)[:, None], tile)
        if (j % JB == JB - 1) | (j == last_blk):
            blk = j - j % JB + cols
            tl.store(out_rows + blk[None, :], tile,
                     mask=row_ok[:, None] & (blk[None, :] <= j) & (blk[None, :] * BS <= t[:, None]))


def msa_select_triton(index_q: torch.Tensor, index_k: torch.Tensor, block_size: int,
                      top_k: int) -> BlockSelection:
    """The MSA selection of ``select_msa`` computed by the Triton kernels (valid inputs)."""
    B, N, G, Di = index_q.shape
    nb = num_blocks(N, block_size)
    iq, ik = index_q.contiguous(), index_k.contiguous()
    skg = 0 if ik.shape[2] == 1 else ik.stride(2)  # one shared index key head: stride 0
    sel = torch.empty(B, G, N, top_k, device=iq.device, dtype=torch.int32)
    # float32 tiles take twice the shared memory: 128 rows, no pipelining (256 rows with 3
    # stages asks for 263 KB on an H200, which has 227 KB).
    rows, stages = (QUERY_TILE, NUM_STAGES) if iq.element_size() <= 2 else (128, 1)
    C = max(rows, min(N, SCORE_BYTES // (B * G * nb * 4)) // rows * rows)
    scores = torch.empty(B, G, min(C, N), nb, device=iq.device, dtype=torch.float32)
    for q0 in range(0, N, C):
        q1 = min(N, q0 + C)
        _block_scores[(triton.cdiv(q1 - q0, rows), G, B)](
            iq, ik, scores, N, q0, q1, Di ** -0.5,
            iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(1), skg,
            scores.stride(0), scores.stride(1), scores.stride(2),
            BM=rows, JB=BLOCKS_PER_STORE, BS=block_size, BS_PAD=dot_pad(block_size),
            DI=Di, DI_PAD=dot_pad(Di), PRECISION=dot_precision(iq.dtype),
            num_warps=NUM_WARPS, num_stages=stages,
        )
        top_blocks_kernel[(q1 - q0, G, B)](
            scores, sel, q0,
            scores.stride(0), scores.stride(1), scores.stride(2),
            sel.stride(0), sel.stride(1), sel.stride(2),
            K=top_k, BS=block_size, NB_PAD=next_pow2(nb),
        )
    return BlockSelection._trusted(sel, block_size, "group")
