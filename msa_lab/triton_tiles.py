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


@triton.jit
def work_item(work_list_ptr, work_start_ptr, work_count_ptr, w, NB, HS):
    """``(start, count, block, head, batch)`` of work item ``w`` of the query lists
    (``build_query_lists``): a run of the queries that chose one block of one (batch,
    selection head)."""
    lst = tl.load(work_list_ptr + w)
    start = tl.load(work_start_ptr + w)
    count = tl.load(work_count_ptr + w)
    return start, count, lst % NB, (lst // NB) % HS, lst // NB // HS


@triton.jit
def slot_row(C, q0, HQ, ssb, ssh, ssn, HB: tl.constexpr, HPR: tl.constexpr):
    """``(b, i, heads, heads_ok, sel_row)`` of a program that reduces the slots of query row
    ``q0 + i`` of batch ``b`` for ``HB`` heads (grid ``(B * C, cdiv(HQ, HB))``); ``sel_row``
    points at the row's block ids in the selection (slot ``s`` at ``+ s``)."""
    r = tl.program_id(0)
    b = r // C
    i = r % C
    heads = tl.program_id(1) * HB + tl.arange(0, HB)
    heads_ok = heads < HQ
    sel_row = b.to(tl.int64) * ssb + (heads // HPR).to(tl.int64) * ssh + (q0 + i).to(tl.int64) * ssn
    return b, i, heads, heads_ok, sel_row


@triton.jit
def finite_part(x):
    """``x`` with its non-finite entries zeroed. A tile entering a dot beside masked rows or
    keys is cleaned so that a NaN or inf there cannot reach them through ``0 * NaN``."""
    return tl.where(tl.abs(x) < float("inf"), x, tl.zeros_like(x))


@triton.jit
def finite_values(v):
    """``(finite_part(v), bad [keys])`` of a ``[keys, D]`` value tile, ``bad`` 1 for the keys
    whose value holds a non-finite entry (0 elsewhere), for ``sees_any``."""
    return finite_part(v), tl.max(tl.where(tl.abs(v) < float("inf"), 0, 1), 1)


@triton.jit
def sees_any(visible, bad):
    """``[rows]``: True where a row of ``visible [rows, keys]`` sees a key flagged in ``bad``.
    Its output is set to NaN: the zeroed value alone would leave it finite and wrong."""
    return tl.max(tl.where(visible, bad[None, :], 0), 1) > 0
