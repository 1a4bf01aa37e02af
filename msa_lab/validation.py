"""Input checks for the public entry points.

Every public function checks its inputs once, here, and raises ``ValueError`` or
``TypeError`` with the argument's name and what was expected. Kernels and internal
helpers assume valid inputs.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_positive_int(value, name: str) -> int:
    # bool is an int subclass; block_size=True is a bug, not a block size of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_tensor(x, name: str, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}"
        )
    return x


def check_same_device_dtype(named: dict[str, torch.Tensor]) -> None:
    items = list(named.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.device != first.device:
            raise ValueError(
                f"{name} is on {x.device} but {first_name} is on {first.device}; "
                "all inputs must be on one device"
            )
        if x.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype} but {first_name} has {first.dtype}; "
                "all inputs must share one dtype"
            )


def check_qkv(q, k, v=None, *, same_length: bool = True) -> tuple[int, int, int, int, int]:
    """Check ``q [B, N, Hq, D]``, ``k, v [B, N, Hkv, D]``; return ``(B, N, Hq, Hkv, D)``."""
    check_tensor(q, "q", 4, "[batch, seq, heads, dim]")
    check_tensor(k, "k", 4, "[batch, seq, kv_heads, dim]")
    named = {"q": q, "k": k}
    if v is not None:
        check_tensor(v, "v", 4, "[batch, seq, kv_heads, dim]")
        named["v"] = v
        if v.shape != k.shape:
            raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    check_same_device_dtype(named)
    B, N, Hq, D = q.shape
    for name, size in (("batch", B), ("q seq length", N), ("k seq length", k.shape[1]),
                       ("query heads", Hq), ("head dim", D)):
        if size == 0:
            raise ValueError(f"{name} must be positive, got 0 (q {tuple(q.shape)}, k {tuple(k.shape)})")
    if k.shape[0] != B:
        raise ValueError(f"k must have batch {B} like q, got {k.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(f"k must have head dim {D} like q, got {k.shape[3]}")
    if same_length and k.shape[1] != N:
        raise ValueError(f"k must have seq length {N} like q (self-attention), got {k.shape[1]}")
    Hkv = k.shape[2]
    if Hq == 0 or Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"the number of query heads ({Hq}) must be a multiple of the number of "
            f"KV heads ({Hkv}) for GQA"
        )
    return B, N, Hq, Hkv, D


def check_index_inputs(index_q, index_k) -> tuple[int, int, int, int]:
    """Check MSA index inputs; return ``(B, N, G, Di)``."""
    check_tensor(index_q, "index_q", 4, "[batch, seq, groups, index_dim]")
    check_tensor(index_k, "index_k", 4, "[batch, seq, 1 or groups, index_dim]")
    check_same_device_dtype({"index_q": index_q, "index_k": index_k})
    B, N, G, Di = index_q.shape
    if index_k.shape[0] != B or index_k.shape[1] != N or index_k.shape[3] != Di:
        raise ValueError(
            f"index_k must be [batch={B}, seq={N}, 1 or {G}, index_dim={Di}] to match "
            f"index_q, got {tuple(index_k.shape)}"
        )
    if index_k.shape[2] not in (1, G):
        raise ValueError(
            f"index_k must have 1 shared index head or {G} (one per group), got {index_k.shape[2]}"
        )
    if min(B, N, G, Di) == 0:
        raise ValueError(f"index_q must have batch, seq, groups and index_dim > 0, got {tuple(index_q.shape)}")
    return B, N, G, Di


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


#: The softmax scale's accepted range. The kernels multiply float32 scores by it (and by
#: log2(e)): 2**16 at most, so q.k.scale can overflow float32 (3.4e38) only where q.k itself
#: is within 2**16 of overflowing, i.e. entries above ~1e15 even at head dim 4096; float16
#: inputs (at most 65504 each) can never overflow. 2**-64 at least, so a score of order one
#: stays far above float32's subnormals (2**-126) instead of flushing every row to uniform.
SCALE_MIN, SCALE_MAX = 2.0 ** -64, 2.0 ** 16


def check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if not SCALE_MIN <= scale <= SCALE_MAX:
        raise ValueError(f"scale must lie in [2**-64, 2**16] so that scaled float32 scores cannot "
                         f"overflow or flush to zero, got {scale}")
    return float(scale)


# ---- checks for the public helpers (selectors' building blocks, caches, layers, data) ----

def check_int(value, name: str, minimum: int | None = None) -> int:
    """An int (numpy ints too; bools refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_sink_blocks(sink_blocks, top_k: int) -> int:
    """A selector's forced sink blocks (StreamingLLM's): an int in ``[0, top_k - 1]``, so that
    the own (local) block still fits among the ``top_k`` slots."""
    sink_blocks = check_int(sink_blocks, "sink_blocks", minimum=0)
    if sink_blocks >= top_k:
        raise ValueError(f"sink_blocks must be an int in [0, top_k - 1] = [0, {top_k - 1}] so that the own block "
                         f"fits in the top_k={top_k} slots, got {sink_blocks}")
    return sink_blocks


def check_number(value, name: str, *, above: float) -> float:
    """A finite real number strictly greater than ``above`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > above):
        raise ValueError(f"{name} must be a finite number > {above:g}, got {value}")
    return float(value)


def check_float_dtype(dtype, name: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be torch.float16, bfloat16, float32 or float64, got {dtype!r}")
    return dtype


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` naming the first position of a NaN or inf in ``x``. Checked in
    slices along dim 1 (the sequence of ``[B, N, H, D]``), so the mask stays small at 1M tokens."""
    dim = 1 if x.dim() > 1 else 0
    if x.dim() == 0 or x.numel() == 0:
        slices = [(0, x)]
    else:
        step = max(1, (1 << 24) // max(1, x.numel() // x.shape[dim]))
        slices = [(s, x.narrow(dim, s, min(step, x.shape[dim] - s))) for s in range(0, x.shape[dim], step)]
    for start, part in slices:
        bad = ~torch.isfinite(part)
        if bool(bad.any()):
            where = [int(i) for i in bad.nonzero()[0]]
            if where:
                where[dim] += start
            raise ValueError(f"{name} must be finite, got {float(part[bad][0])} at index {tuple(where)}")
    return x


def check_positions(positions, name: str, seq_len: int) -> torch.Tensor:
    """A 1-D integer tensor of query positions in ``[0, seq_len)``, returned as int64."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor of query positions, "
                        f"got {type(positions).__name__}")
    if positions.dtype.is_floating_point or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of query positions, got {positions.dtype}")
    if positions.dim() != 1 or positions.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of query positions, got shape "
                         f"{tuple(positions.shape)}")
    lo, hi = torch.stack(torch.aminmax(positions)).tolist()  # one device sync, not two
    if lo < 0 or hi >= seq_len:
        raise ValueError(f"{name} must be query positions in [0, {seq_len - 1}], got range [{lo}, {hi}]")
    return positions.long()


def check_hidden(x, d_model: int) -> tuple[int, int, int]:
    """A layer input ``x [batch, seq, d_model]`` (floating point); return its shape."""
    check_tensor(x, "x", 3, f"[batch, seq, d_model={d_model}]")
    if x.shape[2] != d_model:
        raise ValueError(f"x must be [batch, seq, d_model={d_model}], got {tuple(x.shape)}")
    return tuple(x.shape)


#: A block may be larger than a short sequence (one block then holds all of it) up to this
#: size; beyond it, at most the sequence length rounded up to a power of two. Bigger blocks
#: would only pad: block_size=10**12 once tried to allocate terabytes of padding.
PADDED_BLOCK_SIZE_LIMIT = 1024
#: ``top_k`` may exceed the number of key blocks of a short input (rows take every block and
#: pad with -1) up to this many slots; beyond it, at most the number of blocks. More slots
#: are pure padding that every kernel loops over (top_k=10000 ran for minutes).
PADDED_TOP_K_LIMIT = 256


def check_block_size(block_size, seq_len: int, what: str = "the sequence length") -> int:
    """``block_size``: a positive int no larger than ``max(1024, seq_len rounded up to a
    power of two)``."""
    block_size = check_positive_int(block_size, "block_size")
    limit = max(PADDED_BLOCK_SIZE_LIMIT, 1 << max(0, (seq_len - 1).bit_length()))
    if block_size > limit:
        raise ValueError(f"block_size must be at most {limit:,} ({what} {seq_len:,} rounded up to a power "
                         f"of two, or {PADDED_BLOCK_SIZE_LIMIT}), got {block_size:,}")
    return block_size


def check_blocks(block_size, top_k, seq_len: int, what: str = "the sequence length") -> tuple[int, int]:
    """``(block_size, top_k)`` for an input of ``seq_len`` tokens: ``check_block_size``, then
    ``check_top_k`` against the number of blocks that block size makes."""
    block_size = check_block_size(block_size, seq_len, what)
    return block_size, check_top_k(top_k, -(-seq_len // block_size))


def check_top_k(top_k, num_key_blocks: int) -> int:
    """``top_k``: a positive int no larger than ``max(256, num_key_blocks)``."""
    top_k = check_positive_int(top_k, "top_k")
    limit = max(PADDED_TOP_K_LIMIT, num_key_blocks)
    if top_k > limit:
        raise ValueError(f"top_k must be at most {limit:,} (the number of key blocks, {num_key_blocks:,}, or "
                         f"{PADDED_TOP_K_LIMIT} for shorter inputs, whose rows take every block), got {top_k:,}")
    return top_k


#: DSA's ``top_k`` counts tokens: it may exceed a short input's length (rows take every visible
#: token and pad with -1) up to this many slots; beyond it, at most the sequence length.
PADDED_TOKEN_TOP_K_LIMIT = 8192


def check_token_top_k(top_k, seq_len: int) -> int:
    """A token ``top_k``: a positive int no larger than ``max(8192, seq_len)``."""
    top_k = check_positive_int(top_k, "top_k")
    limit = max(PADDED_TOKEN_TOP_K_LIMIT, seq_len)
    if top_k > limit:
        raise ValueError(f"top_k must be at most {limit:,} tokens (the sequence length, {seq_len:,}, or "
                         f"{PADDED_TOKEN_TOP_K_LIMIT} for shorter inputs, whose rows take every token), got {top_k:,}")
    return top_k
