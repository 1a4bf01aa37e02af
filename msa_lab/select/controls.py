"""The controls every comparison needs: the oracle (the most true attention mass a selection
of the same size can keep), the sliding window (with optional sink blocks) and uniformly
random blocks."""

from __future__ import annotations

import torch

from ..reference import block_mass, query_chunk_size
from ..selection import PER_CHOICES, BlockSelection, num_blocks
from ..validation import (check_blocks, check_bool, check_choice, check_int, check_qkv, check_scale,
                          check_sink_blocks)
from .topk import query_rows, top_blocks


def select_oracle(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                  per: str = "group", scale: float | None = None,
                  force_local: bool = False) -> BlockSelection:
    """The selection that keeps the most true attention mass: per row, the ``top_k``
    blocks with the largest full-attention mass (summed over the group's heads for
    ``per="group"``). ``force_local=True`` gives the best selection under the same
    local-block rule as MoBA and MSA."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    check_choice(per, "per", PER_CHOICES)
    scale = check_scale(scale, D)
    check_bool(force_local, "force_local")
    parts = []
    for _, pos in query_rows(N, query_chunk_size(N, B, Hq), q.device):
        mass = block_mass(q, k, pos, block_size=block_size, scale=scale)
        if per == "group":
            mass = mass.unflatten(1, (Hkv, Hq // Hkv)).sum(2)
        parts.append(top_blocks(mass, pos, block_size, top_k, force_local))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, per)


def select_window(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                  per: str = "group", sink_blocks: int = 0) -> BlockSelection:
    """Sliding window of blocks with StreamingLLM's sinks: the own block, the blocks just
    before it and the first ``sink_blocks`` blocks, ``top_k`` in all.

    A row whose own block ``o`` is below ``top_k`` takes every block ``0..o`` (sinks and
    window meet); later rows take ``o, o-1, ..., o-(top_k-sink_blocks-1)`` then the sinks
    ``0..sink_blocks-1``, which lie strictly below the window. No id repeats, and a row keeps
    ``min(top_k, o + 1)`` ids. ``sink_blocks`` lies in ``[0, top_k - 1]`` (the own block always
    fits); ``0`` is the plain window (own block and the ``top_k - 1`` blocks before it)."""
    B, N, Hq, Hkv, _ = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    check_choice(per, "per", PER_CHOICES)
    sink_blocks = check_sink_blocks(sink_blocks, top_k)
    own = torch.arange(N, device=k.device).view(-1, 1) // block_size
    slot = torch.arange(top_k, device=k.device)
    ids = own - slot
    if sink_blocks:
        # Rows with more than top_k candidates: the last sink_blocks slots hold blocks 0, 1, ...
        window_slots = top_k - sink_blocks
        ids = torch.where((own >= top_k) & (slot >= window_slots), slot - window_slots, ids)
    ids = torch.where(ids >= 0, ids, torch.full_like(ids, -1)).to(torch.int32)
    Hs = Hkv if per == "group" else Hq
    return BlockSelection._trusted(ids.expand(B, Hs, N, top_k).contiguous(), block_size, per)


def select_random(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                  per: str = "group", seed: int = 0) -> BlockSelection:
    """The own block plus ``top_k - 1`` earlier blocks drawn uniformly (a floor for
    coverage comparisons). Reproducible from ``seed``."""
    B, N, Hq, Hkv, _ = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    check_choice(per, "per", PER_CHOICES)
    seed = check_int(seed, "seed")
    Hs = Hkv if per == "group" else Hq
    nb = num_blocks(N, block_size)
    gen = torch.Generator(device=k.device).manual_seed(seed)
    parts = []
    for _, pos in query_rows(N, query_chunk_size(nb, B, Hs), k.device):
        scores = torch.rand(B, Hs, pos.numel(), nb, generator=gen, device=k.device)
        parts.append(top_blocks(scores, pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, per)
