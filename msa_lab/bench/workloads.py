"""What a sweep point runs: its inputs, the whole operator, and each stage on its own.

A ``Workload`` holds the inputs of one point (random normal tensors: never zeros) and
``total``, the operator as a user calls it. ``stages()`` builds the stage callables only
when asked, after ``total`` has been timed, so that their buffers do not shrink the
memory the operator itself sees. Stages of sparse methods: ``selection`` (MSA's index
branch or MoBA's gate, then top-k; given selections such as the oracle are inputs and not
timed), ``metadata`` (query lists of the KV-outer kernel, the BlockMask of FlexAttention),
``attention`` and ``merge`` (KV-outer's LSE combine).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..attention import block_sparse_attention, full_attention
from ..decode import KVCache, dense_decode, msa_decode
from ..select.registry import SELECTORS
from ..selection import BlockSelection
from .config import Point


@dataclass
class Workload:
    total: Callable[[], object]
    stages: Callable[[], dict[str, Callable[[], object]]] = field(default=lambda: {})
    selection: BlockSelection | None = None


def _pinned_sdpa(backend: str):
    """The SDPA backend a config pins ("sdpa_cudnn" / "sdpa_flash"), or PyTorch's choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}
    return sdpa_kernel(pinned[backend]) if backend in pinned else contextlib.nullcontext()


def _dense(backend: str, call: Callable[[str], object]) -> Callable[[], object]:
    library_backend = "sdpa" if backend.startswith("sdpa") else backend

    def run():
        with _pinned_sdpa(backend):
            return call(library_backend)

    return run


def build_workload(p: Point, device: str, seed: int) -> Workload:
    if p.mode == "decode":
        return _decode_workload(p, device, seed)
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=p.torch_dtype, generator=gen)

    B, N, Hq, Hkv, D = p.batch, p.seq_len, p.num_heads, p.num_kv_heads, p.head_dim
    q, k, v = randn(B, N, Hq, D), randn(B, N, Hkv, D), randn(B, N, Hkv, D)
    if p.method == "full":
        return Workload(_dense(p.backend, lambda backend: full_attention(q, k, v, backend=backend)))

    selector = SELECTORS[p.method]
    index_heads = Hq if p.per == "head" else Hkv  # MSA: one index head per KV group, or per query head
    index = (randn(B, N, index_heads, p.index_dim), randn(B, N, 1, p.index_dim)) if selector.inputs == "index" else None
    select = _selector(p, q, k, index, seed)
    selection = select()

    def attend(sel):
        return block_sparse_attention(q, k, v, sel, backend=p.backend)

    if selector.timed:
        total = lambda: attend(select())  # noqa: E731
    else:  # a given selection (oracle, random, window, ...) is an input of the experiment
        total = lambda: attend(selection)  # noqa: E731

    def stages():
        found = {"selection": select} if selector.timed else {}
        return dict(found, **_attention_stages(p, q, k, v, selection))

    return Workload(total, stages, selection)


def _selector(p: Point, q, k, index, seed: int) -> Callable[[], BlockSelection]:
    """The point's registered selector as a call; ``index``: MSA's ``(index_q, index_k)``
    (None: the selector's stand-in)."""
    selector = SELECTORS[p.method]
    return lambda: selector.select(q, k, index=index, block_size=p.block_size, top_k=p.top_k,
                                   backend=p.selection_backend, per=p.per, seed=seed, **dict(p.options))


def _attention_stages(p: Point, q, k, v, selection: BlockSelection) -> dict:
    scale = p.head_dim ** -0.5
    if p.backend == "triton":
        return _kv_outer_stages(q, k, v, selection, scale)
    if p.backend == "flex":
        from ..flex import run_flex, selection_block_mask

        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        mask = selection_block_mask(selection, p.num_heads)
        return {"metadata": lambda: selection_block_mask(selection, p.num_heads),
                "attention": lambda: run_flex(qt, kt, vt, mask, scale)}
    return {"attention": lambda: block_sparse_attention(q, k, v, selection, backend=p.backend)}


