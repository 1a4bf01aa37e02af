"""Token-gather sparse attention (DSA; the FlashMLA-sparse design): a program owns one query
token and one KV head, the ``G`` query heads of its group packed into the MMA rows (padded to
16), and walks the token positions of the query's row in tiles of ``BLOCK_TOKENS``, gathering
those K/V rows with an online softmax. The selection is shared by every head, so the group's heads
share each gathered row; a tile whose slots are all unused (``-1``, e.g. the tail of a short row) is
skipped after reading its ids. Programs run query-fastest, so neighbouring queries, which pick
mostly the same tokens, read them from L2 together.

Backward: a program per (query, KV head) recomputes its probabilities from the saved LSE, writes
dQ, and adds its dK/dV contributions to float32 buffers with atomics (a token is read by every
query that picked it: a scatter). The atomics make dK/dV's summation order, and so their last
bits, vary between runs; dQ is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import TokenSelection
from ..triton_runtime import dot_pad, dot_precision

BLOCK_TOKENS = 64
NUM_WARPS = 4


@triton.jit
def _token_rows(ptr, b, ids, head, sb, sn, sh, ok, D: tl.constexpr, D_PAD: tl.constexpr):
    """``[len(ids), D_PAD]`` gathered rows ``ptr[b, ids, head, :D]``; unused slots read as zero."""
    offs_d = tl.arange(0, D_PAD)
    offs = b.to(tl.int64) * sb + ids[:, None].to(tl.int64) * sn + head * sh + offs_d[None, :]
    return tl.load(ptr + offs, mask=ok[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _group_rows(ptr, b, t, kvh, sb, sn, sh, G: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
                D_PAD: tl.constexpr):
    """``[M, D_PAD]`` tile of the ``G`` query heads of KV head ``kvh`` at token ``t`` (rows past
    ``G`` read as zero), and the offsets to store such a tile back."""
    heads = kvh * G + tl.arange(0, M)
    offs_d = tl.arange(0, D_PAD)
    offs = b.to(tl.int64) * sb + t.to(tl.int64) * sn + heads[:, None].to(tl.int64) * sh + offs_d[None, :]
    mask = (tl.arange(0, M) < G)[:, None] & (offs_d < D)[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0), offs, mask


@triton.jit
def _token_gather_fwd(
    q_ptr, k_ptr, v_ptr, sel_ptr, out_ptr, lse_ptr, scale,
    sqb, sqn, sqh, skb, skn, skh, ssb, ssn, sob, son, soh, sLb, sLh,
    K: tl.constexpr, G: tl.constexpr, M: tl.constexpr, BT: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    q, _, _ = _group_rows(q_ptr, b, t, kvh, sqb, sqn, sqh, G, M, D, D_PAD)
    qk_scale = scale * 1.4426950408889634  # exp2 domain
    m_i = tl.full([M], float("-inf"), tl.float32)
    l_i = tl.zeros([M], tl.float32)
    acc = tl.zeros([M, D_PAD], tl.float32)
    row = sel_ptr + b.to(tl.int64) * ssb + t.to(tl.int64) * ssn
    for s0 in range(0, K, BT):
        slot = s0 + tl.arange(0, BT)
        ids = tl.load(row + slot, mask=slot < K, other=-1)
        if tl.max(ids, 0) >= 0:
            ok = ids >= 0
            k = _token_rows(k_ptr, b, ids, kvh, skb, skn, skh, ok, D, D_PAD)
            v = _token_rows(v_ptr, b, ids, kvh, skb, skn, skh, ok, D, D_PAD)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)  # m_new is finite: the tile has a used slot
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    _, offs, mask = _group_rows(out_ptr, b, t, kvh, sob, son, soh, G, M, D, D_PAD)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    heads = kvh * G + tl.arange(0, M)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(lse_ptr + b.to(tl.int64) * sLb + heads.to(tl.int64) * sLh + t, lse, mask=tl.arange(0, M) < G)


@triton.jit
def _token_gather_bwd(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, sel_ptr, dq_ptr, dk_ptr, dv_ptr, scale,
    sqb, sqn, sqh, skb, skn, skh, ssb, ssn, sLb, sLh, sab, san, sah,
    K: tl.constexpr, G: tl.constexpr, M: tl.constexpr, BT: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    q, q_offs, q_mask = _group_rows(q_ptr, b, t, kvh, sqb, sqn, sqh, G, M, D, D_PAD)
    do, _, _ = _group_rows(do_ptr, b, t, kvh, sqb, sqn, sqh, G, M, D, D_PAD)
    heads = kvh * G + tl.arange(0, M)
    head_ok = tl.arange(0, M) < G
    stat = b.to(tl.int64) * sLb + heads.to(tl.int64) * sLh + t
    lse = tl.load(lse_ptr + stat, mask=head_ok, other=float("-inf")) * 1.4426950408889634
    lse = tl.where(lse > float("-inf"), lse, float("inf"))  # a row that saw nothing: p = 0
    delta = tl.load(delta_ptr + stat, mask=head_ok, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([M, D_PAD], tl.float32)
    row = sel_ptr + b.to(tl.int64) * ssb + t.to(tl.int64) * ssn
    offs_d = tl.arange(0, D_PAD)
    for s0 in range(0, K, BT):
        slot = s0 + tl.arange(0, BT)
        ids = tl.load(row + slot, mask=slot < K, other=-1)
        if tl.max(ids, 0) >= 0:
            ok = ids >= 0
            k = _token_rows(k_ptr, b, ids, kvh, skb, skn, skh, ok, D, D_PAD)
            v = _token_rows(v_ptr, b, ids, kvh, skb, skn, skh, ok, D, D_PAD)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.where(ok[None, :], tl.exp2(s - lse[:, None]), 0.0)  # [M, BT]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            acc_offs = b.to(tl.int64) * sab + ids[:, None].to(tl.int64) * san + kvh * sah + offs_d[None, :]
            acc_mask = ok[:, None] & (offs_d < D)[None, :]
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            tl.atomic_add(dv_ptr + acc_offs, dv, mask=acc_mask, sem="relaxed")
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * scale
            tl.atomic_add(dk_ptr + acc_offs, dk, mask=acc_mask, sem="relaxed")
    tl.store(dq_ptr + q_offs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


def _launch_shape(q: torch.Tensor, k: torch.Tensor):
    B, N, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv
    return (N, Hkv, B), dict(G=G, M=dot_pad(G), BT=BLOCK_TOKENS, D=D, D_PAD=dot_pad(D),
                             PRECISION=dot_precision(q.dtype), num_warps=NUM_WARPS)


def token_gather_forward(q, k, v, selection: TokenSelection, scale: float):
    """``(out [B, N, Hq, D] in q.dtype, lse [B, Hq, N] float32)`` of contiguous valid inputs."""
    B, N, Hq, D = q.shape
    sel = selection.indices
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
    grid, meta = _launch_shape(q, k)
    _token_gather_fwd[grid](
        q, k, v, sel, out, lse, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        sel.stride(0), sel.stride(2), out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        K=selection.top_k, **meta)
    return out, lse


class TokenGatherAttention(torch.autograd.Function):
    """Token-gather attention with its backward kernel (dK/dV by float32 atomics)."""

    @staticmethod
    def forward(ctx, q, k, v, selection: TokenSelection, scale: float):
        q, k, v = (x.contiguous() for x in (q, k, v))
        sel = selection.indices.contiguous()
        selection = TokenSelection._trusted(sel)
        out, lse = token_gather_forward(q, k, v, selection, scale)
        ctx.save_for_backward(q, k, v, sel, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, sel, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        delta = torch.einsum("bnhd,bnhd->bhn", dout.float(), out.float()).contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        grid, meta = _launch_shape(q, k)
        _token_gather_bwd[grid](
            q, k, v, dout, lse, delta, sel, dq, dk, dv, ctx.scale,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            sel.stride(0), sel.stride(2), lse.stride(0), lse.stride(1), dk.stride(0), dk.stride(1), dk.stride(2),
            K=sel.shape[-1], **meta)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def token_gather_attention(q, k, v, selection: TokenSelection, scale: float):
    """``(out, lse)`` over ``selection``'s tokens; differentiable in q, k, v (under grad)."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        return TokenGatherAttention.apply(q, k, v, selection, scale)
    q, k, v = (x.contiguous() for x in (q, k, v))
    return token_gather_forward(q, k, v, TokenSelection._trusted(selection.indices.contiguous()), scale)
