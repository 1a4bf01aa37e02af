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


@triton.jit
def online_softmax_step(m, l, acc, s, v, PRECISION: tl.constexpr):
    """``(m, l, acc)`` after one key tile of an online softmax in the exp2 domain: ``s [rows,
    keys]`` the tile's scaled logits (-inf where masked), ``v [keys, D]`` its values. Every
    row's ``m`` must already be finite or turn finite here (a row that has seen a key)."""
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l, acc


@triton.jit
def gate_rows(q_ptr, score_ptr, q0, q1, sqb, sqn, sqh, ssb, ssh, ssn,
              BS: tl.constexpr, BM: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr):
    """The query side of a block-gate kernel (MoBA's, Quest's): a program per (``BM`` query
    rows from ``q0``, query head, batch) of a chunk ending at ``q1``. Returns ``(b, h, t,
    row_ok, q, own, last_own, out_rows)``: its rows' positions and tile, their own blocks, the
    last of those, and the score rows' pointers (``[B, heads, chunk, blocks]``)."""
    h = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = t < q1
    q = load_rows(q_ptr, b, t, h, sqb, sqn, sqh, row_ok, D, D_PAD)
    own = t // BS
    last_own = (tl.minimum(q0 + (tl.program_id(0) + 1) * BM, q1) - 1) // BS
    out_rows = score_ptr + b.to(tl.int64) * ssb + h.to(tl.int64) * ssh + (t - q0).to(tl.int64)[:, None] * ssn
    return b, h, t, row_ok, q, own, last_own, out_rows
