"""Selections built for benchmarks, not chosen from the inputs' scores: MSA's selection of
generated data with planted patterns ("structured": neighbouring queries' picks correlate as on
real data) and tile-coherent selections (the best case of union-tile kernels)."""

from __future__ import annotations

import torch

from ..data import structured_qkv
from ..selection import PER_CHOICES, BlockSelection, num_blocks
from ..validation import check_blocks, check_choice, check_int, check_qkv
from .msa import index_from_qk, select_msa
from .topk import select_top_blocks


def select_structured(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int, seed: int = 0,
                      backend: str = "reference") -> BlockSelection:
    """MSA's selection (per group) on data of ``q``'s and ``k``'s shapes generated with planted
    patterns (``msa_lab.data``, "mixed"), its index branch the generated Q/K; ``q`` and ``k``
    give only shapes, dtype and device."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    data = structured_qkv(batch=B, seq_len=N, num_heads=Hq, num_kv_heads=Hkv, head_dim=D,
                          seed=check_int(seed, "seed"), dtype=q.dtype, device=q.device)
    return select_msa(*index_from_qk(data.q, data.k), block_size=block_size, top_k=top_k, backend=backend)


def select_coherent(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int, per: str = "group",
                    seed: int = 0) -> BlockSelection:
    """Every query of one block-sized tile selects the same blocks (its own block and
    ``top_k - 1`` earlier ones drawn at random per tile): the best case of union-tile kernels
    such as FlexAttention's, whose 128-query tiles then attend to exactly ``top_k`` blocks."""
    B, N, Hq, Hkv, _ = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    check_choice(per, "per", PER_CHOICES)
    Hs = Hkv if per == "group" else Hq
    nb = num_blocks(N, block_size)
    gen = torch.Generator(device=q.device).manual_seed(check_int(seed, "seed"))
    scores = torch.rand(B, Hs, nb, nb, generator=gen, device=q.device)
    tile_start = torch.arange(nb, device=q.device) * block_size  # one row per tile decides for all
    per_tile = select_top_blocks(scores, tile_start, block_size=block_size, top_k=top_k)
    rows = torch.arange(N, device=q.device) // block_size
    return BlockSelection(per_tile[:, :, rows], block_size, per)
