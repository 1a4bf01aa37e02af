"""Quest (Tang et al. 2024): per block and KV head the element-wise min ``m`` and max ``M`` of
its keys; block score for query head ``h``: ``sum_i max(q_i * m_i, q_i * M_i)`` in fp32, an upper
bound of ``q . k`` over the block's keys; the own block forced and counted in ``top_k``; one
selection per query head. The Triton twin is ``quest_triton.quest_select_triton``."""

from __future__ import annotations

import torch

from ..backends import SELECT
from ..reference import compute_dtype, query_chunk_size
from ..selection import BlockSelection
from ..validation import check_blocks, check_qkv
from .pooling import block_key_bounds
from .topk import query_rows, top_blocks


def quest_bound_scores(q: torch.Tensor, key_min: torch.Tensor, key_max: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
    """Quest's block scores ``[B, Hq, C, num_blocks]`` for the query rows at ``positions``
    (inputs already checked; bounds from ``block_key_bounds``). A row whose query, or a block
    whose bounds, hold a NaN or inf scores NaN (ranks last), as in the Triton twin."""
    B, _, Hq, D = q.shape
    Hkv = key_min.shape[2]
    dt = compute_dtype(q)
    qg = q[:, positions].to(dt).view(B, -1, Hkv, Hq // Hkv, 1, D)  # [B, C, Hkv, G, 1, D]
    lo, hi = (x.to(dt).transpose(1, 2)[:, None, :, None] for x in (key_min, key_max))  # [B, 1, Hkv, 1, nb, D]
    scores = torch.maximum(qg * lo, qg * hi).sum(-1)  # [B, C, Hkv, G, nb]
    finite_rows = torch.isfinite(qg).all(-1)  # [B, C, Hkv, G, 1]
    finite_blocks = (torch.isfinite(lo) & torch.isfinite(hi)).all(-1)  # [B, 1, Hkv, 1, nb]
    scores = torch.where(finite_rows & finite_blocks, scores, float("nan"))
    return scores.flatten(2, 3).permute(0, 2, 1, 3)


def select_quest(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                 backend: str = "reference") -> BlockSelection:
    """Quest: per query head, the blocks with the highest bound
    ``sum_i max(q[t, h, i] * min_i, q[t, h, i] * max_i)`` over the element-wise min and max of
    each block's keys (``block_key_bounds``, group ``h``'s KV head), in fp32; the own block is
    forced and counts toward ``top_k``; ties to the lower id; one selection per query head.

    ``backend="triton"`` runs the Triton bound and top-k kernels (same rule; the bound is
    accumulated in fp32 in another order, as two products ``max(q, 0) . max + min(q, 0) . min``,
    so near-ties can resolve differently); ``"auto"`` picks them on CUDA."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    if SELECT.resolve(backend, q) == "triton":
        from .quest_triton import quest_select_triton

        return quest_select_triton(q, k, block_size, top_k)
    key_min, key_max = block_key_bounds(k, block_size)
    nb = key_min.shape[1]
    parts = []
    # The element-wise bound holds [rows, blocks, D] products: chunk the rows by all three.
    for _, pos in query_rows(N, query_chunk_size(nb * D, B, Hq), q.device):
        parts.append(top_blocks(quest_bound_scores(q, key_min, key_max, pos), pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, "head")
