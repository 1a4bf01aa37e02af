"""MoBA (Lu et al. 2025): per query head, the fp32 gate ``q[t, h] . mean(k[block, group(h)])``
over the blocks before the query's own; the own block forced and counted in ``top_k``. The
Triton twin is ``moba_triton.moba_select_triton``."""

from __future__ import annotations

import torch

from ..backends import SELECT
from ..reference import grouped_scores, query_chunk_size
from ..selection import BlockSelection
from ..validation import check_blocks, check_positions, check_qkv, check_tensor
from .pooling import block_mean_keys
from .topk import query_rows, top_blocks


def moba_gate(q: torch.Tensor, mean_keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """MoBA's gate ``[B, Hq, C, num_blocks]`` for the query rows at ``positions``:
    ``q[t, h] . mean_keys[block, group(h)]`` in fp32 (``mean_keys`` from ``block_mean_keys``)."""
    check_tensor(q, "q", 4, "[batch, seq, heads, dim]")
    check_tensor(mean_keys, "mean_keys", 4, "[batch, num_blocks, kv_heads, dim]")
    B, N, Hq, D = q.shape
    if mean_keys.shape[0] != B or mean_keys.shape[3] != D or mean_keys.shape[2] == 0 or Hq % mean_keys.shape[2]:
        raise ValueError(f"mean_keys must be [batch={B}, num_blocks, kv_heads dividing {Hq}, dim={D}] for q "
                         f"{tuple(q.shape)}, got {tuple(mean_keys.shape)}")
    positions = check_positions(positions, "positions", N)
    return gate_scores(q, mean_keys, positions)


def gate_scores(q: torch.Tensor, mean_keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``moba_gate`` on inputs already checked (``select_moba``'s loop over query chunks)."""
    return grouped_scores(q[:, positions], mean_keys, 1.0).flatten(1, 2)


def select_moba(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                backend: str = "reference") -> BlockSelection:
    """MoBA gating: per query head, ``q[t, h] . mean(k[block, group(h)])`` in fp32; the
    own block is forced and counts toward ``top_k``; one selection per query head.

    ``backend="triton"`` runs the Triton gate and top-k kernels (same rule; with bf16/fp16
    inputs the fp32 gate is accumulated in another order, so near-ties can resolve
    differently); ``"auto"`` picks them on CUDA."""
    B, N, Hq, Hkv, _ = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    if SELECT.resolve(backend, q) == "triton":
        from .moba_triton import moba_select_triton

        return moba_select_triton(q, k, block_size, top_k)
    kmean = block_mean_keys(k, block_size)
    nb = kmean.shape[1]
    parts = []
    for _, pos in query_rows(N, query_chunk_size(nb, B, Hq), q.device):
        parts.append(top_blocks(gate_scores(q, kmean, pos), pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, "head")
