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
