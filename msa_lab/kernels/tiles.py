"""Device helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, b, rows, head, sb, sn, sh, row_ok, D: tl.constexpr, D_PAD: tl.constexpr):
    """``[len(rows), D_PAD]`` tile of ``ptr[b, rows, head, :D]`` (a ``[batch, seq, heads, dim]``
    tensor with unit last stride); masked rows and padded columns read as zero."""
    offs_d = tl.arange(0, D_PAD)
    offs = b.to(tl.int64) * sb + rows[:, None].to(tl.int64) * sn + head * sh + offs_d[None, :]
    return tl.load(ptr + offs, mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
