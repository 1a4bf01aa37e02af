"""MSA index branch in Triton: pooled block scores, then an exp-free top-k.

``_block_scores``: a program per (256-query tile, index head, batch) loops over the key blocks
up to its last query's block, and over each block in key sub-tiles of at most the
``max_tile_keys`` kernel setting's tokens; for each it computes the causal index logits
``index_q . index_k * Di**-0.5`` on the tensor cores and folds them into the block's pool per query: max (MSA: no softmax, no
exponentials), mean over the visible tokens, or a running logsumexp. Forced sink blocks are
stored as +inf. Scores go to a buffer for one query chunk.

Then the shared top-k kernel (``topk_triton.top_blocks_kernel``) ranks the scores.

The score buffer (``[B, G, chunk, num_blocks]`` float32) is bounded by ``score_bytes``,
so 1M-token inputs never hold a ``[G, N, N / block]`` matrix at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection, num_blocks
from ..triton_runtime import dot_pad, dot_precision, kernel_settings
from ..triton_tiles import load_rows
from .topk_triton import select_in_chunks


@triton.jit
def _block_scores(
    iq_ptr, ik_ptr, score_ptr, N, q0, q1, scale,
    sqb, sqn, sqg, skb, skn, skg, ssb, ssg, ssn,
    BM: tl.constexpr, JB: tl.constexpr, BS: tl.constexpr, SUB: tl.constexpr, NSUB: tl.constexpr,
    DI: tl.constexpr, DI_PAD: tl.constexpr, PRECISION: tl.constexpr,
    POOLING: tl.constexpr, SINKS: tl.constexpr,
):
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = t < q1
    iq = load_rows(iq_ptr, b, t, g, sqb, sqn, sqg, row_ok, DI, DI_PAD)
    offs_k = tl.arange(0, SUB)
    cols = tl.arange(0, JB)
    last_blk = (tl.minimum(q0 + (tl.program_id(0) + 1) * BM, q1) - 1) // BS
    out_rows = score_ptr + b.to(tl.int64) * ssb + g.to(tl.int64) * ssg + (t - q0).to(tl.int64)[:, None] * ssn
    # Scores of JB consecutive blocks are gathered into a [BM, JB] tile and stored together,
    # so each row's store is contiguous instead of one scattered column per block.
    tile = tl.full([BM, JB], float("-inf"), tl.float32)
    # One loop over key sub-tiles of SUB <= 128 tokens, NSUB per block (1 up to block 128), so
    # shared memory and registers do not grow with the block size (a loop nested in the block
    # loop spilled registers at block 4096). The pool restarts at a block's first sub-tile and
    # runs across its sub-tiles: max; sum (mean = sum / visible count); running max and sum of
    # exponentials (lse). With NSUB = 1 every sub-tile test below is a constant.
    acc = tl.full([BM], float("-inf"), tl.float32)
    expsum = tl.zeros([BM], tl.float32)
    for i in range(0, (last_blk + 1) * NSUB):
        j = i // NSUB
        k0 = (i % NSUB) * SUB
        fresh = k0 == 0
        key = j * BS + k0 + offs_k
        key_ok = (k0 + offs_k < BS) & (key < N)
        ik = load_rows(ik_ptr, b, key, g, skb, skn, skg, key_ok, DI, DI_PAD)
        sc = tl.dot(iq, tl.trans(ik), input_precision=PRECISION) * scale
        visible = key_ok[None, :] & (key[None, :] <= t[:, None])
        if POOLING == "max":  # tl.max skips NaN: a NaN logit counts as -inf
            part = tl.max(tl.where(visible, sc, float("-inf")), 1)
            acc = tl.where(fresh, part, tl.maximum(acc, part))
            score = acc
        elif POOLING == "mean":
            sc = tl.where(sc == sc, sc, float("-inf"))  # NaN counts as -inf
            part = tl.sum(tl.where(visible, sc, 0.0), 1)
            acc = tl.where(fresh, part, acc + part)
            # Stored rows see at least the block's first token (blk * BS <= t below).
            score = acc / tl.minimum(t - j * BS + 1, BS).to(tl.float32)
        else:
            sc = tl.where(visible & (sc == sc), sc, float("-inf"))
            seen = tl.where(fresh, float("-inf"), acc)
            top = tl.maximum(seen, tl.max(sc, 1))
            # Nothing seen yet (top -inf): shift by 0 so that exp(-inf - 0) = 0, not NaN.
            shift = tl.where(top == float("-inf"), 0.0, top)
            expsum = tl.where(fresh, 0.0, expsum) * tl.exp(seen - shift) + tl.sum(tl.exp(sc - shift[:, None]), 1)
            acc = top
            score = tl.where(acc < float("inf"), acc + tl.log(expsum), acc)  # ln(0) = -inf: empty stays -inf
        done = k0 + SUB >= BS  # the block's last sub-tile: its score is final
        tile = tl.where((cols[None, :] == j % JB) & done, score[:, None], tile)
        if done & ((j % JB == JB - 1) | (j == last_blk)):
            blk = j - j % JB + cols
            if SINKS > 0:  # forced like the local block: +inf wins every tie by its lower id
                tile = tl.where(blk[None, :] < SINKS, float("inf"), tile)
            tl.store(out_rows + blk[None, :], tile,
                     mask=row_ok[:, None] & (blk[None, :] <= j) & (blk[None, :] * BS <= t[:, None]))


def query_tile(dtype: torch.dtype) -> tuple[int, int]:
    """``(query rows per program, pipeline stages)`` of ``_block_scores`` for inputs of ``dtype``.
    float32 tiles take twice the shared memory: 128 rows, no pipelining (256 rows with 3
    stages asks for 263 KB on an H200, which has 227 KB)."""
    settings = kernel_settings()
    return (settings.index_query_tile, settings.index_num_stages) if dtype.itemsize <= 2 else (128, 1)


def launch_block_scores(iq: torch.Tensor, ik: torch.Tensor, scores: torch.Tensor, q0: int, q1: int,
                        block_size: int, pooling: str = "max", sink_blocks: int = 0) -> None:
    """Fill ``scores[:, :, :q1 - q0]`` (``[B, H, chunk, num_blocks]`` float32) with the pooled block
    scores of query rows ``q0 .. q1 - 1`` (blocks after a row's own block are left unwritten;
    sink blocks read +inf). ``iq``, ``ik`` contiguous, valid inputs."""
    B, N, H, Di = iq.shape
    skg = 0 if ik.shape[2] == 1 else ik.stride(2)  # one shared index key head: stride 0
    rows, stages = query_tile(iq.dtype)
    settings = kernel_settings()
    # Keys per sub-tile: the tile block 128 always used, so larger blocks take block 128's shared
    # memory (98,304 B at Di 128 in bf16/fp16, 131,072 B in fp32; the H200 has 232,448).
    sub = min(dot_pad(block_size), settings.max_tile_keys)
    _block_scores[(triton.cdiv(q1 - q0, rows), H, B)](
        iq, ik, scores, N, q0, q1, Di ** -0.5,
        iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(1), skg,
        scores.stride(0), scores.stride(1), scores.stride(2),
        BM=rows, JB=settings.index_blocks_per_store, BS=block_size, SUB=sub, NSUB=triton.cdiv(block_size, sub),
        DI=Di, DI_PAD=dot_pad(Di), PRECISION=dot_precision(iq.dtype), POOLING=pooling, SINKS=sink_blocks,
        num_warps=settings.index_num_warps, num_stages=stages,
    )


def msa_select_triton(index_q: torch.Tensor, index_k: torch.Tensor, block_size: int, top_k: int,
                      pooling: str = "max", per: str = "group", sink_blocks: int = 0) -> BlockSelection:
    """The MSA selection of ``select_msa`` computed by the Triton kernels (valid inputs)."""
    B, N, G, Di = index_q.shape
    nb = num_blocks(N, block_size)
    iq, ik = index_q.contiguous(), index_k.contiguous()
    rows, _ = query_tile(iq.dtype)
    sel = select_in_chunks(B, G, N, nb, rows, block_size, top_k, iq.device,
                           lambda scores, q0, q1: launch_block_scores(iq, ik, scores, q0, q1, block_size, pooling,
                                                                      sink_blocks))
    return BlockSelection._trusted(sel, block_size, per)
