"""KV-outer block-sparse attention backward (block-owned, SPEC "KV-outer").

A program owns one K/V block of one (batch, selection head) and a run of the queries that
chose it, as in the forward (``QueryLists``). It loads the block once and loops over tiles
of its queries (``QT`` tokens x ``HPR`` heads in the MMA rows), recomputing the
probabilities from the forward's final LSE:

    p = exp(q·k·scale − lse),  dv += pᵀ·do,  ds = p ∘ (do·vᵀ − delta),
    dk += dsᵀ·q·scale,          dq += ds·k·scale,       delta = rowsum(do ∘ o).

dK/dV accumulate in registers over the program's queries; dQ of a query gets one
contribution per selected block. Each (query, slot, head) writes its contribution to its own
row of a partial buffer, like the forward's partial outputs, and a second kernel sums a
query's valid slots in slot order: no atomics on dQ, and in bfloat16 for bfloat16 inputs
(half the bytes of float32 atomics, which read and write every element; fp16 and fp32
inputs keep float32 partials, since fp16's range could flush small contributions). As in
the forward, queries are processed in chunks whose partials fit the ``partial_bytes`` kernel
setting. Only a block split over programs by keys (a block above the ``backward_keys_per_program``
setting) in the fast mode adds its dQ by float32 ``atomic_add`` into one buffer instead: its
programs share the (query, slot).
dK/dV two ways:

- fast (default): float32 ``atomic_add`` (heavily chosen blocks are split over programs,
  and MoBA's per-head selections share a KV head); the order of the additions varies from
  run to run, so the last bits of dK/dV (and of dQ, for split blocks) do too;
- ``deterministic=True``: lists are not split, so each (block key part, selection head) has
  one owner per query chunk that writes its dK/dV rows, summed over a KV head's selection
  heads and over the chunks in a fixed order; a block above ``backward_keys_per_program`` keys
  gives each key part its own dQ partial row per (query, slot), summed in part order. Bitwise
  reproducible for a given chunking, so its chunks are sized from the device's total memory,
  never from what is free (``kv_outer.partial_budget``): the same inputs on the same GPU
  model give the same bits; it loses the split work items' load balance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from .kv_outer import Launch, chunk_rows, empty_partials
from ..kv_outer_plan import KVOuterPlan, query_lists
from ..triton_runtime import dot_pad, dot_precision, kernel_settings, next_pow2, using_kernel_settings
from ..triton_tiles import finite_part, load_rows, slot_row, work_item


@triton.jit
def _kv_outer_bwd(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    query_ptr, slot_ptr, work_list_ptr, work_start_ptr, work_count_ptr,
    N, q0, HS, NB, scale,
    sqb, sqn, sqh, skb, skn, skh, sdob, sdon, sdoh, sLb, sLh, sLn,
    sdqb, sdqn, sdqk, sdqh, sdkb, sdkn, sdkh,
    G: tl.constexpr, HPR: tl.constexpr, QT: tl.constexpr, M: tl.constexpr,
    BS: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    KEYS: tl.constexpr, PARTS: tl.constexpr, PRECISION: tl.constexpr, DQ_PER_SLOT: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    w = tl.program_id(0)
    part = tl.program_id(1)  # which KEYS keys of the block this program owns
    start, count, blk, hs, b = work_item(work_list_ptr, work_start_ptr, work_count_ptr, w, NB, HS)
    kvh = hs * HPR // G

    offs_k = part * KEYS + tl.arange(0, KEYS)
    key_pos = blk * BS + offs_k
    key_ok = (offs_k < BS) & (key_pos < N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    k = load_rows(k_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
    # K and V as the dQ and dP dots see them: a non-finite entry would reach every query of the
    # tile through 0 * NaN; the queries that see it get NaN from their scores and delta instead.
    k_dot = finite_part(k)
    v = finite_part(load_rows(v_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD))
    dk = tl.zeros([KEYS, D_PAD], tl.float32)
    dv = tl.zeros([KEYS, D_PAD], tl.float32)

    offs_m = tl.arange(0, M)
    tok = offs_m // HPR
    head = hs * HPR + offs_m % HPR
    log2e: tl.constexpr = 1.4426950408889634
    for it in range(0, count, QT):
        e = it + tok
        row_ok = (tok < QT) & (e < count)
        t = tl.load(query_ptr + start + e, mask=row_ok, other=0)
        tt = t.to(tl.int64)
        mask_qd = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + b.to(tl.int64) * sqb + tt[:, None] * sqn + head[:, None] * sqh + offs_d[None, :],
                    mask=mask_qd, other=0.0)
        do = tl.load(do_ptr + b.to(tl.int64) * sdob + tt[:, None] * sdon + head[:, None] * sdoh + offs_d[None, :],
                     mask=mask_qd, other=0.0)
        l_off = b.to(tl.int64) * sLb + head.to(tl.int64) * sLh + tt * sLn
        lse = tl.load(lse_ptr + l_off, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + l_off, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * log2e)
        visible = row_ok[:, None] & key_ok[None, :] & (key_pos[None, :] <= t[:, None])
        p = tl.where(visible, tl.exp2(s - lse[:, None] * log2e), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        # delta is NaN for a query whose output is (it sees a non-finite value, or its own q is
        # one): that row's 0 * NaN must not reach the keys it does not see, through ds or its q.
        # Rare, so the masking runs only on tiles holding such a row.
        row_bad = delta != delta
        q_dot = q
        if tl.max(row_bad.to(tl.int32), 0) > 0:
            ds = tl.where(visible, ds, 0.0)
            q_dot = tl.where(row_bad[:, None], tl.zeros_like(q), q)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q_dot, input_precision=PRECISION)
        dq = tl.dot(ds.to(k.dtype), k_dot, input_precision=PRECISION) * scale
        if DQ_PER_SLOT:  # the (query, slot, key part) row of this chunk's partial buffer
            slot = tl.load(slot_ptr + start + e, mask=row_ok, other=0)
            if PARTS > 1:  # deterministic, block split by keys: a row per part, none shared
                slot = slot * PARTS + part
            dq_off = (b.to(tl.int64) * sdqb + (tt - q0)[:, None] * sdqn + slot[:, None].to(tl.int64) * sdqk
                      + head[:, None] * sdqh + offs_d[None, :])
            tl.store(dq_ptr + dq_off, dq.to(dq_ptr.dtype.element_ty), mask=mask_qd)
        else:
            dq_off = b.to(tl.int64) * sdqb + tt[:, None] * sdqn + head[:, None] * sdqh + offs_d[None, :]
            tl.atomic_add(dq_ptr + dq_off, dq, mask=mask_qd)
    kv_mask = key_ok[:, None] & d_ok[None, :]
    # Deterministic: one owner per (block, selection head) writes its own rows; otherwise
    # split items and the selection heads of a KV head add into the same rows.
    owner = hs if DETERMINISTIC else kvh
    kv_off = b.to(tl.int64) * sdkb + key_pos[:, None].to(tl.int64) * sdkn + owner * sdkh + offs_d[None, :]
    if DETERMINISTIC:
        tl.store(dk_ptr + kv_off, dk * scale, mask=kv_mask)
        tl.store(dv_ptr + kv_off, dv, mask=kv_mask)
    else:
        tl.atomic_add(dk_ptr + kv_off, dk * scale, mask=kv_mask)
        tl.atomic_add(dv_ptr + kv_off, dv, mask=kv_mask)


@triton.jit
def _sum_slots(
    part_ptr, sel_ptr, dq_ptr,
    C, q0, HQ,
    spb, spn, spk, sph, ssb, ssh, ssn, sxb, sxn, sxh,
    K: tl.constexpr, PARTS: tl.constexpr, HB: tl.constexpr, HPR: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr,
):
    """``dq[b, q0 + i, h] = sum of part[b, i, s * PARTS + p, h]`` over the slots ``s`` that hold
    a block and their key parts ``p``, in that order (float32), for the ``HB`` heads of this
    program; unused slots are never read."""
    b, i, heads, h_ok, sel_row = slot_row(C, q0, HQ, ssb, ssh, ssn, HB, HPR)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    p_row = b.to(tl.int64) * spb + i.to(tl.int64) * spn + heads[:, None] * sph + offs_d[None, :]
    acc = tl.zeros([HB, D_PAD], tl.float32)
    for s in range(K):
        ok = h_ok & (tl.load(sel_ptr + sel_row + s, mask=h_ok, other=-1) >= 0)
        for p in range(PARTS):
            acc += tl.load(part_ptr + p_row + (s * PARTS + p) * spk, mask=ok[:, None] & d_ok[None, :],
                           other=0.0).to(tl.float32)
    x_off = b.to(tl.int64) * sxb + (q0 + i).to(tl.int64) * sxn + heads[:, None] * sxh + offs_d[None, :]
    tl.store(dq_ptr + x_off, acc.to(dq_ptr.dtype.element_ty), mask=h_ok[:, None] & d_ok[None, :])


def kv_outer_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                      dout: torch.Tensor, selection: BlockSelection, scale: float, *,
                      deterministic: bool = False, keys_per_program: int | None = None,
                      num_warps: int | None = None, query_chunk: int | None = None,
                      plan: KVOuterPlan | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` in the inputs' dtypes for valid inputs: ``out`` and ``lse [B, Hq, N]``
    from the forward, ``dout`` the gradient of ``out``. ``query_chunk``: query rows per
    chunk of dQ partials (default: as many as the partial budget holds; unused when a block
    is split over programs by keys, whose dQ goes by atomics in one pass)."""
    B, N, Hq, D = q.shape
    Hkv = k.shape[2]
    Hs = selection.indices.shape[1]
    K = selection.top_k
    bs = selection.block_size
    launch = Launch.for_rows(selection.per, Hq // Hkv)
    q, k, v, dout = (x.contiguous() for x in (q, k, v, dout))
    lse = lse.contiguous()
    sel = selection.indices.contiguous()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # [B, Hq, N]
    # Deterministic: lists never split, and a block above backward_keys_per_program keys is split
    # into key parts whose dQ goes to a partial row each (slot * parts + part), summed in order.
    settings = kernel_settings()
    if deterministic:
        keys = min(dot_pad(bs), settings.backward_keys_per_program)
    else:
        keys = max(16, min(next_pow2(bs), keys_per_program or settings.backward_keys_per_program))
    parts = triton.cdiv(bs, keys)
    per_slot = deterministic or parts == 1
    part_rows = parts if deterministic else 1  # dQ partial rows per (query, slot)
    entries = N * K if deterministic else launch.entries
    if per_slot:
        part_dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
        C = min(N, query_chunk or chunk_rows(B, N, K * part_rows, Hq, D, part_dtype, q.device,
                                             reproducible=deterministic))
        dq = torch.empty_like(q)
        dq_part = empty_partials(B, C, K * part_rows, Hq, D, dtype=part_dtype, device=q.device)
    else:  # a block's key parts add into the same (query, slot): one float32 dQ, by atomics
        C = N
        dq_part = torch.zeros(B, N, 1, Hq, D, device=q.device, dtype=torch.float32)
    dk = torch.zeros(B, N, Hs if deterministic else Hkv, D, device=q.device, dtype=torch.float32)
    dv = torch.zeros_like(dk)
    # Deterministic over several chunks: a block's owner in a chunk stores its rows into
    # buffers of that chunk, and the chunks are summed in order.
    per_chunk = deterministic and C < N
    dk_chunk, dv_chunk = (torch.empty_like(dk), torch.empty_like(dv)) if per_chunk else (dk, dv)
    HB = min(16, next_pow2(Hq))
    # The forward's query ranges, cut to C rows, re-cut its lists; the deterministic backward
    # keeps its own reproducible chunks (the forward's follow the free memory).
    if deterministic or plan is None:
        chunks = [(q0, min(N, q0 + C)) for q0 in range(0, N, C)]
    else:
        chunks = [(q0, min(r1, q0 + C)) for r0, r1 in plan.ranges() for q0 in range(r0, r1, C)]
    for q0, q1 in chunks:
        lists = query_lists(selection, plan, q0, q1, entries)
        # Causal attention gives keys from q1 on nothing in this chunk: those rows are left out.
        if per_chunk:
            dk_chunk[:, :q1].zero_()
            dv_chunk[:, :q1].zero_()
        if lists.num_items:
            _kv_outer_bwd[(lists.num_items, parts)](
                q, k, v, dout, lse, delta, dq_part, dk_chunk, dv_chunk,
                lists.query, lists.slot, lists.work_list, lists.work_start, lists.work_count,
                N, q0, Hs, -(-N // bs), scale,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                dout.stride(0), dout.stride(1), dout.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
                *dq_part.stride()[:4], dk.stride(0), dk.stride(1), dk.stride(2),
                G=Hq // Hkv, HPR=launch.HPR, QT=launch.QT, M=launch.M,
                BS=bs, D=D, D_PAD=dot_pad(D), KEYS=keys, PARTS=part_rows, PRECISION=dot_precision(q.dtype),
                DQ_PER_SLOT=per_slot, DETERMINISTIC=deterministic, num_warps=num_warps or settings.backward_num_warps, num_stages=1,
            )
        if per_chunk:
            dk[:, :q1] += dk_chunk[:, :q1]
            dv[:, :q1] += dv_chunk[:, :q1]
        if per_slot:
            _sum_slots[(B * (q1 - q0), triton.cdiv(Hq, HB))](
                dq_part, sel, dq, q1 - q0, q0, Hq,
                *dq_part.stride()[:4], sel.stride(0), sel.stride(1), sel.stride(2),
                dq.stride(0), dq.stride(1), dq.stride(2),
                K=K, PARTS=part_rows, HB=HB, HPR=launch.HPR, D=D, D_PAD=dot_pad(D),
            )
    if not per_slot:
        dq = dq_part[:, :, 0].to(q.dtype)
    if deterministic:  # the selection heads of each KV head, in head order
        dk = dk.view(B, N, Hkv, Hs // Hkv, D).sum(3)
        dv = dv.view(B, N, Hkv, Hs // Hkv, D).sum(3)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


class KVOuterAttention(torch.autograd.Function):
    """KV-outer forward and backward as one differentiable op: ``apply(q, k, v, selection,
    scale, deterministic, plan) -> (out, lse)`` (``plan``: a ``KVOuterPlan`` or None). The
    selection is not differentiable (top-k)."""

    @staticmethod
    def forward(ctx, q, k, v, selection, scale, deterministic, plan):
        from .kv_outer import kv_outer_attention

        # The backward re-cuts the forward's query lists: the caller's plan (shared with the
        # index KL), or one of this op's own.
        plan = plan if plan is not None else KVOuterPlan(selection)
        out, lse = kv_outer_attention(q, k, v, selection, scale, plan=plan)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.selection, ctx.scale, ctx.deterministic, ctx.plan = selection, scale, deterministic, plan
        # CUDA backward passes run on autograd's device thread, which does not see the caller's
        # context variables: the backward runs with the kernel settings its forward ran with.
        ctx.settings = kernel_settings()
        ctx.selection_version = selection.indices_version()
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if ctx.selection.indices_version() != ctx.selection_version:
            raise RuntimeError("the selection's indices were changed in place between the forward and the "
                               "backward pass; the gradients would not match the forward's output")
        with using_kernel_settings(ctx.settings):
            dq, dk, dv = kv_outer_backward(q, k, v, out, lse, dout, ctx.selection, ctx.scale,
                                           deterministic=ctx.deterministic, plan=ctx.plan)
        ctx.plan = None  # its lists are done with (a retained graph's second backward builds anew)
        return dq, dk, dv, None, None, None, None
