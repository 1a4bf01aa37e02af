"""KV-outer block-sparse attention backward (block-owned, SPEC "KV-outer").

A program owns one K/V block of one (batch, selection head) and a run of the queries that
chose it, as in the forward (``QueryLists``). It loads the block once and loops over tiles
of its queries (``QT`` tokens x ``HPR`` heads in the MMA rows), recomputing the
probabilities from the forward's final LSE:

    p = exp(q·k·scale − lse),  dv += pᵀ·do,  ds = p ∘ (do·vᵀ − delta),
    dk += dsᵀ·q·scale,          dq += ds·k·scale,       delta = rowsum(do ∘ o).

dK/dV accumulate in registers over the program's queries; dQ of a query gets one
contribution per selected block. Two ways to sum them:

- fast (default): float32 ``atomic_add`` into dQ, and into dK/dV (heavily chosen blocks are
  split over programs, and MoBA's per-head selections share a KV head); the order of the
  additions varies from run to run, so the last bits of the gradients do too;
- ``deterministic=True``: no atomics. Every (query, slot, head) writes its dQ contribution to
  its own row of a partial buffer (like the forward's partial outputs) that is then summed
  over the slots in a fixed order; lists are not split, so each (block, selection head) has
  one owner that writes its dK/dV rows, summed over a KV head's selection heads in a fixed
  order. Bitwise reproducible; it costs ``top_k`` float32 copies of dQ in memory and loses
  the split work items' load balance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from .kv_outer import Launch
from .query_lists import build_query_lists
from .runtime import dot_pad, dot_precision, next_pow2
from .tiles import load_rows, work_item


@triton.jit
def _kv_outer_bwd(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    query_ptr, slot_ptr, work_list_ptr, work_start_ptr, work_count_ptr,
    N, HS, NB, scale,
    sqb, sqn, sqh, skb, skn, skh, sdob, sdon, sdoh, sLb, sLh, sLn,
    sdqb, sdqn, sdqk, sdqh, sdkb, sdkn, sdkh,
    G: tl.constexpr, HPR: tl.constexpr, QT: tl.constexpr, M: tl.constexpr,
    BS: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    KEYS: tl.constexpr, PRECISION: tl.constexpr, DETERMINISTIC: tl.constexpr,
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
    v = load_rows(v_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
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
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
        if DETERMINISTIC:
            slot = tl.load(slot_ptr + start + e, mask=row_ok, other=0)
            dq_off = (b.to(tl.int64) * sdqb + tt[:, None] * sdqn + slot[:, None].to(tl.int64) * sdqk
                      + head[:, None] * sdqh + offs_d[None, :])
            tl.store(dq_ptr + dq_off, dq, mask=mask_qd)
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


#: Keys of a block per program (fewer split a block over programs) and warps. On an H200 at
#: MSA's config 128 keys with 8 warps beat 64 and 32 keys and 4 warps (docs/kernels.md).
KEYS_PER_PROGRAM = 128
NUM_WARPS = 8


def kv_outer_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                      dout: torch.Tensor, selection: BlockSelection, scale: float, *,
                      deterministic: bool = False, keys_per_program: int | None = None,
                      num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` in the inputs' dtypes for valid inputs: ``out`` and ``lse [B, Hq, N]``
    from the forward, ``dout`` the gradient of ``out``. Deterministic mode gives each block
    to one program (its dQ rows are per slot, so a split block would write them twice)."""
    B, N, Hq, D = q.shape
    Hkv = k.shape[2]
    Hs = selection.indices.shape[1]
    K = selection.top_k
    launch = Launch.for_rows(selection.per, Hq // Hkv)
    q, k, v, dout = (x.contiguous() for x in (q, k, v, dout))
    lse = lse.contiguous()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # [B, Hq, N]
    entries = N * K if deterministic else launch.entries  # deterministic: lists are never split
    lists = build_query_lists(selection, 0, N, entries)
    if deterministic:
        dq = torch.zeros(B, N, K, Hq, D, device=q.device, dtype=torch.float32)
        dk = torch.zeros(B, N, Hs, D, device=q.device, dtype=torch.float32)
        dv = torch.zeros_like(dk)
    else:
        dq = torch.zeros(B, N, 1, Hq, D, device=q.device, dtype=torch.float32)
        dk = torch.zeros(B, N, Hkv, D, device=q.device, dtype=torch.float32)
        dv = torch.zeros_like(dk)
    bs = selection.block_size
    keys = dot_pad(bs) if deterministic else \
        max(16, min(next_pow2(bs), keys_per_program or KEYS_PER_PROGRAM))
    if lists.num_items:
        _kv_outer_bwd[(lists.num_items, triton.cdiv(bs, keys))](
            q, k, v, dout, lse, delta, dq, dk, dv,
            lists.query, lists.slot, lists.work_list, lists.work_start, lists.work_count,
            N, Hs, -(-N // selection.block_size), scale,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2), dq.stride(3), dk.stride(0), dk.stride(1), dk.stride(2),
            G=Hq // Hkv, HPR=launch.HPR, QT=launch.QT, M=launch.M,
            BS=bs, D=D, D_PAD=dot_pad(D), KEYS=keys, PRECISION=dot_precision(q.dtype),
            DETERMINISTIC=deterministic, num_warps=num_warps or NUM_WARPS, num_stages=1,
        )
    dq = dq.sum(2)  # over slots, in slot order (a no-op copy in the fast mode)
    if deterministic:  # the selection heads of each KV head, in head order
        dk = dk.view(B, N, Hkv, Hs // Hkv, D).sum(3)
        dv = dv.view(B, N, Hkv, Hs // Hkv, D).sum(3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class KVOuterAttention(torch.autograd.Function):
    """KV-outer forward and backward as one differentiable op: ``apply(q, k, v, selection,
    scale, deterministic) -> (out, lse)``. The selection is not differentiable (top-k)."""

    @staticmethod
    def forward(ctx, q, k, v, selection, scale, deterministic):
        from .kv_outer import kv_outer_attention

        out, lse = kv_outer_attention(q, k, v, selection, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.selection, ctx.scale, ctx.deterministic = selection, scale, deterministic
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = kv_outer_backward(q, k, v, out, lse, dout, ctx.selection, ctx.scale,
                                       deterministic=ctx.deterministic)
        return dq, dk, dv, None, None, None
