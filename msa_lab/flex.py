"""Block-sparse attention through PyTorch FlexAttention: an independent formulation of
the reference, and the FlexAttention baseline of the benchmarks.

The BlockMask is built straight from the selection, never from an ``N x N`` mask: on
128 x 128 tiles, a KV tile is listed for a query tile when any query of the tile selected
a block that overlaps it, and listed as *full* (no mask_mod call) when every query of the
tile selected it and it lies wholly before the tile. ``mask_mod`` then applies the exact
per-token rule. On CUDA the kernel is compiled; on the CPU FlexAttention runs eagerly and
builds the full score matrix, which suits only small test sizes.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention import flex_attention as _flex

from .selection import BlockSelection

TILE = 128  # FlexAttention's default BlockMask tile


@functools.cache
def _compiled_flex():
    # Each new (shape, dtype, block size) compiles once. Dynamo's default limit of 8
    # recompilations would, once hit, silently run the unfused eager version instead.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
    return torch.compile(_flex.flex_attention, dynamic=False)


def run_flex(q, k, v, block_mask, scale):
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if hasattr(_flex, "AuxRequest"):
        kwargs["return_aux"] = _flex.AuxRequest(lse=True)
    else:  # torch < 2.9
        kwargs["return_lse"] = True
    if q.is_cuda:
        out, aux = _compiled_flex()(q, k, v, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "called without torch.compile": known, intended
            out, aux = _flex.flex_attention(q, k, v, **kwargs)
    return out, (aux.lse if hasattr(aux, "lse") else aux)


def _tile_lists(tiles: torch.Tensor):
    """``bool [B, H, nqt, nkt]`` -> (count int32 [B, H, nqt], tile ids int32 [B, H, nqt, nkt])."""
    order = torch.sort(tiles.to(torch.uint8), dim=-1, descending=True, stable=True).indices
    return tiles.sum(-1, dtype=torch.int32), order.to(torch.int32)


def selection_block_mask(selection: BlockSelection, num_q_heads: int) -> "_flex.BlockMask":
    """The FlexAttention BlockMask of a selection, for ``num_q_heads`` query heads."""
    ids = selection.indices.long()
    B, Hs, N, K = ids.shape
    bs = selection.block_size
    nt = -(-N // TILE)
    nb = selection.num_blocks
    device = ids.device
    valid = ids >= 0
    row = torch.arange(B * Hs, device=device).view(B, Hs, 1, 1)
    q_tile = (torch.arange(N, device=device) // TILE).view(1, 1, N, 1)
    first = ids * bs // TILE
    last = (torch.clamp((ids + 1) * bs, max=N) - 1) // TILE
    listed = torch.zeros(B * Hs * nt * nt, dtype=torch.bool, device=device)
    for step in range(-(-bs // TILE) + 1):  # a block overlaps at most this many tiles
        tile = first + step
        keep = valid & (tile <= last) & (tile <= q_tile)  # tiles after the query are future
        listed[((row * nt + q_tile) * nt + tile)[keep]] = True
    listed = listed.view(B, Hs, nt, nt)

    full = torch.zeros_like(listed)
    if bs % TILE == 0:
        chosen = torch.bincount(((row * nt + q_tile) * nb + ids)[valid], minlength=B * Hs * nt * nb)
        chosen = chosen.view(B, Hs, nt, nb)
        tile_ids = torch.arange(nt, device=device)
        queries = torch.clamp(N - tile_ids * TILE, max=TILE)
        everyone = chosen[..., tile_ids * TILE // bs] == queries.view(1, 1, nt, 1)
        full = everyone & (tile_ids.view(1, -1) < tile_ids.view(-1, 1))
    partial = listed & ~full
    if selection.per == "group":
        G = num_q_heads // Hs
        partial, full = partial.repeat_interleave(G, 1), full.repeat_interleave(G, 1)

    dense = selection.dense_mask(max_elements=1 << 33)
    G = num_q_heads // Hs if selection.per == "group" else 1

    def mask_mod(b, h, qi, ki):
        return (ki <= qi) & dense[b, h // G, qi, ki // bs]

    return _flex.BlockMask.from_kv_blocks(*_tile_lists(partial), *_tile_lists(full),
                                          BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(N, N))


def block_sparse_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      selection: BlockSelection, scale: float):
    """``(out [B, N, Hq, D], lse [B, Hq, N] float32)`` for a valid selection."""
    block_mask = selection_block_mask(selection, q.shape[2])
    out, lse = run_flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         block_mask, scale)
    return out.transpose(1, 2), lse.float()
