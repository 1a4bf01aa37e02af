"""MSA's index branch (MiniMax 2026): per KV group, the max over each block's visible tokens of
the index logits ``index_q[t, g] . index_k[j] * Di**-0.5``; the local block forced, the
``top_k - 1`` best earlier blocks. The Triton twin is ``msa_triton.msa_select_triton``."""

from __future__ import annotations

import torch

from ..backends import SELECT
from ..reference import grouped_scores, query_chunk_size
from ..selection import BlockSelection, num_blocks
from ..validation import check_blocks, check_index_inputs, check_positions, check_positive_int, check_qkv
from .topk import query_rows, top_blocks


def msa_block_scores(index_q: torch.Tensor, index_k: torch.Tensor, positions: torch.Tensor,
                     block_size: int) -> torch.Tensor:
    """MSA index-branch block scores ``[B, G, C, num_blocks]`` for the query rows at
    ``positions`` (``[C]``, in ``[0, N)``): the max over each block's visible tokens of
    ``index_q[t, g] . index_k[j] * Di**-0.5`` (-inf where no token is visible; NaN logits
    count as -inf)."""
    _, N, _, _ = check_index_inputs(index_q, index_k)
    block_size = check_positive_int(block_size, "block_size")
    positions = check_positions(positions, "positions", N)
    if positions.device != index_q.device:
        raise ValueError(f"positions is on {positions.device} but index_q is on {index_q.device}")
    return max_pooled_scores(index_q, index_k, positions, block_size)


def max_pooled_scores(index_q: torch.Tensor, index_k: torch.Tensor, positions: torch.Tensor,
                      block_size: int) -> torch.Tensor:
    """``msa_block_scores`` on inputs already checked."""
    B, N, G, Di = index_q.shape
    L = int(positions.max()) + 1
    s = grouped_scores(index_q[:, positions], index_k[:, :L], Di ** -0.5).flatten(1, 2)
    # A NaN logit (overflowing inputs) counts as -inf, as in the Triton kernels' max.
    visible = (torch.arange(L, device=s.device) <= positions.view(-1, 1)) & ~torch.isnan(s)
    s = torch.where(visible, s, torch.full_like(s, float("-inf")))
    nb_L = num_blocks(L, block_size)
    s = torch.nn.functional.pad(s, (0, nb_L * block_size - L), value=float("-inf"))
    pooled = s.unflatten(-1, (nb_L, block_size)).amax(-1)
    return torch.nn.functional.pad(pooled, (0, num_blocks(N, block_size) - nb_L),
                                   value=float("-inf"))


def select_msa(index_q: torch.Tensor, index_k: torch.Tensor, *, block_size: int = 128,
               top_k: int = 16, backend: str = "reference") -> BlockSelection:
    """MSA index branch: max-pooled causal index logits per block, the local block
    forced, the ``top_k - 1`` best earlier blocks (ties to the lower id); one selection
    per KV group. ``index_q [B, N, G, Di]``, ``index_k [B, N, 1 or G, Di]``.

    ``backend="triton"`` runs the Triton index kernels (same rule; with bf16/fp16 inputs
    the logits are tensor-core products, so near-ties can resolve differently from the
    float32 reference); ``"auto"`` picks them on CUDA."""
    B, N, G, _ = check_index_inputs(index_q, index_k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    if SELECT.resolve(backend, index_q) == "triton":
        from .msa_triton import msa_select_triton

        return msa_select_triton(index_q, index_k, block_size, top_k)
    parts = []
    for _, pos in query_rows(N, query_chunk_size(N, B, G), index_q.device):
        scores = max_pooled_scores(index_q, index_k, pos, block_size)
        parts.append(top_blocks(scores, pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, "group")


def index_from_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An untrained stand-in for MSA's index branch: the group's mean query as the
    index query and the group's key as the index key (``[B, N, G, D]`` each)."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    return q.view(B, N, Hkv, Hq // Hkv, D).mean(3), k
