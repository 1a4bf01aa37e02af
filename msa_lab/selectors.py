"""Selectors: turn scores into a BlockSelection.

Every selector scores the blocks of each query row and hands the scores to
``select_top_blocks``, which applies the shared rules: only blocks up to the query's
own block compete, the own block is forced (and counts toward ``top_k``) unless told
otherwise, ties go to the lower block id, and a row keeps
``min(top_k, own_block + 1)`` ids, the rest ``-1``.

These are the reference versions, processed in query chunks so memory stays bounded.
"""

from __future__ import annotations

import torch

from .reference import block_mass, compute_dtype, grouped_scores, query_chunk_size
from .selection import PER_CHOICES, BlockSelection, num_blocks
from .validation import (
    check_bool,
    check_blocks,
    check_choice,
    check_index_inputs,
    check_int,
    check_positions,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
    check_top_k,
)


def select_top_blocks(
    scores: torch.Tensor,
    positions: torch.Tensor,
    *,
    block_size: int,
    top_k: int,
    force_local: bool = True,
) -> torch.Tensor:
    """``scores [..., C, num_blocks]`` for query rows at ``positions [C]`` ->
    ``int32 [..., C, top_k]`` block ids, ``-1`` padded.

    Scores of blocks after the own block are ignored. The ranking needs no softmax
    (monotone), so raw logits, max-pooled logits and masses all work. Every position must
    lie in one of the scored blocks (``position // block_size < num_blocks``), so every id
    returned is a valid block.
    """
    block_size = check_positive_int(block_size, "block_size")
    check_bool(force_local, "force_local")
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError("scores must be a floating-point torch.Tensor [..., rows, num_blocks], got "
                        f"{scores.dtype if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if scores.dim() < 2 or scores.shape[-1] == 0:
        raise ValueError(f"scores must be [..., rows, num_blocks] with num_blocks > 0, got {tuple(scores.shape)}")
    nb = scores.shape[-1]
    top_k = check_top_k(top_k, nb)  # the output is [..., rows, top_k]: never terabytes of padding
    positions = check_positions(positions, f"positions (rows scored over {nb} blocks of {block_size})",
                                nb * block_size)
    if positions.numel() != scores.shape[-2]:
        raise ValueError(f"positions must give one position per score row ({scores.shape[-2]}), "
                         f"got {positions.numel()}")
    if positions.device != scores.device:
        raise ValueError(f"positions is on {positions.device} but scores is on {scores.device}")
    return _select_top_blocks(scores, positions, block_size, top_k, force_local)


def _select_top_blocks(scores: torch.Tensor, positions: torch.Tensor, block_size: int, top_k: int,
                       force_local: bool = True) -> torch.Tensor:
    """``select_top_blocks`` on inputs already checked (the selectors' inner loops)."""
    nb = scores.shape[-1]
    own = (positions // block_size).view(-1, 1)
    blk = torch.arange(nb, device=scores.device)
    # The own block is placed in slot 0 by construction, not by a score, so an earlier
    # block scoring +inf or NaN cannot displace it.
    ranked_slots = top_k - 1 if force_local else top_k
    candidates = blk < own if force_local else blk <= own
    # NaN scores (overflowing inputs) rank last, like -inf, as in the Triton top-k.
    valid_score = candidates & ~torch.isnan(scores)
    key = torch.where(valid_score, scores, torch.full_like(scores, float("-inf")))
    # Stable descending sort keeps equal scores in id order: ties go to the lower id.
    # Non-candidates all have larger ids than every candidate, so they rank after them.
    ids = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., : min(ranked_slots, nb)]
    if nb < ranked_slots:
        ids = torch.nn.functional.pad(ids, (0, ranked_slots - nb), value=-1)
    if force_local:
        ids = torch.cat([own.expand(*ids.shape[:-1], 1), ids], -1)
    slot = torch.arange(top_k, device=scores.device)
    valid = slot < torch.clamp(own + 1, max=top_k)
    return torch.where(valid, ids, torch.full_like(ids, -1)).to(torch.int32)


def _rows(seq_len: int, chunk: int, device):
    for start in range(0, seq_len, chunk):
        yield start, torch.arange(start, min(start + chunk, seq_len), device=device)


SELECT_BACKENDS = ("reference", "triton", "auto")


def _use_triton(backend: str, x: torch.Tensor) -> bool:
    """Resolve a selector's ``backend``; a Triton backend that cannot run raises."""
    backend = check_choice(backend, "backend", SELECT_BACKENDS)
    if backend == "auto":
        backend = "triton" if x.is_cuda else "reference"
    if backend == "triton":
        from .kernels.runtime import check_triton_device

        check_triton_device(x, backend)
    return backend == "triton"


def block_mean_keys(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[B, num_blocks, Hkv, D]`` mean key of each block (over its real tokens).

    As in MoBA's reference, the mean is rounded to the input dtype before the fp32
    gate, so bf16 inputs gate exactly as MoBA does.
    """
    check_tensor(k, "k", 4, "[batch, seq, kv_heads, dim]")
    block_size = check_positive_int(block_size, "block_size")
    B, N, Hkv, D = k.shape
    nb = num_blocks(N, block_size)
    kf = torch.nn.functional.pad(k.to(compute_dtype(k)), (0, 0, 0, 0, 0, nb * block_size - N))
    sums = kf.view(B, nb, block_size, Hkv, D).sum(2)
    counts = torch.clamp(N - torch.arange(nb, device=k.device) * block_size, max=block_size)
    return (sums / counts.view(1, nb, 1, 1)).to(k.dtype)


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
    return _moba_gate(q, mean_keys, positions)


def _moba_gate(q: torch.Tensor, mean_keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
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
    if _use_triton(backend, q):
        from .kernels.moba_select import moba_select_triton

        return moba_select_triton(q, k, block_size, top_k)
    kmean = block_mean_keys(k, block_size)
    nb = kmean.shape[1]
    parts = []
    for _, pos in _rows(N, query_chunk_size(nb, B, Hq), q.device):
        parts.append(_select_top_blocks(_moba_gate(q, kmean, pos), pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, "head")


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
    return _msa_block_scores(index_q, index_k, positions, block_size)


def _msa_block_scores(index_q: torch.Tensor, index_k: torch.Tensor, positions: torch.Tensor,
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
    if _use_triton(backend, index_q):
        from .kernels.index_topk import msa_select_triton

        return msa_select_triton(index_q, index_k, block_size, top_k)
    parts = []
    for _, pos in _rows(N, query_chunk_size(N, B, G), index_q.device):
        scores = _msa_block_scores(index_q, index_k, pos, block_size)
        parts.append(_select_top_blocks(scores, pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, "group")


def index_from_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An untrained stand-in for MSA's index branch: the group's mean query as the
    index query and the group's key as the index key (``[B, N, G, D]`` each)."""
    B, N, Hq, Hkv, D = check_qkv(q, k)
    return q.view(B, N, Hkv, Hq // Hkv, D).mean(3), k


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
    for _, pos in _rows(N, query_chunk_size(N, B, Hq), q.device):
        mass = block_mass(q, k, pos, block_size=block_size, scale=scale)
        if per == "group":
            mass = mass.unflatten(1, (Hkv, Hq // Hkv)).sum(2)
        parts.append(_select_top_blocks(mass, pos, block_size, top_k, force_local))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, per)


def select_window(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
                  per: str = "group") -> BlockSelection:
    """Sliding window of blocks: the own block and the ``top_k - 1`` blocks before it."""
    B, N, Hq, Hkv, _ = check_qkv(q, k)
    block_size, top_k = check_blocks(block_size, top_k, N)
    check_choice(per, "per", PER_CHOICES)
    own = torch.arange(N, device=k.device) // block_size
    ids = own.view(-1, 1) - torch.arange(top_k, device=k.device)
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
    for _, pos in _rows(N, query_chunk_size(nb, B, Hs), k.device):
        scores = torch.rand(B, Hs, pos.numel(), nb, generator=gen, device=k.device)
        parts.append(_select_top_blocks(scores, pos, block_size, top_k))
    return BlockSelection._trusted(torch.cat(parts, 2), block_size, per)
