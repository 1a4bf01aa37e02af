"""Dense FlashAttention-style forward in Triton: the same-family baseline of the sparse
kernels (``full_attention(backend="triton")``).

A program owns ``BM`` query rows of one head and streams the keys of its KV head in ``BN``
tiles with an online softmax (exp2, log2(e) folded into the scale). Key tiles every row of
the program may see run unmasked; the diagonal tiles and the last partial tile are masked.
Causal masking is bottom-right aligned (query ``i`` sits at ``Nk - Nq + i``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_runtime import dot_pad, dot_precision
from ..triton_tiles import finite_values, load_rows, sees_any

BLOCK_M = 128
BLOCK_N = 64
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _attend_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, b, kvh, skb, skn, skh, pos, lo, hi, Nk, qk_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, BN: tl.constexpr,
                  D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr):
    for n0 in range(lo, hi, BN):
        key = n0 + tl.arange(0, BN)
        key_ok = key < Nk
        k = load_rows(k_ptr, b, key, kvh, skb, skn, skh, key_ok, D, D_PAD)
        v = load_rows(v_ptr, b, key, kvh, skb, skn, skh, key_ok, D, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            allowed = key_ok[None, :]
            if CAUSAL:
                allowed = allowed & (key[None, :] <= pos[:, None])
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:  # rows see different keys: a non-finite value must reach only those that see it
            v, v_bad = finite_values(v)
            acc = tl.where(sees_any(allowed, v_bad)[:, None], float("nan"), acc)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _flash_fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, Nq, Nk, scale,
    sqb, sqn, sqh, skb, skn, skh, sxb, sxn, sxh, sLb, sLh,
    G: tl.constexpr, CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    h = tl.program_id(1)
    b = tl.program_id(2)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < Nq
    pos = rows + (Nk - Nq)  # key position of each query (bottom-right causal)
    q = load_rows(q_ptr, b, rows, h, sqb, sqn, sqh, row_ok, D, D_PAD)
    kvh = h // G
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D_PAD], tl.float32)
    if CAUSAL:
        first_pos = tl.program_id(0) * BM + (Nk - Nq)
        unmasked_end = tl.maximum(first_pos + 1, 0) // BN * BN  # tiles every row sees whole
        end = tl.minimum(first_pos + BM, Nk)
    else:
        unmasked_end = Nk // BN * BN
        end = Nk
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, b, kvh, skb, skn, skh, pos, 0,
                                  unmasked_end, Nk, qk_scale, False, CAUSAL, BN, D, D_PAD, PRECISION)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, b, kvh, skb, skn, skh, pos,
                                  unmasked_end, end, Nk, qk_scale, True, CAUSAL, BN, D, D_PAD, PRECISION)
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    offs_d = tl.arange(0, D_PAD)
    x_off = b.to(tl.int64) * sxb + rows[:, None].to(tl.int64) * sxn + h * sxh + offs_d[None, :]
    tl.store(out_ptr + x_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_d < D)[None, :])
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(lse_ptr + b.to(tl.int64) * sLb + h.to(tl.int64) * sLh + rows, lse, mask=row_ok)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """``(out [B, Nq, Hq, D] in q.dtype, lse [B, Hq, Nq] float32)`` for valid inputs."""
    B, Nq, Hq, D = q.shape
    Nk = k.shape[1]
    q, k, v = (x.contiguous() for x in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, Nq, device=q.device, dtype=torch.float32)
    fp32 = q.dtype == torch.float32  # float32 tiles: half the rows, no pipelining (shared memory)
    BM = BLOCK_M // 2 if fp32 else BLOCK_M
    _flash_fwd[(triton.cdiv(Nq, BM), Hq, B)](
        q, k, v, out, lse, Nq, Nk, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        G=Hq // k.shape[2], CAUSAL=causal, BM=BM, BN=BLOCK_N, D=D, D_PAD=dot_pad(D),
        PRECISION=dot_precision(q.dtype), num_warps=NUM_WARPS, num_stages=1 if fp32 else NUM_STAGES,
    )
    return out, lse
