"""Triton kernels, imported lazily by the backends. ``TRITON_INTERPRET=1`` must be set
before this package is first imported for the kernels to run on the CPU: the interpreter is
chosen when a kernel is defined, so every kernel module is defined here, at once."""

from . import decode, flash, kv_outer, q_outer  # noqa: F401
