"""MSA's index KL loss over the selected tokens, fused (SPEC, "Training the index branch").

For every (batch ``b``, KV group ``g``, query ``i``), ``T_i`` = the visible tokens of the blocks
in the selection row. Teacher ``p_t = mean_h exp(q_h·k_t·scale − lse_h)`` over the group's
query heads, ``lse_h`` the main sparse attention's LSE over ``T_i``; student
``log s_t = z_t − Z`` with ``z_t = index_q·index_k_t·Di**-0.5`` and ``Z`` its logsumexp over
``T_i``. Loss: ``sum_t p_t (log p_t − log s_t)`` averaged over (b, i, g); its gradient in the
logits is ``(s_t − p_t) / (B·N·Hkv)``.

Two KV-outer passes over the same query lists (``QueryLists``: a program owns one block of
one (batch, group), loads its keys and index keys once, and loops over tiles of the queries
that chose it):

1. ``_lse_partials``: per (query, slot) the partial LSE of the student and, unless the caller
   has the main attention's LSE, of every teacher head; torch merges them over the slots.
2. ``_kl_and_grads``: per tile the teacher ``p`` (one ``QKᵀ`` per head of the group, summed
   in float32), the student, the KL terms (summed per program, no atomics), and the logit
   gradient; d index_q gets one float32 ``atomic_add`` per (query, slot), d index_k
   accumulates in registers over the program's queries and is added once per program
   (split work items and the groups share the index keys).

Tiles are query tokens, not (token, head) rows as in the attention kernels: the teacher is a
sum over the heads of a token, a register add when a tile's rows are tokens, and the
student's logits and gradients are per token too.

The loss is a scalar: ``IndexKL`` computes the gradients in its forward pass and scales
them by grad_output in backward. The atomics make the last bits of the gradients vary from
run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..selection import BlockSelection
from .kv_outer import ROWS_PER_ITEM
from ..kv_outer_plan import KVOuterPlan, query_lists
from ..triton_runtime import dot_pad, dot_precision
from ..triton_tiles import load_rows, work_item

LOG2E = tl.constexpr(1.4426950408889634)  # exp2 domain: exp(x) = exp2(x * log2(e))
LN2 = tl.constexpr(0.6931471805599453)

#: (query tokens per tile, warps) of pass 1 ("lse") and pass 2 ("kl"), by the index inputs'
#: element size: their dots run on the tensor cores in 16 bits and on the FMA units in float32,
#: which want other tiles. The fastest of ``experiments/bench_index_kl.py``'s tile sweep on an H200
#: at 32K, MSA's config, bf16 q/k (``bench_index_kl_tiles_32k_h200.json``): the whole loss +
#: gradients took 28.3 ms with pass 2 at 32 x 4 where 16 x 16 took 38.6 (bf16 index inputs), but
#: 330 ms at 32 x 4 with float32 ones.
TILES = {2: {"lse": (32, 4), "kl": (32, 4)},
         4: {"lse": (16, 8), "kl": (32, 8)}}


@triton.jit
def _row_lse(s2, visible):
    """Natural-log LSE of each row of ``s2`` (log2 units) over its visible entries;
    ``-inf`` where none is visible."""
    s2 = tl.where(visible, s2, float("-inf"))
    m = tl.max(s2, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp2(s2 - m[:, None]), 1)
    return tl.where(total > 0, (m + tl.log2(tl.where(total > 0, total, 1.0))) * LN2, float("-inf"))


@triton.jit
def _lse_partials(
    q_ptr, k_ptr, iq_ptr, ik_ptr, t_part_ptr, s_part_ptr,
    query_ptr, slot_ptr, work_list_ptr, work_start_ptr, work_count_ptr,
    N, HKV, NB, scale, index_scale,
    sqb, sqn, sqh, skb, skn, skh, siqb, siqn, siqh, sikb, sikn,
    stb, stn, stk, ssb, ssn, ssk,
    G: tl.constexpr, QT: tl.constexpr, BS: tl.constexpr, BS_PAD: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    TEACHER: tl.constexpr, PRECISION: tl.constexpr, INDEX_PRECISION: tl.constexpr,
):
    w = tl.program_id(0)
    start, count, blk, g, b = work_item(work_list_ptr, work_start_ptr, work_count_ptr, w, NB, HKV)

    offs_k = tl.arange(0, BS_PAD)
    key_pos = blk * BS + offs_k
    key_ok = (offs_k < BS) & (key_pos < N)
    ik = load_rows(ik_ptr, b, key_pos, 0, sikb, sikn, 0, key_ok, DI, DI_PAD)
    k = load_rows(k_ptr, b, key_pos, g, skb, skn, skh, key_ok, D, D_PAD)
    offs_q = tl.arange(0, QT)
    for it in range(0, count, QT):
        e = it + offs_q
        row_ok = e < count
        t = tl.load(query_ptr + start + e, mask=row_ok, other=0)
        slot = tl.load(slot_ptr + start + e, mask=row_ok, other=0).to(tl.int64)
        tt = t.to(tl.int64)
        visible = row_ok[:, None] & key_ok[None, :] & (key_pos[None, :] <= t[:, None])
        iq = load_rows(iq_ptr, b, t, g, siqb, siqn, siqh, row_ok, DI, DI_PAD)
        z = tl.dot(iq, tl.trans(ik), input_precision=INDEX_PRECISION) * (index_scale * LOG2E)
        tl.store(s_part_ptr + b.to(tl.int64) * ssb + tt * ssn + slot * ssk + g, _row_lse(z, visible),
                 mask=row_ok)
        if TEACHER:
            for h in range(G):
                head = g * G + h
                q = load_rows(q_ptr, b, t, head, sqb, sqn, sqh, row_ok, D, D_PAD)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * LOG2E)
                tl.store(t_part_ptr + b.to(tl.int64) * stb + tt * stn + slot * stk + head, _row_lse(s, visible),
                         mask=row_ok)


@triton.jit
def _kl_and_grads(
    q_ptr, k_ptr, iq_ptr, ik_ptr, lse_ptr, zlse_ptr, kl_ptr, diq_ptr, dik_ptr,
    query_ptr, work_list_ptr, work_start_ptr, work_count_ptr,
    N, HKV, NB, scale, index_scale, grad_scale,
    sqb, sqn, sqh, skb, skn, skh, siqb, siqn, siqh, sikb, sikn,
    sLb, sLh, sLn, szb, szn, szh, sdqb, sdqn, sdqh, sdkb, sdkn,
    G: tl.constexpr, QT: tl.constexpr, BS: tl.constexpr, BS_PAD: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    PRECISION: tl.constexpr, INDEX_PRECISION: tl.constexpr,
):
    w = tl.program_id(0)
    start, count, blk, g, b = work_item(work_list_ptr, work_start_ptr, work_count_ptr, w, NB, HKV)

    offs_k = tl.arange(0, BS_PAD)
    key_pos = blk * BS + offs_k
    key_ok = (offs_k < BS) & (key_pos < N)
    offs_di = tl.arange(0, DI_PAD)
    di_ok = offs_di < DI
    ik = load_rows(ik_ptr, b, key_pos, 0, sikb, sikn, 0, key_ok, DI, DI_PAD)
    k = load_rows(k_ptr, b, key_pos, g, skb, skn, skh, key_ok, D, D_PAD)
    dik = tl.zeros([BS_PAD, DI_PAD], tl.float32)
    kl = tl.zeros([QT], tl.float32)
    offs_q = tl.arange(0, QT)
    for it in range(0, count, QT):
        e = it + offs_q
        row_ok = e < count
        t = tl.load(query_ptr + start + e, mask=row_ok, other=0)
        tt = t.to(tl.int64)
        visible = row_ok[:, None] & key_ok[None, :] & (key_pos[None, :] <= t[:, None])
        iq = load_rows(iq_ptr, b, t, g, siqb, siqn, siqh, row_ok, DI, DI_PAD)
        zlse = tl.load(zlse_ptr + b.to(tl.int64) * szb + tt * szn + g * szh, mask=row_ok, other=0.0)
        # log2 of the student's probabilities, taken from the logits: exact where they underflow
        log_s = (tl.dot(iq, tl.trans(ik), input_precision=INDEX_PRECISION) * index_scale - zlse[:, None]) * LOG2E
        p = tl.zeros([QT, BS_PAD], tl.float32)
        for h in range(G):
            head = g * G + h
            q = load_rows(q_ptr, b, t, head, sqb, sqn, sqh, row_ok, D, D_PAD)
            lse = tl.load(lse_ptr + b.to(tl.int64) * sLb + head * sLh + tt * sLn, mask=row_ok, other=0.0)
            s = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale - lse[:, None]) * LOG2E
            p += tl.where(visible, tl.exp2(s), 0.0)
        p = p / G
        kl += tl.sum(tl.where(p > 0, p * (tl.log2(tl.where(p > 0, p, 1.0)) - log_s), 0.0), 1)  # 0 log 0 = 0
        # The unscaled logit gradient lies in [-1, 1]: safe in float16, scaled after the dots.
        dz = tl.where(visible, tl.exp2(log_s), 0.0) - p
        diq = tl.dot(dz.to(ik.dtype), ik, input_precision=INDEX_PRECISION) * grad_scale
        tl.atomic_add(diq_ptr + b.to(tl.int64) * sdqb + tt[:, None] * sdqn + g * sdqh + offs_di[None, :], diq,
                      mask=row_ok[:, None] & di_ok[None, :])
        dik += tl.dot(tl.trans(dz.to(iq.dtype)), iq, input_precision=INDEX_PRECISION)
    tl.atomic_add(dik_ptr + b.to(tl.int64) * sdkb + key_pos[:, None].to(tl.int64) * sdkn + offs_di[None, :],
                  dik * grad_scale, mask=key_ok[:, None] & di_ok[None, :])
    tl.store(kl_ptr + w, tl.sum(kl, 0) * LN2)


def index_kl(index_q: torch.Tensor, index_k: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
             selection: BlockSelection, scale: float, lse: torch.Tensor | None = None,
             plan: KVOuterPlan | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, d_index_q, d_index_k)`` for valid inputs (checked by ``index_kl_loss``):
    the loss a float32 scalar, the gradients float32 in the index tensors' shapes. ``lse
    [B, Hq, N]``: the main sparse attention's LSE (recomputed when None); ``plan``: the
    attention's, whose query lists it re-cuts."""
    B, N, Hq, D = q.shape
    Hkv, Di = k.shape[2], index_q.shape[-1]
    G, K, bs = Hq // Hkv, selection.top_k, selection.block_size
    q, k, index_q, index_k = (x.contiguous() for x in (q, k, index_q, index_k))
    lse = None if lse is None else lse.float()
    dev = q.device
    tiles = TILES[index_q.element_size()]
    (lse_tokens, lse_warps), (kl_tokens, kl_warps) = tiles["lse"], tiles["kl"]
    entries = max(kl_tokens, ROWS_PER_ITEM // G // kl_tokens * kl_tokens)
    lists = query_lists(selection, plan, 0, N, entries)
    index_scale = Di ** -0.5
    shapes = dict(G=G, BS=bs, BS_PAD=dot_pad(bs), D=D, D_PAD=dot_pad(D),
                  DI=Di, DI_PAD=dot_pad(Di), PRECISION=dot_precision(q.dtype),
                  INDEX_PRECISION=dot_precision(index_q.dtype))
    common = (N, Hkv, selection.num_blocks, scale, index_scale,
              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              index_q.stride(0), index_q.stride(1), index_q.stride(2), index_k.stride(0), index_k.stride(1))
    # Slots a row does not use stay -inf: the merge is a plain logsumexp over the slots.
    s_part = torch.full((B, N, K, Hkv), float("-inf"), device=dev)
    t_part = s_part if lse is not None else torch.full((B, N, K, Hq), float("-inf"), device=dev)
    diq = torch.zeros(B, N, Hkv, Di, device=dev)
    dik = torch.zeros(B, N, 1, Di, device=dev)
    kl = torch.zeros(max(1, lists.num_items), device=dev)
    if lists.num_items:
        _lse_partials[(lists.num_items,)](
            q, k, index_q, index_k, t_part, s_part,
            lists.query, lists.slot, lists.work_list, lists.work_start, lists.work_count,
            *common, *t_part.stride()[:3], *s_part.stride()[:3],
            QT=lse_tokens, TEACHER=lse is None, **shapes, num_warps=lse_warps, num_stages=1,
        )
    zlse = s_part.logsumexp(2)  # [B, N, Hkv]
    if lse is None:
        lse = t_part.logsumexp(2).transpose(1, 2)  # [B, Hq, N], as the attention returns it
    if lists.num_items:
        _kl_and_grads[(lists.num_items,)](
            q, k, index_q, index_k, lse, zlse, kl, diq, dik,
            lists.query, lists.work_list, lists.work_start, lists.work_count,
            *common[:5], 1.0 / (B * N * Hkv) * index_scale, *common[5:],
            *lse.stride(), *zlse.stride(), *diq.stride()[:3], *dik.stride()[:2],
            QT=kl_tokens, **shapes, num_warps=kl_warps, num_stages=1,
        )
    loss = (kl.double().sum() / (B * N * Hkv)).float()
    return loss, diq, dik


class IndexKL(torch.autograd.Function):
    """``apply(index_q, index_k, q, k, selection, scale, lse, plan) -> loss``, differentiable in
    index_q and index_k (q, k and lse are the detached teacher)."""

    @staticmethod
    def forward(ctx, index_q, index_k, q, k, selection, scale, lse, plan):
        loss, diq, dik = index_kl(index_q, index_k, q, k, selection, scale, lse, plan)
        ctx.save_for_backward(diq, dik)
        ctx.dtypes = index_q.dtype, index_k.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        diq, dik = ctx.saved_tensors
        return (diq * grad).to(ctx.dtypes[0]), (dik * grad).to(ctx.dtypes[1]), None, None, None, None, None, None
