"""One backend table per operation, and the one resolver of ``backend="auto"``.

A named backend runs or raises: nothing falls back silently. ``"auto"`` picks the operation's
CUDA choice when the input is on a GPU (unless that is a Triton backend and the head dim is
above ``triton_runtime.MAX_HEAD_DIM``) and its CPU choice otherwise; a backend that runs
Triton kernels is checked against the device (``triton_runtime.check_triton_device``) before
any launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Operation:
    """The backends of one operation; ``triton``: those that launch Triton kernels."""

    name: str
    backends: tuple[str, ...]
    auto_cuda: str
    auto_cpu: str
    triton: tuple[str, ...]

    def check(self, backend: str) -> str:
        """``backend`` if the table has it (or ``"auto"``); else a ValueError listing them."""
        choices = (*self.backends, "auto")
        if not isinstance(backend, str) or backend not in choices:
            raise ValueError(f"backend must be one of {', '.join(map(repr, choices))}; got {backend!r}")
        return backend

    def resolve(self, backend: str, x: torch.Tensor) -> str:
        """``backend`` checked against the table, ``"auto"`` resolved by ``x``'s device; a
        Triton backend on a device that cannot run it raises."""
        from .triton_runtime import MAX_HEAD_DIM, check_triton_device

        backend = self.check(backend)
        if backend == "auto":
            backend = self.auto_cuda if x.is_cuda else self.auto_cpu
            if backend in self.triton and x.shape[-1] > MAX_HEAD_DIM:  # past the kernels' tiles: the CPU choice
                backend = self.auto_cpu
        if backend in self.triton:
            check_triton_device(x, backend)
        return backend


#: Exact dense attention. ``auto``: SDPA (cuDNN / FlashAttention), the fastest exact dense path;
#: ``full_attention`` asks for the LSE through ``FULL_WITH_LSE``, which SDPA cannot return.
FULL = Operation("full attention", ("reference", "sdpa", "triton"), "sdpa", "sdpa", ("triton",))
FULL_WITH_LSE = Operation("full attention with its LSE", ("reference", "triton"), "triton", "reference",
                          ("triton",))
#: Attention over a block selection. ``auto``: KV-outer, which beat Q-outer and FlexAttention
#: at every GQA ratio measured (docs/kernels.md).
BLOCK_SPARSE = Operation("block-sparse attention", ("reference", "flex", "triton", "triton_q_outer"),
                         "triton", "reference", ("triton", "triton_q_outer"))
#: Attention over a token selection (DSA): the Triton token-gather kernels, or the reference.
TOKEN_SPARSE = Operation("token-sparse attention", ("reference", "triton"), "triton", "reference", ("triton",))
#: A selector's scoring and top-k.
SELECT = Operation("block selection", ("reference", "triton"), "triton", "reference", ("triton",))
#: MSA's index KL loss: the fused kernels over a selection's tokens, or the reference (which alone
#: computes the dense warm-up's loss over every visible token; ``index_kl_loss`` picks it there).
INDEX_KL = Operation("index KL loss", ("reference", "triton"), "triton", "reference", ("triton",))
#: One decode step against a KV cache (MSA's fused Triton decode, or the reference).
DECODE = Operation("decode", ("reference", "triton"), "triton", "reference", ("triton",))
#: Dense decode: SDPA's fused kernels, Triton flash-decoding, or the reference.
DENSE_DECODE = Operation("dense decode", ("reference", "sdpa", "triton"), "sdpa", "sdpa", ("triton",))


def selection_backend(attention_backend: str) -> str:
    """The selector backend that goes with a resolved attention backend (``BLOCK_SPARSE.resolve``):
    the Triton selection kernels with a Triton attention backend, else the reference."""
    return "triton" if attention_backend in BLOCK_SPARSE.triton + TOKEN_SPARSE.triton else "reference"
