"""DSA's lightning indexer and token top-k (DeepSeek-V3.2-Exp): token scores
``I[t, s] = sum_j w[t, j] * ReLU(index_q[t, j] . index_k[s])`` over ``s <= t`` (no scale: a layer
folds its scales into ``w``), then the ``top_k`` best tokens per query, ties to the lower position,
no forced token, shared by every query head. The Triton twin is ``dsa_triton.dsa_select_triton``.

Two exact-tie traps (docs/semantics.md, "DSA"): ReLU makes every key a query's index heads all
point away from score exactly 0 (ties the rule breaks by position), and a negative weight times
ReLU's 0 is ``-0.0``, which a sort on bit patterns (CUDA's radix sort) ranks below ``+0.0``; the
scores are canonicalised (``+ 0.0`` turns ``-0.0`` into ``+0.0``) before any ranking.
"""

from __future__ import annotations

import torch

from ..backends import SELECT
from ..reference import compute_dtype, query_chunk_size
from ..selection import TokenSelection
from ..validation import check_positions, check_same_device_dtype, check_tensor, check_token_top_k
from .topk import query_rows


def check_dsa_index(index_q, index_k, index_weights) -> tuple[int, int, int, int]:
    """``(B, N, H_I, Di)`` of DSA's indexer inputs ``index_q [B, N, H_I, Di]``, ``index_k [B, N, 1, Di]``
    (one index key shared by the index heads) and ``index_weights [B, N, H_I]``."""
    check_tensor(index_q, "index_q", 4, "[batch, seq, index_heads, index_dim]")
    check_tensor(index_k, "index_k", 4, "[batch, seq, 1, index_dim]")
    check_tensor(index_weights, "index_weights", 3, "[batch, seq, index_heads]")
    check_same_device_dtype({"index_q": index_q, "index_k": index_k, "index_weights": index_weights})
    B, N, H, Di = index_q.shape
    if tuple(index_k.shape) != (B, N, 1, Di):
        raise ValueError(f"index_k must be [batch={B}, seq={N}, 1, index_dim={Di}] (one index key shared by "
                         f"the index heads), got {tuple(index_k.shape)}")
    if tuple(index_weights.shape) != (B, N, H):
        raise ValueError(f"index_weights must be [batch={B}, seq={N}, index_heads={H}], got "
                         f"{tuple(index_weights.shape)}")
    if 0 in index_q.shape:
        raise ValueError(f"index_q must not be empty, got {tuple(index_q.shape)}")
    return B, N, H, Di


def dsa_token_scores(index_q: torch.Tensor, index_k: torch.Tensor, index_weights: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
    """The indexer's scores ``I [B, C, L]`` of the query rows at ``positions [C]`` against keys
    ``0..L-1`` (``L`` = the last position + 1), in float32 (float64 for float64 inputs); ``-inf``
    after each row's own position, ``-0.0`` canonicalised to ``+0.0``. NaN stays NaN (the top-k
    ranks it last)."""
    check_dsa_index(index_q, index_k, index_weights)
    positions = check_positions(positions, "positions", index_q.shape[1])
    if positions.device != index_q.device:
        raise ValueError(f"positions is on {positions.device} but index_q is on {index_q.device}")
    return token_scores(index_q, index_k, index_weights, positions)


def token_scores(index_q, index_k, index_weights, positions) -> torch.Tensor:
    """``dsa_token_scores`` on inputs already checked."""
    dt = compute_dtype(index_q)
    L = int(positions.max()) + 1
    logits = torch.einsum("bchd,bld->bhcl", index_q[:, positions].to(dt), index_k[:, :L, 0].to(dt))
    scores = torch.einsum("bhcl,bch->bcl", logits.relu(), index_weights[:, positions].to(dt)) + 0.0
    future = torch.arange(L, device=scores.device) > positions.view(-1, 1)
    return scores.masked_fill(future, float("-inf"))


def top_tokens(scores: torch.Tensor, positions: torch.Tensor, top_k: int) -> torch.Tensor:
    """``int32 [..., C, top_k]`` token positions from scores ``[..., C, L]`` of rows at
    ``positions``: the ``top_k`` best visible tokens, ties to the lower position, NaN last; a row
    keeps ``min(top_k, position + 1)`` and pads the rest with ``-1``."""
    L = scores.shape[-1]
    visible = torch.arange(L, device=scores.device) <= positions.view(-1, 1)
    key = torch.where(visible & ~torch.isnan(scores), scores, torch.full_like(scores, float("-inf")))
    # A stable descending sort keeps equal scores in position order: ties go to the lower
    # position; future keys (all after every visible one) rank after the visible -inf ones.
    ids = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :min(top_k, L)]
    if L < top_k:
        ids = torch.nn.functional.pad(ids, (0, top_k - L), value=-1)
    keep = torch.arange(top_k, device=scores.device) < (positions.view(-1, 1) + 1)
    return torch.where(keep, ids, torch.full_like(ids, -1)).to(torch.int32)


def select_dsa(index_q: torch.Tensor, index_k: torch.Tensor, index_weights: torch.Tensor, *, top_k: int = 2048,
               backend: str = "reference") -> TokenSelection:
    """DSA's selection: per query, the ``top_k`` tokens with the highest lightning-indexer score
    ``I[t, s] = sum_j index_weights[t, j] * ReLU(index_q[t, j] . index_k[s])``, ``s <= t`` (ties to
    the lower position, no forced token; a row with ``<= top_k`` visible tokens takes them all),
    one row shared by every query head. ``index_q [B, N, H_I, Di]``, ``index_k [B, N, 1, Di]``,
    ``index_weights [B, N, H_I]``. ``backend``: ``"reference"`` (chunked PyTorch, never ``N x N``
    at once), ``"triton"`` (the streaming kernel) or ``"auto"``."""
    B, N, H, _ = check_dsa_index(index_q, index_k, index_weights)
    top_k = check_token_top_k(top_k, N)
    backend = SELECT.resolve(backend, index_q)
    if backend == "triton":
        from .dsa_triton import dsa_select_triton

        return dsa_select_triton(index_q, index_k, index_weights, top_k)
    chunk = query_chunk_size(N, B, H)
    parts = [top_tokens(token_scores(index_q, index_k, index_weights, pos), pos, top_k)
             for _, pos in query_rows(N, chunk, index_q.device)]
    return TokenSelection._trusted(torch.cat(parts, 1).unsqueeze(1))


def dsa_index_from_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An untrained stand-in for DSA's indexer inputs, in its form: the main query heads as index
    heads (``H_I = Hq``, ``Di = D``), the mean of the KV heads' keys as the one index key, and weights
    ``(Hq * D) ** -0.5``. With one KV head (MQA) it scores ``sum_h ReLU(q_h . k)``."""
    B, N, Hq, D = q.shape
    weights = torch.full((B, N, Hq), (Hq * D) ** -0.5, dtype=q.dtype, device=q.device)
    return q, k.mean(2, keepdim=True), weights
