"""Generated long-context Q/K/V with known attention structure.

Each KV group gets one pattern, planted in its own random orthonormal subspace on top
of unit Gaussian noise (noise logits have std 1 at the default scale ``D**-0.5``):

- ``local``: rotary-style features at periods 16..4096 tokens, so a query's logits
  peak on its recent past (recency bias);
- ``periodic``: "anchor" tokens every ``period`` positions (not aligned to any block
  size) that every query looks for;
- ``needle``: a few single tokens with unique directions; each run of 256 queries
  looks for one earlier needle (one token per block carries the mass: mean pooling
  dilutes it, max pooling keeps it);
- ``heavy_hitter``: attention sinks (token 0 and a few random tokens) that every query
  attends to.

``mixed`` cycles the four over the KV groups, and every non-local group keeps a weaker
local component, as real heads do. The query heads of a group share the group's pattern
with their own strength and noise. Reproducible from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .validation import check_float_dtype, check_int, check_positive_int

PATTERNS = ("local", "needle", "periodic", "heavy_hitter")


@dataclass(frozen=True)
class StructuredQKV:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    patterns: tuple[str, ...]  # one per KV group


def _local_features(n: int, pairs: int) -> torch.Tensor:
    periods = torch.logspace(math.log10(16), math.log10(4096), pairs, dtype=torch.float64)
    angle = torch.arange(n, dtype=torch.float64).view(-1, 1) * (2 * math.pi / periods)
    return torch.cat([angle.cos(), angle.sin()], -1).float() / math.sqrt(pairs)


def _plant(q_rows: torch.Tensor, k_rows: torch.Tensor, pattern: str, n: int, d: int,
           gen: torch.Generator, basis: torch.Tensor, head_gain: torch.Tensor,
           logit: float, local_weight: float):
    """Add one pattern to ``q_rows [n, G, d]`` and ``k_rows [n, d]`` in place."""
    amp = math.sqrt(logit * math.sqrt(d))  # q.k = amp**2 -> logit `logit` at scale d**-0.5
    pairs = min(8, d // 4)
    used = 2 * pairs
    if pattern == "local" or local_weight > 0:
        w = 1.0 if pattern == "local" else local_weight
        f = _local_features(n, pairs) @ basis[:used] * (amp * math.sqrt(w))
        k_rows += f
        q_rows += f.unsqueeze(1) * head_gain.view(1, -1, 1)
    u = basis[used:]
    if pattern == "periodic":
        period = 389
        anchor = (torch.arange(n) % period) == 0
        k_rows[anchor] += amp * u[0]
        q_rows += amp * u[0] * head_gain.view(1, -1, 1)
    elif pattern == "heavy_hitter":
        sinks = torch.cat([torch.zeros(1, dtype=torch.long),
                           torch.randint(1, n, (3,), generator=gen)])
        k_rows[sinks] += amp * u[0]
        q_rows += amp * u[0] * head_gain.view(1, -1, 1)
    elif pattern == "needle":
        count = min(8, u.shape[0], max(1, n // 512))
        where = torch.randperm(n - 1, generator=gen)[:count].sort().values
        k_rows[where] += amp * u[:count]
        for start in range(0, n, 256):
            earlier = (where < start).nonzero().flatten()
            if earlier.numel() == 0:
                continue
            pick = earlier[torch.randint(earlier.numel(), (1,), generator=gen)]
            q_rows[start:start + 256] += amp * u[pick] * head_gain.view(1, -1, 1)
    elif pattern != "local":
        raise ValueError(f"pattern must be one of {PATTERNS} or 'mixed', got {pattern!r}")


def structured_qkv(*, batch: int = 1, seq_len: int = 8192, num_heads: int = 8,
                   num_kv_heads: int = 2, head_dim: int = 64, patterns="mixed",
                   seed: int = 0, dtype: torch.dtype = torch.float32,
                   device="cpu") -> StructuredQKV:
    """``q [B, N, Hq, D]``, ``k, v [B, N, Hkv, D]`` with planted attention patterns.

    ``patterns``: ``"mixed"``, one name from ``PATTERNS`` for every group, or a
    sequence with one name per KV group.
    """
    B = check_positive_int(batch, "batch")
    N = check_positive_int(seq_len, "seq_len")
    Hq = check_positive_int(num_heads, "num_heads")
    Hkv = check_positive_int(num_kv_heads, "num_kv_heads")
    D = check_positive_int(head_dim, "head_dim")
    if Hq % Hkv:
        raise ValueError(f"num_heads ({Hq}) must be a multiple of num_kv_heads ({Hkv})")
    if D < 16:
        raise ValueError(f"head_dim must be >= 16 to hold the planted patterns, got {D}")
    seed = check_int(seed, "seed")
    check_float_dtype(dtype, "dtype")
    if isinstance(patterns, str):
        names = [PATTERNS[g % len(PATTERNS)] for g in range(Hkv)] if patterns == "mixed" \
            else [patterns] * Hkv
    else:
        if isinstance(patterns, bytes) or not isinstance(patterns, Iterable):
            raise TypeError(f"patterns must be 'mixed', a pattern name or a sequence of names, got {patterns!r}")
        names = list(patterns)
        if len(names) != Hkv:
            raise ValueError(f"patterns must name one pattern per KV group ({Hkv}), got {len(names)}")
    for name in names:
        if name not in PATTERNS:
            raise ValueError(f"patterns must be 'mixed' or from {PATTERNS}, got {name!r}")
    G = Hq // Hkv
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, Hkv, G, D, generator=gen)
    k = torch.randn(B, N, Hkv, D, generator=gen)
    v = torch.randn(B, N, Hkv, D, generator=gen)
    logits = {"local": 6.0, "needle": 9.0, "periodic": 4.0, "heavy_hitter": 7.0}
    for b in range(B):
        for g, name in enumerate(names):
            basis = torch.linalg.qr(torch.randn(D, D, generator=gen))[0].T
            gain = 0.7 + 0.6 * torch.rand(G, generator=gen)
            _plant(q[b, :, g], k[b, :, g], name, N, D, gen, basis, gain, logits[name],
                   local_weight=0.0 if name == "local" else 0.5)
    to = dict(dtype=dtype, device=device)
    return StructuredQKV(q.reshape(B, N, Hq, D).to(**to), k.to(**to), v.to(**to), tuple(names))
