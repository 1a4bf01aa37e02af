"""Q-outer block-sparse attention forward (the NSA / FlashMoBA / vLLM-MSA design), the
ablation partner of the KV-outer kernel.

A program owns one query token and one selection row: the ``G`` query heads of a KV group
(per-group selections) or one query head (per-head selections), padded to 16 MMA rows. It
walks the <= top_k blocks of its row (a block above 128 keys in key sub-tiles, as
``triton_runtime.key_tile`` sizes them) with an online softmax and writes the output and LSE
directly (no partials, no merge). Every program re-reads its K/V blocks, and small groups
leave most MMA rows empty: that is the cost this design pays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from ..triton_runtime import dot_pad, dot_precision, key_tile
from ..triton_tiles import load_rows

NUM_WARPS = 4


@triton.jit
def _attend_keys(q, k_ptr, v_ptr, b, first_key, t, kvh, skb, skn, skh, m_i, l_i, acc, scale, KEY_LIMIT,
                 KT: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                 PRECISION: tl.constexpr):
    """``(m_i, l_i, acc)`` after the online-softmax step over the ``KT`` keys from
    ``first_key`` that are at most ``t`` and fewer than ``KEY_LIMIT`` past ``first_key``."""
    offs_k = tl.arange(0, KT)
    key_pos = first_key + offs_k
    key_ok = (offs_k < KEY_LIMIT) & (key_pos <= t)
    k = load_rows(k_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
    v = load_rows(v_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
    sc = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    sc = tl.where(key_ok[None, :], sc, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(sc, 1))
    alpha = tl.exp(m_i - m_new)  # m_new is finite: the block's first sub-tile has a visible key
    p = tl.exp(sc - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _q_outer_fwd(
    q_ptr, k_ptr, v_ptr, sel_ptr, out_ptr, lse_ptr,
    N, HS, scale,
    sqb, sqn, sqh, skb, skn, skh, ssb, ssh, ssn, sxb, sxn, sxh, sLb, sLh,
    G: tl.constexpr, HPR: tl.constexpr, M: tl.constexpr, K: tl.constexpr,
    BS: tl.constexpr, KT: tl.constexpr, KEY_TILES: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    t = tl.program_id(0)
    hs = tl.program_id(1)
    b = tl.program_id(2)
    kvh = hs * HPR // G
    offs_m = tl.arange(0, M)
    row_ok = offs_m < HPR
    head = hs * HPR + offs_m
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    q_off = b.to(tl.int64) * sqb + t.to(tl.int64) * sqn + head[:, None] * sqh + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([M], float("-inf"), tl.float32)
    l_i = tl.zeros([M], tl.float32)
    acc = tl.zeros([M, D_PAD], tl.float32)
    sel_row = sel_ptr + b.to(tl.int64) * ssb + hs.to(tl.int64) * ssh + t.to(tl.int64) * ssn
    for s in range(K):
        blk = tl.load(sel_row + s)
        if blk >= 0:
            if KEY_TILES == 1:  # the whole block in one tile
                m_i, l_i, acc = _attend_keys(q, k_ptr, v_ptr, b, blk * BS, t, kvh, skb, skn, skh, m_i, l_i, acc,
                                             scale, BS, KT, D, D_PAD, PRECISION)
            else:  # a larger block: its sub-tiles up to the query's own position
                for j in range(0, tl.minimum(KEY_TILES, (t - blk * BS) // KT + 1)):
                    m_i, l_i, acc = _attend_keys(q, k_ptr, v_ptr, b, blk * BS + j * KT, t, kvh, skb, skn, skh,
                                                 m_i, l_i, acc, scale, BS - j * KT, KT, D, D_PAD, PRECISION)
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    x_off = b.to(tl.int64) * sxb + t.to(tl.int64) * sxn + head[:, None] * sxh + offs_d[None, :]
    tl.store(out_ptr + x_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(lse_ptr + b.to(tl.int64) * sLb + head.to(tl.int64) * sLh + t, lse, mask=row_ok)


def q_outer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      selection: BlockSelection, scale: float, *, num_warps: int = NUM_WARPS):
    """``(out [B, N, Hq, D] in q.dtype, lse [B, Hq, N] float32)`` for valid inputs."""
    B, N, Hq, D = q.shape
    G = Hq // k.shape[2]
    HPR = G if selection.per == "group" else 1
    q, k, v = (x.contiguous() for x in (q, k, v))
    sel = selection.indices.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
    bs = selection.block_size
    keys = key_tile(bs, D, q.dtype)
    _q_outer_fwd[(N, sel.shape[1], B)](
        q, k, v, sel, out, lse,
        N, sel.shape[1], scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        sel.stride(0), sel.stride(1), sel.stride(2), out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        G=G, HPR=HPR, M=dot_pad(HPR), K=selection.top_k,
        BS=bs, KT=keys, KEY_TILES=triton.cdiv(bs, keys), D=D, D_PAD=dot_pad(D),
        PRECISION=dot_precision(q.dtype), num_warps=num_warps,
    )
    return out, lse
