"""Rotary position embedding (RoPE), optionally on the first ``rotary_dims`` channels only
(partial RoPE, as MiniMax-M3 uses for the main attention and the MSA index branch)."""

from __future__ import annotations

import torch

from ..validation import check_int, check_number, check_tensor


def check_rotary_dims(rotary_dims, head_dim: int) -> int:
    """``rotary_dims`` (None: all of ``head_dim``) as an even int in ``[0, head_dim]``."""
    r = head_dim if rotary_dims is None else rotary_dims
    if isinstance(r, bool) or not isinstance(r, int) or r < 0 or r > head_dim or r % 2:
        raise ValueError(f"rotary_dims must be an even int in [0, {head_dim}] (the head dim), got {rotary_dims!r}")
    return r


def check_rope_base(base) -> float:
    # inv_freq = base ** (-i / half): a base <= 1 gives every channel the same or a rising
    # frequency (no long wavelengths), 0 or NaN gives NaN angles.
    return check_number(base, "rope_base", above=1.0)


def rotary(x: torch.Tensor, rotary_dims: int | None = None, base: float = 10000.0,
           offset: int = 0) -> torch.Tensor:
    """RoPE of ``x [B, N, H, D]`` at positions ``offset .. offset + N - 1`` (``offset >= 0``)
    on its first ``rotary_dims`` channels (all ``D`` when None; must be even), rotate-half
    convention; the other channels pass through. ``base``: a finite number > 1. Computed in
    float32 (float64 for float64 input, so the float64 references keep float64 accuracy),
    returned in x's dtype."""
    check_tensor(x, "x", 4, "[batch, seq, heads, dim]")
    D = x.shape[-1]
    r = check_rotary_dims(rotary_dims, D)
    base = check_rope_base(base)
    offset = check_int(offset, "offset", minimum=0)
    if r == 0:
        return x
    half = r // 2
    work = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=work) / half)
    pos = torch.arange(offset, offset + x.shape[1], device=x.device, dtype=work)
    angle = (pos[:, None] * inv_freq[None, :])[None, :, None, :]  # [1, N, 1, half]
    cos, sin = angle.cos(), angle.sin()
    rot, rest = x[..., :r].to(work), x[..., r:]
    x1, x2 = rot[..., :half], rot[..., half:]
    turned = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)
    return torch.cat((turned, rest), -1) if r < D else turned
