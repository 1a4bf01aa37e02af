"""MSA decode step in Triton: one new query per sequence against a KV cache.

1. ``_decode_index_scores``: a program per (run of ``BLOCKS`` key blocks, sequence) reads
   each cached index-key block once and scores it for all G index queries at once (the
   groups are the MMA rows), max-pooled per block. Decode is a bytes problem and the index
   keys are its largest read (``N * Di`` elements per sequence), so they are read once.
2. ``top_blocks_kernel`` (shared with prefill): local block plus the ``top_k - 1`` best.
3. Split-K attention over the selected blocks and the LSE reduction: the KV-outer attend
   and merge kernels, given a stride-0 view of the single query (every work item is one
   (sequence, group, block) and one query).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selection import num_blocks
from .kv_outer import Launch, attend, merge, partial_buffers
from ..kv_outer_plan import QueryLists
from ..triton_runtime import dot_pad, dot_precision, kernel_settings, next_pow2
from ..select.topk_triton import top_blocks_kernel
from ..triton_tiles import load_rows, online_softmax_step

BLOCKS_PER_PROGRAM = 16


@triton.jit
def _decode_index_scores(
    iq_ptr, ik_ptr, score_ptr, L, NB, scale,
    sqb, sqg, skb, skn, ssb, ssg,
    G: tl.constexpr, G_PAD: tl.constexpr, BS: tl.constexpr, BS_PAD: tl.constexpr,
    DI: tl.constexpr, DI_PAD: tl.constexpr, BLOCKS: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(1)
    groups = tl.arange(0, G_PAD)
    g_ok = groups < G
    offs_d = tl.arange(0, DI_PAD)
    iq = tl.load(iq_ptr + b.to(tl.int64) * sqb + groups[:, None] * sqg + offs_d[None, :],
                 mask=g_ok[:, None] & (offs_d < DI)[None, :], other=0.0)
    offs_k = tl.arange(0, BS_PAD)
    j0 = tl.program_id(0) * BLOCKS
    for j in range(j0, tl.minimum(j0 + BLOCKS, NB)):
        key = j * BS + offs_k
        key_ok = (offs_k < BS) & (key < L)
        ik = load_rows(ik_ptr, b, key, 0, skb, skn, 0, key_ok, DI, DI_PAD)
        s = tl.dot(iq, tl.trans(ik), input_precision=PRECISION) * scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        tl.store(score_ptr + b.to(tl.int64) * ssb + groups.to(tl.int64) * ssg + j, tl.max(s, 1), mask=g_ok)


def decode_selection(index_q, index_k, block_size: int, top_k: int):
    """Block ids ``int32 [B, G, top_k]`` (-1 padded, the local block first) for the query at
    position ``L - 1`` of the cached index keys ``index_k [B, L, 1, Di]``."""
    B, L = index_k.shape[:2]
    G, Di = index_q.shape[2], index_q.shape[3]
    nb = num_blocks(L, block_size)
    iq = index_q.contiguous()
    scores = torch.empty(B, G, 1, nb, device=iq.device, dtype=torch.float32)
    _decode_index_scores[(triton.cdiv(nb, BLOCKS_PER_PROGRAM), B)](
        iq, index_k, scores, L, nb, Di ** -0.5,
        iq.stride(0), iq.stride(2), index_k.stride(0), index_k.stride(1), scores.stride(0), scores.stride(1),
        G=G, G_PAD=dot_pad(G), BS=block_size, BS_PAD=dot_pad(block_size),
        DI=Di, DI_PAD=dot_pad(Di), BLOCKS=BLOCKS_PER_PROGRAM, PRECISION=dot_precision(iq.dtype),
    )
    ids = torch.empty(B, G, 1, top_k, device=iq.device, dtype=torch.int32)
    top_blocks_kernel[(1, G, B)](
        scores, ids, L - 1, scores.stride(0), scores.stride(1), scores.stride(2),
        ids.stride(0), ids.stride(1), 0, K=top_k, BS=block_size, NB_PAD=next_pow2(nb),
        ROW_TILE=kernel_settings().top_k_row_tile,
    )
    return ids[:, :, 0]


def decode_attention(q, k, v, ids, block_size: int, scale: float):
    """``(out [B, 1, Hq, D], lse [B, Hq, 1])``: split-K attention of the query at position
    ``L - 1`` over its selected blocks ``ids [B, G, top_k]`` of ``k, v [B, L, Hkv, D]``."""
    B, L, Hkv, D = k.shape
    Hq, G, top_k = q.shape[2], ids.shape[1], ids.shape[2]
    nb = num_blocks(L, block_size)
    # One query at position L - 1: stride-0 views let the prefill kernels index it by position.
    rows = ids.unsqueeze(2).expand(B, G, L, top_k)
    # One work item per (sequence, group, slot); an unused slot gets zero queries (and block
    # 0 as a harmless address). No host sync, so a decode step can be captured in a graph.
    valid = (ids >= 0).flatten()
    pair = torch.arange(B * G, device=q.device).view(B, G, 1)
    items = B * G * top_k
    lists = QueryLists(query=torch.full((items,), L - 1, device=q.device, dtype=torch.int32),
                       slot=torch.arange(top_k, device=q.device, dtype=torch.int32).repeat(B * G),
                       work_list=(pair * nb + ids.clamp_min(0).long()).flatten().to(torch.int32),
                       work_start=torch.arange(items, device=q.device, dtype=torch.int32),
                       work_count=valid.to(torch.int32))
    launch = Launch.for_rows("group", Hq // Hkv)
    o_part, lse_part = partial_buffers(B, 1, top_k, Hq, D, q.dtype, q.device)
    q_at = q.contiguous().expand(B, L, Hq, D)
    attend(q_at, k, v, lists, o_part, lse_part, L - 1, scale, block_size, G, launch)
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, 1, device=q.device, dtype=torch.float32)
    merge(o_part, lse_part, rows, out.expand(B, L, Hq, D), lse.expand(B, Hq, L), L - 1, launch)
    return out, lse


def msa_decode_triton(q, index_q, k, v, index_k, block_size: int, top_k: int, scale: float):
    """``(out [B, 1, Hq, D], lse [B, Hq, 1], block ids int32 [B, G, top_k])`` for the query
    at position ``L - 1`` of caches ``k, v [B, L, Hkv, D]``, ``index_k [B, L, 1, Di]``."""
    ids = decode_selection(index_q, index_k, block_size, top_k)
    out, lse = decode_attention(q, k, v, ids, block_size, scale)
    return out, lse, ids


#: Dense decoding (flash-decoding): the keys are cut into splits, one program per (split,
#: KV head, sequence), so a single query still fills the GPU; about this many programs.
DENSE_PROGRAMS = 1024
DENSE_KEYS_PER_TILE = 64


@triton.jit
def _dense_decode_split(
    q_ptr, k_ptr, v_ptr, o_part_ptr, lse_part_ptr, L, keys_per_split, scale,
    sqb, sqh, skb, skn, skh, sob, sok, soh, slb, slk,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BN: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    heads = kvh * G + offs_g
    g_ok = offs_g < G
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + heads[:, None] * sqh + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634  # exp2 domain
    m = tl.full([G_PAD], float("-inf"), tl.float32)
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, L)
    offs_n = tl.arange(0, BN)
    for j in range(start, end, BN):  # every split holds at least one key: m turns finite at once
        keys = j + offs_n
        ok = keys < end
        k = load_rows(k_ptr, b, keys, kvh, skb, skn, skh, ok, D, D_PAD)
        v = load_rows(v_ptr, b, keys, kvh, skb, skn, skh, ok, D, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m, l, acc = online_softmax_step(m, l, acc, s, v, PRECISION)
    o_off = b.to(tl.int64) * sob + split * sok + heads[:, None] * soh + offs_d[None, :]
    tl.store(o_part_ptr + o_off, (acc / l[:, None]).to(o_part_ptr.dtype.element_ty),
             mask=g_ok[:, None] & d_ok[None, :])
    tl.store(lse_part_ptr + b.to(tl.int64) * slb + split * slk + heads, (m + tl.log2(l)) * 0.6931471805599453,
             mask=g_ok)


def dense_decode_triton(q, k, v, scale: float):
    """``(out [B, 1, Hq, D], lse [B, Hq, 1])``: the query against every key of
    ``k, v [B, L, Hkv, D]``, split over the keys and merged by the LSE rule (the KV-outer
    merge kernel, each split a slot)."""
    B, L, Hkv, D = k.shape
    Hq = q.shape[2]
    G = Hq // Hkv
    splits = max(1, min(triton.cdiv(L, DENSE_KEYS_PER_TILE), DENSE_PROGRAMS // (B * Hkv)))
    per_split = triton.cdiv(triton.cdiv(L, splits), DENSE_KEYS_PER_TILE) * DENSE_KEYS_PER_TILE
    splits = triton.cdiv(L, per_split)  # no empty split
    q = q.contiguous()
    o_part, lse_part = partial_buffers(B, 1, splits, Hq, D, q.dtype, q.device)
    _dense_decode_split[(splits, Hkv, B)](
        q, k, v, o_part, lse_part, L, per_split, scale,
        q.stride(0), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        o_part.stride(0), o_part.stride(2), o_part.stride(3), lse_part.stride(0), lse_part.stride(2),
        G=G, G_PAD=dot_pad(G), D=D, D_PAD=dot_pad(D), BN=DENSE_KEYS_PER_TILE,
        PRECISION=dot_precision(q.dtype),
    )
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, 1, device=q.device, dtype=torch.float32)
    # Merge reads which slots hold a partial from a selection row (unit stride along slots).
    every_slot = torch.zeros(1, 1, 1, splits, device=q.device, dtype=torch.int32).expand(B, Hkv, 1, splits)
    merge(o_part, lse_part, every_slot, out, lse, 0, Launch.for_rows("group", G))
    return out, lse
