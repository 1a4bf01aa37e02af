"""Can the Triton kernels run on this device? Explicit errors, never a silent fallback."""

from __future__ import annotations

import torch


def interpreted() -> bool:
    """True when msa_lab's kernels were defined under ``TRITON_INTERPRET=1`` (they run on
    the CPU). Triton decides this when a kernel is defined, so a variable set later has no
    effect: the kernels themselves are asked."""
    from triton.runtime.jit import JITFunction

    from .triton_tiles import load_rows

    return not isinstance(load_rows, JITFunction)


def check_triton_device(x: torch.Tensor, backend: str) -> None:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"backend={backend!r} needs the triton package: {err}") from None
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"backend={backend!r} supports float16, bfloat16 and float32 inputs, got {x.dtype}; "
                        "use backend='reference' for float64")
    if interpreted() and x.dtype == torch.bfloat16:
        # Seen with triton 3.9: the interpreter's bf16 tl.dot returns values off by up to ~1e9.
        raise TypeError(f"backend={backend!r} cannot take bfloat16 inputs under TRITON_INTERPRET=1: the "
                        "Triton interpreter's bfloat16 dot products are wrong; use float16 or float32 on "
                        "the CPU, or run on a GPU without TRITON_INTERPRET")
    if x.is_cuda or interpreted():
        return
    raise RuntimeError(
        f"backend={backend!r} needs a CUDA GPU, or TRITON_INTERPRET=1 set before msa_lab's "
        f"kernels are first imported to run them (slowly) on the CPU; inputs are on {x.device}"
    )


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def dot_pad(n: int) -> int:
    """The padded width of a tile dimension that enters ``tl.dot``: a power of two, and at
    least 16, the smallest the MMA instructions take."""
    return max(16, next_pow2(n))


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs: full-precision products (tf32 would cost ~3e-4 relative error).
    return "ieee" if dtype == torch.float32 else "tf32"


#: Most keys of a block the attention kernels hold at once, and the most bytes of one such
#: [keys, head dim] K or V sub-tile: a larger block is walked in sub-tiles with an online
#: softmax (block 128, MSA's, stays one tile: the measured path).
MAX_TILE_KEYS = 128
MAX_TILE_BYTES = 32 << 10


def key_tile(block_size: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys per sub-tile of a block: the whole (padded) block up to ``MAX_TILE_KEYS`` keys,
    else the largest power of two (at least 16) whose K tile fits ``MAX_TILE_BYTES``, so the
    tiles' shared memory does not grow with the block size (float32 at head dim 128: 64)."""
    if dot_pad(block_size) <= MAX_TILE_KEYS:
        return dot_pad(block_size)
    keys = MAX_TILE_KEYS
    while keys > 16 and keys * dot_pad(head_dim) * dtype.itemsize > MAX_TILE_BYTES:
        keys //= 2
    return keys
