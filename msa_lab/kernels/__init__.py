"""Triton kernels. Import lazily: ``TRITON_INTERPRET=1`` must be set before this package is
first imported for the kernels to run on the CPU (the interpreter is chosen when a kernel
is defined)."""
