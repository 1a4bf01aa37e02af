"""The shared top-k rule every block selector hands its scores to.

Only blocks up to the query's own block compete; the own block is forced (and counts toward
``top_k``) unless told otherwise; ties go to the lower block id; NaN scores rank last; a row
keeps ``min(top_k, own_block + 1)`` ids and pads the rest with ``-1``. The Triton twin is
``topk_triton.top_blocks_kernel``.
"""

from __future__ import annotations

import torch

from ..validation import check_bool, check_positions, check_positive_int, check_top_k


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
    return top_blocks(scores, positions, block_size, top_k, force_local)


def top_blocks(scores: torch.Tensor, positions: torch.Tensor, block_size: int, top_k: int,
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


def query_rows(seq_len: int, chunk: int, device):
    """``(start, positions)`` of consecutive query chunks of at most ``chunk`` rows."""
    for start in range(0, seq_len, chunk):
        yield start, torch.arange(start, min(start + chunk, seq_len), device=device)
