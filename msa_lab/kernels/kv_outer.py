"""KV-outer block-sparse attention forward (the MSA kernel design).

A program owns one K/V block of one (batch, selection head) and a run of the queries that
chose it (a work item of ``QueryLists``). It loads the block once, then loops over tiles of
those queries, ``QT`` tokens x ``HPR`` heads packed into the MMA rows (per-group selections
pack the group's heads: 8 tokens x 16 heads = 128 rows for MSA's config), and writes, for
every (query, head), a partial output and partial LSE into the slot of that block in the
query's selection row. The merge kernel then combines the <= top_k partials of each
(query, head) by the LSE rule. No atomics.

The partial buffer is ``top_k`` times the output, so queries are processed in chunks whose
partials fit the ``partial_bytes`` kernel setting (``triton_runtime.KernelSettings``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..selection import BlockSelection
from ..kv_outer_plan import KVOuterPlan, query_lists
from ..triton_runtime import dot_pad, dot_precision, kernel_settings, key_tile, next_pow2
from ..triton_tiles import finite_values, load_rows, online_softmax_step, slot_row, work_item

# Measured on an H200 at MSA's config (docs/kernels.md): 64-row tiles with 4 warps and no
# software pipelining beat 32/128 rows, 2/8 warps, 2-3 stages and a manual Q prefetch.
ROWS_PER_TILE = 64
ROWS_PER_ITEM = 4096
NUM_WARPS = 4
NUM_STAGES = 1
# A block walked in key sub-tiles is a flash-attention loop per query tile, where 128-row tiles,
# 8 warps and 3 stages of pipelining win (MoBA's blocks 512-4096, 16-bit tiles, H200:
# tune_kv_outer_large_blocks_h200.json, 1.8-2.1x over the block-128 settings).
WALK_ROWS_PER_TILE = 128
WALK_NUM_WARPS = 8
WALK_NUM_STAGES = 3


@triton.jit
def _key_tile(k_ptr, v_ptr, b, blk, j, kvh, N, skb, skn, skh,
              BS: tl.constexpr, KT: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr):
    """``(key_pos, key_ok, k, v, first_bad)`` of key sub-tile ``j`` (keys ``j * KT ..``) of block
    ``blk``: the values cleaned of non-finite entries (``finite_values``) and ``first_bad`` the
    position of the sub-tile's first key with a non-finite value (``N``: none)."""
    offs_k = j * KT + tl.arange(0, KT)
    key_pos = blk * BS + offs_k
    key_ok = (offs_k < BS) & (key_pos < N)
    k = load_rows(k_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
    v = load_rows(v_ptr, b, key_pos, kvh, skb, skn, skh, key_ok, D, D_PAD)
    # A non-finite value reaches only the queries that see its key (not the whole tile via 0 * NaN):
    # the values enter the dot cleaned, and the rows causally at or after the block's first bad
    # key are set to NaN. One compare per row in the loop (N: no bad key), not a pass over the tile.
    v, v_bad = finite_values(v)
    first_bad = tl.min(tl.where(key_ok & (v_bad > 0), key_pos, N), 0)
    return key_pos, key_ok, k, v, first_bad


@triton.jit
def _kv_outer_fwd(
    q_ptr, k_ptr, v_ptr, o_part_ptr, lse_part_ptr,
    query_ptr, slot_ptr, work_list_ptr, work_start_ptr, work_count_ptr,
    N, q0, HS, NB, scale,
    sqb, sqn, sqh, skb, skn, skh,
    sob, son, sok, soh, slb, sln, slk,
    G: tl.constexpr, HPR: tl.constexpr, QT: tl.constexpr, M: tl.constexpr,
    BS: tl.constexpr, KT: tl.constexpr, KEY_TILES: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    w = tl.program_id(0)
    start, count, blk, hs, b = work_item(work_list_ptr, work_start_ptr, work_count_ptr, w, NB, HS)
    kvh = hs * HPR // G
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    if KEY_TILES == 1:  # the whole block in one sub-tile, loaded once for all the program's queries
        key_pos, key_ok, k, v, first_bad = _key_tile(k_ptr, v_ptr, b, blk, 0, kvh, N, skb, skn, skh,
                                                     BS, KT, D, D_PAD)

    offs_m = tl.arange(0, M)
    tok = offs_m // HPR
    head = hs * HPR + offs_m % HPR
    qk_scale = scale * 1.4426950408889634  # exp2 domain: exp(x) = exp2(x * log2(e))
    q_row = b.to(tl.int64) * sqb + head[:, None] * sqh + offs_d[None, :]
    for it in range(0, count, QT):
        e = it + tok
        row_ok = (tok < QT) & (e < count)
        t = tl.load(query_ptr + start + e, mask=row_ok, other=0)
        slot = tl.load(slot_ptr + start + e, mask=row_ok, other=0)
        q = tl.load(q_ptr + q_row + t[:, None].to(tl.int64) * sqn, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if KEY_TILES > 1:  # a larger block: its sub-tiles are re-read (from L2) for each query tile
            key_pos, key_ok, k, v, first_bad = _key_tile(k_ptr, v_ptr, b, blk, 0, kvh, N, skb, skn, skh,
                                                         BS, KT, D, D_PAD)
        # Sub-tile 0 holds the block's first key, which every query that chose the block sees:
        # m is finite after it for every real row, so later sub-tiles rescale without a guard.
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        visible = key_ok[None, :] & (key_pos[None, :] <= t[:, None])
        s = tl.where(visible, s, float("-inf"))
        m = tl.max(s, 1)
        m = tl.where(row_ok, m, 0.0)  # padded rows: keep exp2 finite; never stored
        p = tl.exp2(s - m[:, None])
        l = tl.sum(p, 1)
        l = tl.where(row_ok, l, 1.0)
        acc = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        bad_from = first_bad
        if KEY_TILES > 1:
            # Online softmax over the later sub-tiles up to the tile's last query (queries ascend).
            last = tl.max(tl.where(row_ok, t, 0), 0)
            for j in range(1, tl.minimum(KEY_TILES, (last - blk * BS) // KT + 1)):
                key_pos, key_ok, k, v, first_bad = _key_tile(k_ptr, v_ptr, b, blk, j, kvh, N, skb, skn, skh,
                                                             BS, KT, D, D_PAD)
                bad_from = tl.minimum(bad_from, first_bad)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                visible = key_ok[None, :] & (key_pos[None, :] <= t[:, None])
                s = tl.where(visible, s, float("-inf"))
                m, l, acc = online_softmax_step(m, l, acc, s, v, PRECISION)
        o = acc / l[:, None]
        o = tl.where((t >= bad_from)[:, None], float("nan"), o)
        i = (t - q0).to(tl.int64)
        o_off = b.to(tl.int64) * sob + i[:, None] * son + slot[:, None] * sok + head[:, None] * soh + offs_d[None, :]
        tl.store(o_part_ptr + o_off, o.to(o_part_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        l_off = b.to(tl.int64) * slb + i * sln + slot * slk + head
        tl.store(lse_part_ptr + l_off, (m + tl.log2(l)) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _merge_partials(
    o_part_ptr, lse_part_ptr, sel_ptr, out_ptr, lse_ptr,
    C, q0, HQ,
    sob, son, sok, soh, slb, sln, slk,
    ssb, ssh, ssn, sxb, sxn, sxh, sLb, sLh, sLn,
    K: tl.constexpr, HB: tl.constexpr, HPR: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
):
    b, i, heads, h_ok, sel_row = slot_row(C, q0, HQ, ssb, ssh, ssn, HB, HPR)
    l_row = b.to(tl.int64) * slb + i.to(tl.int64) * sln + heads
    m = tl.full([HB], float("-inf"), tl.float32)
    for s in range(K):
        ok = h_ok & (tl.load(sel_ptr + sel_row + s, mask=h_ok, other=-1) >= 0)
        m = tl.maximum(m, tl.load(lse_part_ptr + l_row + s * slk, mask=ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    acc = tl.zeros([HB, D_PAD], tl.float32)
    total = tl.zeros([HB], tl.float32)
    o_row = b.to(tl.int64) * sob + i.to(tl.int64) * son + heads[:, None] * soh + offs_d[None, :]
    for s in range(K):
        ok = h_ok & (tl.load(sel_ptr + sel_row + s, mask=h_ok, other=-1) >= 0)
        wgt = tl.where(ok, tl.exp(tl.load(lse_part_ptr + l_row + s * slk, mask=ok, other=0.0) - m_safe), 0.0)
        o = tl.load(o_part_ptr + o_row + s * sok, mask=ok[:, None] & d_ok[None, :], other=0.0)
        acc += wgt[:, None] * o.to(tl.float32)
        total += wgt
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    x_off = b.to(tl.int64) * sxb + (q0 + i).to(tl.int64) * sxn + heads[:, None] * sxh + offs_d[None, :]
    tl.store(out_ptr + x_off, out.to(out_ptr.dtype.element_ty), mask=h_ok[:, None] & d_ok[None, :])
    # total: 0 for a row that saw no key (LSE -inf), NaN for one whose scores were (a non-finite q or k).
    lse = tl.where(total > 0, m_safe + tl.log(tl.where(total > 0, total, 1.0)),
                   tl.where(total == 0, float("-inf"), float("nan")))
    tl.store(lse_ptr + b.to(tl.int64) * sLb + heads.to(tl.int64) * sLh + (q0 + i).to(tl.int64) * sLn, lse,
             mask=h_ok)


@dataclass(frozen=True)
class Launch:
    """How the KV-outer kernel runs for a selection: ``QT`` tokens x ``HPR`` heads per MMA
    tile (``M`` rows, padded to a power of two), ``entries`` queries per program, and the
    compiler's ``num_warps`` and ``num_stages``."""

    HPR: int
    QT: int
    M: int
    entries: int
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES

    @classmethod
    def for_rows(cls, per: str, group_size: int, *, rows_per_tile: int = ROWS_PER_TILE, **compiler) -> "Launch":
        """``per``: ``"group"`` (a selection row serves the group's ``group_size`` query
        heads, packed into the tile) or ``"head"`` (one query head per row)."""
        HPR = group_size if per == "group" else 1
        QT = max(1, rows_per_tile // HPR)
        return cls(HPR, QT, dot_pad(QT * HPR), max(QT, ROWS_PER_ITEM // HPR // QT * QT), **compiler)

    @classmethod
    def for_forward(cls, per: str, group_size: int, block_size: int, head_dim: int,
                    dtype: torch.dtype) -> "Launch":
        """The measured settings of the forward for this block size and dtype: float32 tiles
        take twice the shared memory, so they get no pipelining."""
        if dtype == torch.float32:
            return cls.for_rows(per, group_size, num_stages=1)
        if key_tile(block_size, head_dim, dtype) < block_size:  # the block is walked in sub-tiles
            return cls.for_rows(per, group_size, rows_per_tile=WALK_ROWS_PER_TILE,
                                num_warps=WALK_NUM_WARPS, num_stages=WALK_NUM_STAGES)
        return cls.for_rows(per, group_size)


def attend(q, k, v, lists, o_part, lse_part, q0: int, scale: float, block_size: int,
           selection_heads: int, launch: Launch) -> None:
    """Write the partial outputs and LSEs of the query rows that ``lists`` cover.

    ``selection_heads``: the selection's head count (its ``Hs``, which numbers the lists);
    the keys visible are ``k[:, :q.shape[1]]`` (decoding passes a stride-0 view of its query)."""
    if not lists.num_items:
        return
    D = q.shape[3]
    keys = key_tile(block_size, D, q.dtype)
    _kv_outer_fwd[(lists.num_items,)](
        q, k, v, o_part, lse_part,
        lists.query, lists.slot, lists.work_list, lists.work_start, lists.work_count,
        q.shape[1], q0, selection_heads, -(-q.shape[1] // block_size), scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        *o_part.stride()[:4], *lse_part.stride()[:3],
        G=q.shape[2] // k.shape[2], HPR=launch.HPR, QT=launch.QT, M=launch.M,
        BS=block_size, KT=keys, KEY_TILES=triton.cdiv(block_size, keys),
        D=D, D_PAD=dot_pad(D), PRECISION=dot_precision(q.dtype),
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )


def merge(o_part, lse_part, sel, out, lse, q0: int, launch: Launch) -> None:
    """Combine the partials of query rows ``[q0, q0 + o_part.shape[1])`` into out and lse
    (``sel``: the selection's block ids, read for which slots hold a partial)."""
    B, C, K, Hq, D = o_part.shape
    HB = min(16, next_pow2(Hq))
    _merge_partials[(B * C, triton.cdiv(Hq, HB))](
        o_part, lse_part, sel, out, lse,
        C, q0, Hq,
        *o_part.stride()[:4], *lse_part.stride()[:3],
        sel.stride(0), sel.stride(1), sel.stride(2), out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        K=K, HB=HB, HPR=launch.HPR, D=D, D_PAD=dot_pad(D),
    )


def partial_budget(device: torch.device, *, reproducible: bool = False) -> int:
    """Bytes of partials one query chunk may take. ``reproducible``: a budget that depends on
    the device alone (a quarter of its memory), not on what is free at the call, for results
    that must not change with the chunking (the deterministic backward)."""
    fixed = kernel_settings().partial_bytes
    if fixed is not None:
        return fixed
    if device.type == "cuda" and reproducible:
        return torch.cuda.get_device_properties(device).total_memory // 4
    if device.type == "cuda":
        # Free device memory plus what PyTorch's allocator holds unused: mem_get_info alone
        # shrinks after each call (the last buffers stay cached), so chunking would drift.
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (torch.cuda.mem_get_info(device)[0] + unused) // 2
    return 1 << 30


def chunk_rows(B: int, N: int, K: int, Hq: int, D: int, dtype: torch.dtype, device, *,
               reproducible: bool = False) -> int:
    """Query rows per chunk: as many as the partial budget holds."""
    per_query = B * K * Hq * (D * dtype.itemsize + 4)
    return max(1, min(N, partial_budget(torch.device(device), reproducible=reproducible) // per_query))


def empty_partials(*shape: int, dtype, device) -> torch.Tensor:
    """An uninitialised partial buffer (NaN-filled under the ``poison_partials`` setting)."""
    part = torch.empty(shape, device=device, dtype=dtype)
    return part.fill_(float("nan")) if kernel_settings().poison_partials else part


def partial_buffers(B: int, C: int, K: int, Hq: int, D: int, dtype, device):
    return (empty_partials(B, C, K, Hq, D, dtype=dtype, device=device),
            empty_partials(B, C, K, Hq, dtype=torch.float32, device=device))


def kv_outer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       selection: BlockSelection, scale: float, *, query_chunk: int | None = None,
                       plan: KVOuterPlan | None = None):
    """``(out [B, N, Hq, D] in q.dtype, lse [B, Hq, N] float32)`` for valid inputs; ``plan``
    keeps the query lists it builds (for the backward and the index KL)."""
    B, N, Hq, D = q.shape
    K = selection.top_k
    launch = Launch.for_forward(selection.per, Hq // k.shape[2], selection.block_size, D, q.dtype)
    q, k, v = (x.contiguous() for x in (q, k, v))
    # The merge kernel reads the ids by strides of a contiguous tensor; the lists (and the plan,
    # which knows the caller's selection) come from the selection as given.
    ids = selection.indices.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
    C = query_chunk or chunk_rows(B, N, K, Hq, D, q.dtype, q.device)
    # One buffer for every chunk: a new one per chunk would hold two at once.
    o_part, lse_part = partial_buffers(B, min(C, N), K, Hq, D, q.dtype, q.device)
    for q0 in range(0, N, C):
        q1 = min(N, q0 + C)
        lists = query_lists(selection, plan, q0, q1, launch.entries)
        attend(q, k, v, lists, o_part[:, :q1 - q0], lse_part[:, :q1 - q0], q0, scale, selection.block_size,
               selection.indices.shape[1], launch)
        merge(o_part[:, :q1 - q0], lse_part[:, :q1 - q0], ids, out, lse, q0, launch)
    return out, lse
