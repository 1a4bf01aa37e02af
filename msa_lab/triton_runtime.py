"""Can the Triton kernels run on this device? Explicit errors, never a silent fallback. And the
kernels' settings: buffer budgets, tile limits and the measured launch settings, read when a
kernel launches and changed for a block of code with ``using_kernel_settings`` (checks, tuning
scripts), never by assigning module globals."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class KernelSettings:
    """What the kernels launch with. The defaults are the measured ones (docs/kernels.md)."""

    #: Largest partial buffer (outputs + LSEs) of one KV-outer query chunk; None: half the
    #: device memory not in use (one chunk at 128K tokens on an H200: each extra chunk re-sorts
    #: and relaunches).
    partial_bytes: int | None = None
    #: Fill partial buffers with NaN before a kernel runs, so a slot it fails to write shows
    #: up in the merged output (checks only; costs a pass over the buffer).
    poison_partials: bool = False
    #: Most keys of a block the attention and index kernels hold at once, and the most bytes of
    #: one such [keys, head dim] K or V sub-tile: a larger block is walked in sub-tiles with an
    #: online softmax (block 128, MSA's, stays one tile: the measured path).
    max_tile_keys: int = 128
    max_tile_bytes: int = 32 << 10
    #: Largest [B, heads, chunk, num_blocks] float32 score buffer of a selector's Triton twin
    #: (MSA, MoBA, Quest): longer inputs are scored and top-k'd in query chunks.
    score_bytes: int = 4 << 30
    #: Most blocks of a row the top-k kernel holds at once (MSA's block 128 at 1M tokens: 8192,
    #: the measured path); a longer row is scanned in chunks of this many.
    top_k_row_tile: int = 8192
    #: MSA's index-score kernel, measured on an H200 at 1M tokens: 256 query rows per program
    #: (half the index-key traffic per FLOP of 128), 4 blocks per store, 8 warps, 3 stages.
    index_query_tile: int = 256
    index_blocks_per_store: int = 4
    index_num_warps: int = 8
    index_num_stages: int = 3
    #: The KV-outer backward at MSA's config: 128 keys per program with 8 warps beat 64 and 32
    #: keys and 4 warps.
    backward_keys_per_program: int = 128
    backward_num_warps: int = 8

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "poison_partials":
                if not isinstance(value, bool):
                    raise TypeError(f"kernel setting poison_partials must be True or False, got {value!r}")
            elif not (value is None and f.name == "partial_bytes") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"kernel setting {f.name} must be a positive int"
                                 f"{' or None' if f.name == 'partial_bytes' else ''}, got {value!r}")
        for name in ("max_tile_keys", "top_k_row_tile", "index_query_tile", "backward_keys_per_program"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"kernel setting {name} must be a power of two of at least 16, got {value}")
        for name in ("index_blocks_per_store", "index_num_warps", "backward_num_warps"):  # tl.arange, warps
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"kernel setting {name} must be a power of two, got {value}")


_SETTINGS: ContextVar[KernelSettings] = ContextVar("msa_lab_kernel_settings", default=KernelSettings())


def kernel_settings() -> KernelSettings:
    """The settings kernels launch with here (this thread or task)."""
    return _SETTINGS.get()


@contextmanager
def using_kernel_settings(base: KernelSettings | None = None, **changes):
    """Launch the kernels inside the block with ``changes`` to ``base`` (default: the current
    settings), e.g. ``with using_kernel_settings(poison_partials=True, partial_bytes=1 << 20): ...``."""
    names = {f.name for f in fields(KernelSettings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown kernel setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(names))}")
    token = _SETTINGS.set(replace(base or _SETTINGS.get(), **changes))
    try:
        yield _SETTINGS.get()
    finally:
        _SETTINGS.reset(token)


def interpreted() -> bool:
    """True when msa_lab's kernels were defined under ``TRITON_INTERPRET=1`` (they run on
    the CPU). Triton decides this when a kernel is defined, so a variable set later has no
    effect: the kernels themselves are asked."""
    from triton.runtime.jit import JITFunction

    from .triton_tiles import load_rows

    return not isinstance(load_rows, JITFunction)


#: The largest head dim the Triton kernels take: their tiles are sized for, and checked at, head
#: dims up to 128 (offline for sm_90 and on an H200); a larger one could ask for more shared
#: memory than the GPU has, which Triton reports only at launch.
MAX_HEAD_DIM = 128


def check_triton_device(x: torch.Tensor, backend: str) -> None:
    """Can ``x`` (the operation's query-side input, ``[..., head dim]``) go to a Triton backend?"""
    if x.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"backend={backend!r} takes head dims up to {MAX_HEAD_DIM} (the Triton kernels' tiles are "
                         f"sized and checked up to it), got {x.shape[-1]}; use backend='reference', or 'flex' / "
                         "'sdpa' where the operation has them")
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


def key_tile(block_size: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys per sub-tile of a block: the whole (padded) block up to ``max_tile_keys`` keys,
    else the largest power of two (at least 16) whose K tile fits ``max_tile_bytes``, so the
    tiles' shared memory does not grow with the block size (float32 at head dim 128: 64)."""
    settings = kernel_settings()
    if dot_pad(block_size) <= settings.max_tile_keys:
        return dot_pad(block_size)
    keys = settings.max_tile_keys
    while keys > 16 and keys * dot_pad(head_dim) * dtype.itemsize > settings.max_tile_bytes:
        keys //= 2
    return keys