def _kv_outer_stages(q, k, v, selection: BlockSelection, scale: float) -> dict:
    """The KV-outer call split at its stage boundaries, over the same query chunks."""
    from ..kernels import kv_outer
    from ..kv_outer_plan import build_query_lists

    B, N, Hq, D = q.shape
    K = selection.top_k
    sel = selection.indices.contiguous()
    launch = kv_outer.Launch.for_forward(selection.per, Hq // k.shape[2], selection.block_size, D, q.dtype)
    C = kv_outer.chunk_rows(B, N, K, Hq, D, q.dtype, q.device)
    chunks = [(q0, min(N, q0 + C)) for q0 in range(0, N, C)]
    lists = [build_query_lists(selection, q0, q1, launch.entries) for q0, q1 in chunks]
    o_part, lse_part = kv_outer.partial_buffers(B, min(C, N), K, Hq, D, q.dtype, q.device)
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
    Hs = sel.shape[1]

    def metadata():
        for q0, q1 in chunks:
            build_query_lists(selection, q0, q1, launch.entries)

    def attention():
        for (q0, q1), chunk_lists in zip(chunks, lists):
            kv_outer.attend(q, k, v, chunk_lists, o_part[:, :q1 - q0], lse_part[:, :q1 - q0], q0, scale,
                            selection.block_size, Hs, launch)

    def merge():
        for q0, q1 in chunks:
            kv_outer.merge(o_part[:, :q1 - q0], lse_part[:, :q1 - q0], sel, out, lse, q0, launch)

    return {"metadata": metadata, "attention": attention, "merge": merge}


def _decode_workload(p: Point, device: str, seed: int) -> Workload:
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=p.torch_dtype, generator=gen)

    B, L, Hq, Hkv, D, Di = p.batch, p.seq_len, p.num_heads, p.num_kv_heads, p.head_dim, p.index_dim
    msa = p.method == "msa"
    cache = KVCache(B, L, Hkv, D, index_dim=Di if msa else None, dtype=p.torch_dtype, device=device)
    step = max(1, (1 << 24) // (B * Hkv * D))  # fill in pieces of about 16M elements
    for s in range(0, L, step):
        n = min(step, L - s)
        cache.append(randn(B, n, Hkv, D), randn(B, n, Hkv, D), randn(B, n, 1, Di) if msa else None)
    q = randn(B, 1, Hq, D)
    if not msa:
        return Workload(_dense(p.backend, lambda backend: dense_decode(q, cache, backend=backend)))
    index_q = randn(B, 1, Hkv, Di)
    kw = dict(block_size=p.block_size, top_k=p.top_k, backend=p.backend)
    total = lambda: msa_decode(q, index_q, cache, **kw)  # noqa: E731
    if p.backend != "triton":
        return Workload(total)

    def stages():
        from ..kernels.decode import decode_attention, decode_selection

        ik = cache.index_k[:, :L]
        ids = decode_selection(index_q, ik, p.block_size, p.top_k)
        return {"selection": lambda: decode_selection(index_q, ik, p.block_size, p.top_k),
                "attention": lambda: decode_attention(q, cache.keys(), cache.values(), ids, p.block_size,
                                                      D ** -0.5)}

    return Workload(total, stages)


def measure_coverage(p: Point, device: str, seed: int) -> dict:
    """Coverage of one selector on generated data (``msa_lab.data``, the point's pattern):
    recall, recall relative to the oracle, block overlap and output error on ``p.rows``
    query rows spread evenly over the sequence (exact normalisers; nothing N x N), with
    per-head, per-group and per-position breakdowns. MSA's index branch is the main Q/K
    (``index_from_qk``): coverage of the mechanism, not of a trained indexer."""
    import time

    from ..coverage import coverage, evenly_spaced_rows, output_error
    from ..data import structured_qkv
    from ..reference import attention_reference

    data = structured_qkv(batch=p.batch, seq_len=p.seq_len, num_heads=p.num_heads, num_kv_heads=p.num_kv_heads,
                          head_dim=p.head_dim, patterns=p.pattern, seed=seed, dtype=p.torch_dtype, device=device)
    q, k, v = data.q, data.k, data.v
    start = time.perf_counter()
    selection = _selector(p, q, k, None, seed)()  # MSA's index branch: the main Q/K (index_from_qk)
    select_s = time.perf_counter() - start
    positions = evenly_spaced_rows(p.seq_len, p.rows, device)
    report = coverage(q, k, selection, rows=positions)
    scale = p.head_dim ** -0.5
    sparse, _ = attention_reference(q, k, v, scale=scale, selection=selection, positions=positions)
    dense, _ = attention_reference(q, k, v, scale=scale, positions=positions)
    s = report.summary()
    centres, by_position = report.by_position(32)
    distances, by_distance, mass_share = report.by_distance()
    return dict(
        recall_mean=s["recall"]["mean"], recall_p5=s["recall"]["p5"], recall_p50=s["recall"]["p50"],
        rows_below_0_9=s["recall"]["share_below_0.9"], oracle_recall_mean=s["oracle_recall"]["mean"],
        recall_vs_oracle_mean=s["relative_recall"]["mean"], overlap_mean=s["overlap"]["mean"],
        output_error=output_error(sparse, dense), rows_measured=int(positions.numel()),
        tokens_per_query=float(selection.tokens_per_query().float().mean()), density=float(selection.density()),
        patterns=list(data.patterns), recall_by_head=report.by_head().tolist(),
        recall_by_group=report.by_group().tolist(), recall_by_position=[centres.tolist(), by_position.tolist()],
        recall_by_distance=[distances, by_distance.tolist(), mass_share.tolist()],
        selection_seconds=select_s,
        # the MSA paper's metrics (Sec. 5.2), against each head's own top_k blocks by true mass
        block_recall_mean=s["block_recall"]["mean"], block_recall_p5=s["block_recall"]["p5"],
        score_recall_mean=s["score_recall"]["mean"], score_recall_p5=s["score_recall"]["p5"],
        block_recall_by_head=report.by_head("block_recall").tolist(),
        score_recall_by_head=report.by_head("score_recall").tolist())
