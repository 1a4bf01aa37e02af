"""MSA's index branch (MiniMax 2026): per index head, each block pooled over its visible tokens'
index logits ``index_q[t, h] . index_k[j] * Di**-0.5`` (max by default; mean and logsumexp are
the paper's pooling ablations); the local block forced, optionally the first ``sink_blocks``
blocks too, then the best earlier blocks. The Triton twin is ``msa_triton.msa_select_triton``."""

from __future__ import annotations

import torch

from ..backends import SELECT
from ..reference import grouped_scores, query_chunk_size
from ..selection import PER_CHOICES, BlockSelection, num_blocks
from ..validation import (check_blocks, check_choice, check_index_inputs, check_positions,
                          check_positive_int, check_qkv, check_sink_blocks)
from .topk import query_rows, top_blocks

#: How a block's visible token logits become its score (docs/semantics.md, "MSA").
POOLINGS = ("max", "mean", "lse")


def msa_block_scores(index_q: torch.Tensor, index_k: torch.Tensor, positions: torch.Tensor,
                     block_size: int, *, pooling: str = "max") -> torch.Tensor:
    """MSA index-branch block scores ``[B, H, C, num_blocks]`` for the query rows at
    ``positions`` (``[C]``, in ``[0, N)``), ``H = index_q.shape[2]``: the ``pooling``
    (``"max"``, ``"mean"`` or ``"lse"``) of the block's visible index logits
    ``index_q[t, h] . index_k[j] * Di**-0.5``, ``j <= t`` (-inf where no token is visible; NaN
    logits count as -inf)."""
    _, N, _, _ = check_index_inputs(index_q, index_k)
    block_size = check_positive_int(block_size, "block_size")
    pooling = check_choice(pooling, "pooling", POOLINGS)
    positions = check_positions(positions, "positions", N)
    if positions.device != index_q.device:
        raise ValueError(f"positions is on {positions.device} but index_q is on {index_q.device}")
    return pooled_scores(index_q, index_k, positions, block_size, pooling)


def pooled_scores(index_q: torch.Tensor, index_k: torch.Tensor, positions: torch.Tensor,
                  block_size: int, pooling: str = "max") -> torch.Tensor:
    """``msa_block_scores`` on inputs already checked."""
    B, N, G, Di = index_q.shape
    L = int(positions.max()) + 1
    s = grouped_scores(index_q[:, positions], index_k[:, :L], Di ** -0.5).flatten(1, 2)
    causal = torch.arange(L, device=s.device) <= positions.view(-1, 1)
    nb_L = num_blocks(L, block_size)
    pad = nb_L * block_size - L
    if pooling == "max":
        # A NaN logit (overflowing inputs) counts as -inf, as in the Triton kernels' max.
        visible = causal & ~torch.isnan(s)
        s = torch.where(visible, s, torch.full_like(s, float("-inf")))
        s = torch.nn.functional.pad(s, (0, pad), value=float("-inf"))
        pooled = s.unflatten(-1, (nb_L, block_size)).amax(-1)
    elif pooling == "mean":
        # Over the visible tokens only: a partly visible block is the mean of what the query
        # sees of it. A NaN logit counts as -inf, so the block's mean is -inf (+inf beside it: NaN,
        # which the top-k rule ranks last).
        s = torch.where(causal, s.masked_fill(torch.isnan(s), float("-inf")), torch.zeros_like(s))
        sums = torch.nn.functional.pad(s, (0, pad)).unflatten(-1, (nb_L, block_size)).sum(-1)
        first = torch.arange(nb_L, device=s.device) * block_size
        seen = (positions.view(-1, 1) - first + 1).clamp(0, block_size)  # [C, nb_L] visible tokens
        pooled = torch.where(seen > 0, sums / seen, torch.full_like(sums, float("-inf")))
    else:  # "lse": ln sum_j exp(s_j) over the visible tokens; exp(-inf) = 0, so NaN (-inf) adds nothing
        s = torch.where(causal & ~torch.isnan(s), s, torch.full_like(s, float("-inf")))
        s = torch.nn.functional.pad(s, (0, pad), value=float("-inf"))
        pooled = torch.logsumexp(s.unflatten(-1, (nb_L, block_size)), -1)
    return torch.nn.functional.pad(pooled, (0, num_blocks(N, block_size) - nb_L),
                                   value=float("-inf"))


def force_sinks(scores: torch.Tensor, sink_blocks: int) -> torch.Tensor:
    """``scores`` with blocks ``0 .. sink_blocks - 1`` set to +inf: the shared top-k rule then
    picks them right after the own block, in id order (ties go to the lower id, and no other
    block, not even one scoring +inf, has a lower id)."""
    if sink_blocks:
        scores[..., :sink_blocks] = float("inf")
    return scores


def check_msa_options(pooling, per, sink_blocks, top_k: int) -> tuple[str, str, int]:
    """``(pooling, per, sink_blocks)`` of ``select_msa``, checked against ``top_k``."""
    pooling = check_choice(pooling, "pooling", POOLINGS)
    per = check_choice(per, "per", PER_CHOICES)
    return pooling, per, check_sink_blocks(sink_blocks, top_k)


def select_msa(index_q: torch.Tensor, index_k: torch.Tensor, *, block_size: int = 128,
               top_k: int = 16, backend: str = "reference", pooling: str = "max", per: str = "group",
               sink_blocks: int = 0) -> BlockSelection:
    """MSA index branch: pooled causal index logits per block, the local block forced, the
    ``top_k - 1`` best earlier blocks (ties to the lower id); one selection per index head.
    ``index_q [B, N, H, Di]``, ``index_k [B, N, 1 or H, Di]``.

    ``pooling``: ``"max"`` (MSA), ``"mean"`` or ``"lse"`` (logsumexp) of the block's visible
    logits. ``per="group"`` (MSA: ``H`` is the number of KV groups) or ``"head"`` (one index
    head per query head, ``H = Hq``): the label of the rows; the rule is the same.
    ``sink_blocks=s`` forces blocks ``0 .. s-1`` too (slots after the own block, counted in
    ``top_k``, so ``s <= top_k - 1``). docs/semantics.md gives the exact rules.

    ``backend="triton"`` runs the Triton index kernels (same rule; with bf16/fp16 inputs
    the logits are tensor-core products, so near-ties can resolve differently from the
    float32 reference); ``"auto"`` picks them on CUDA."""
    B, N, G, _ = check_index_inputs(index_q, index_k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    pooling, per, sink_blocks = check_msa_options(pooling, per, sink_blocks, top_k)
    if SELECT.resolve(backend, index_q) == "triton":
        from .msa_triton import msa_select_triton

        return msa_select_triton(index_q, index_k, block_size, top_k, pooling, per, sink_blocks)
    parts = []
    for _, pos in query_rows(N, query_chunk_size(N, B, G), index_q.device):
        scores = force_sinks(pooled_scores(index_q, index_k, pos, block_size, pooling), sink_blocks)
        parts.append(top_blocks(scores, pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, per)


def index_from_qk(q: torch.Tensor, k: torch.Tensor, per: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """An untrained stand-in for MSA's index branch: the group's mean query as the index query
    and the group's key as the index key (``[B, N, G, D]`` each); with ``per="head"`` (one index
    head per query head) each query head's own query and its group's key (``[B, N, Hq, D]``)."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    if check_choice(per, "per", PER_CHOICES) == "head":
        return q, k.repeat_interleave(Hq // Hkv, dim=2)
    return q.view(B, N, Hkv, Hq // Hkv, D).mean(3), k
