"""Per-block summaries of the keys that training-free selectors score against."""

from __future__ import annotations

import torch

from ..reference import compute_dtype
from ..selection import num_blocks
from ..validation import check_positive_int, check_tensor


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


def block_key_bounds(k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)``, each ``[B, num_blocks, Hkv, D]``: the element-wise min and max key of
    each block over its real tokens (Quest's per-block summary).

    Both are elements of ``k``, so they are exact in the input dtype (no rounding, unlike the
    mean). A NaN key makes its block's bounds NaN in that coordinate.
    """
    check_tensor(k, "k", 4, "[batch, seq, kv_heads, dim]")
    block_size = check_positive_int(block_size, "block_size")
    B, N, Hkv, D = k.shape
    nb = num_blocks(N, block_size)
    pad = (0, 0, 0, 0, 0, nb * block_size - N)
    # The partial last block is padded with values that never win its min or max.
    lo = torch.nn.functional.pad(k, pad, value=float("inf")).view(B, nb, block_size, Hkv, D).amin(2)
    hi = torch.nn.functional.pad(k, pad, value=float("-inf")).view(B, nb, block_size, Hkv, D).amax(2)
    return lo, hi
