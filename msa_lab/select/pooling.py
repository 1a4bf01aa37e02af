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
