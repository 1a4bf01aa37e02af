"""Analytic cost model: FLOPs and minimal bytes of every method and stage, the device's
measured ceilings, and the roofline bound of a point.

FLOPs follow SPEC's protocol: dense-equivalent ``4 B Hq D N^2 / 2`` (causal) and useful
``4 B Hq D * selected tokens`` plus the selection's own matmuls (MSA's index branch
``2 B G Di N^2 / 2``, MoBA's gate against the mean keys of past blocks). Bytes are the
least traffic of the design: inputs read once and outputs written once, plus, for the
KV-outer kernel, the intermediates its design cannot avoid (each (query, block) entry
gathers its query heads and writes a partial output and LSE that the merge reads back;
SPEC asks for them in the byte model). ``docs/cost_model.md`` derives every term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..select.registry import SELECTORS, Shape
from .config import Point

LSE_BYTES = 4
ID_BYTES = 4
#: Bytes of one query-list entry (query position and slot, int32 each).
ENTRY_BYTES = 8


@dataclass(frozen=True)
class Cost:
    flop: float
    bytes: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flop + other.flop, self.bytes + other.bytes)


@dataclass(frozen=True)
class Ceilings:
    """Measured peaks: dense matmul TFLOP/s per dtype name and copy bandwidth (read +
    write bytes per second, in TB/s)."""

    matmul_tflops: dict
    copy_tb_per_s: float

    def bound_ms(self, cost: Cost, dtype: str) -> tuple[float, str]:
        """The roofline bound of ``cost`` and which limit sets it."""
        compute = cost.flop / (self.matmul_tflops[dtype] * 1e12) * 1e3
        memory = cost.bytes / (self.copy_tb_per_s * 1e12) * 1e3
        return (compute, "compute") if compute >= memory else (memory, "memory")


def element_size(dtype: str) -> int:
    return {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]


def selected_blocks(N: int, block_size: int, top_k: int) -> int:
    """Sum over query positions of the blocks a row selects: ``min(top_k, t // bs + 1)``
    (every selector here fills all the slots its row can)."""
    nb = -(-N // block_size)
    full = min(nb, top_k)  # query blocks 0..top_k-1 select j + 1 blocks each
    total = sum(min(block_size, N - j * block_size) * (j + 1) for j in range(full))
    return total + max(0, N - full * block_size) * top_k


def selected_tokens(N: int, block_size: int, top_k: int) -> int:
    """Sum over query positions of the key tokens a row attends to: the visible part of
    the own block (``t % bs + 1``) plus ``min(top_k - 1, t // bs)`` full past blocks (past
    blocks are always whole: only the last block of the sequence can be partial)."""
    t = torch.arange(N, dtype=torch.int64)
    own = t % block_size + 1
    past = torch.clamp(t // block_size, max=top_k - 1) * block_size
    return int((own + past).sum())


def dense_equiv_flop(p: Point) -> float:
    if p.mode == "decode":
        return 4.0 * p.batch * p.num_heads * p.head_dim * p.seq_len
    return 4.0 * p.batch * p.num_heads * p.head_dim * p.seq_len * p.seq_len / 2


def _rows(p: Point) -> int:
    """Selection heads Hs: one row per KV group or per query head."""
    return p.num_kv_heads if p.per == "group" else p.num_heads


def stage_costs(p: Point) -> dict[str, Cost]:
    """Cost of each stage of the point's method and backend; ``"total"`` is their sum."""
    e = element_size(p.dtype)
    B, N, Hq, Hkv, D, Di = p.batch, p.seq_len, p.num_heads, p.num_kv_heads, p.head_dim, p.index_dim
    bs, K = p.block_size, p.top_k
    qkvo = Cost(0.0, float(B * N * (2 * Hq + 2 * Hkv) * D * e))
    if p.mode == "decode":
        return _decode_costs(p, e)
    if p.method == "full":
        return {"total": Cost(dense_equiv_flop(p), qkvo.bytes)}

    Hs = _rows(p)
    rows_per_entry = Hq // Hs  # query heads served by one selection row
    entries = B * Hs * selected_blocks(N, bs, K)
    attn_flop = 4.0 * B * Hq * D * selected_tokens(N, bs, K)
    ids = float(B * Hs * N * K * ID_BYTES)
    costs: dict[str, Cost] = {}
    selector = SELECTORS[p.method]
    if selector.timed:  # a given selection is an input, not a stage of the operator
        flop, read = selector.scoring(Shape(B, N, Hq, Hkv, D, Di, bs, K, e, p.per))
        costs["selection"] = Cost(flop, read + ids)
    if p.backend == "triton":
        partial = entries * rows_per_entry * (D * e + LSE_BYTES)
        gathered_q = entries * rows_per_entry * D * e
        kv_blocks = B * Hs * -(-N // bs) * 2 * bs * D * e
        costs["metadata"] = Cost(0.0, ids + entries * ENTRY_BYTES)
        costs["attention"] = Cost(attn_flop, gathered_q + partial + kv_blocks)
        costs["merge"] = Cost(0.0, partial + ids + B * N * Hq * (D * e + LSE_BYTES))
    else:
        if p.backend == "flex":
            costs["metadata"] = Cost(0.0, ids)
        costs["attention"] = Cost(attn_flop, qkvo.bytes)
    costs["total"] = sum(costs.values(), Cost(0.0, 0.0))
    return costs


def _decode_costs(p: Point, e: int) -> dict[str, Cost]:
    """One new query per sequence against a context of ``seq_len`` tokens."""
    B, L, Hq, Hkv, D, Di = p.batch, p.seq_len, p.num_heads, p.num_kv_heads, p.head_dim, p.index_dim
    q_and_out = B * 2 * Hq * D * e
    if p.method == "full":
        return {"total": Cost(4.0 * B * Hq * D * L, B * L * Hkv * D * 2 * e + q_and_out)}
    K, bs = p.top_k, p.block_size
    tokens = min(K - 1, (L - 1) // bs) * bs + (L - 1) % bs + 1
    costs = {
        "selection": Cost(2.0 * B * Hkv * Di * L, B * (L * Di + Hkv * Di) * e + B * Hkv * K * ID_BYTES),
        "attention": Cost(4.0 * B * Hq * D * tokens, B * Hkv * min(K, -(-L // bs)) * bs * D * 2 * e + q_and_out),
    }
    costs["total"] = costs["selection"] + costs["attention"]
    return costs


def useful_flop(p: Point) -> float:
    return stage_costs(p)["total"].flop


def measure_ceilings(device: str, dtypes=("bf16",)) -> Ceilings:
    """Peak dense matmul rate per dtype and copy bandwidth, measured here and now (medians
    of timed runs): the roofline's ceilings. On CUDA: 8192^3 matmuls and a 1 GiB copy."""
    from .config import DTYPES
    from .timing import time_call

    cuda = device == "cuda"
    n = 8192 if cuda else 1024
    rates = {}
    for name in dtypes:
        dt = DTYPES[name]
        if not cuda and dt != torch.float32:
            dt = torch.float32  # CPU half-precision matmul is not what the CPU paths run
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 ceilings of ieee-precision kernels
        try:
            t = time_call(lambda: a @ b, device, repeats=20, max_seconds=5.0)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        rates[name] = 2.0 * n ** 3 / (t["median_ms"] * 1e-3) / 1e12
        del a, b
    numel = (1 << 29) if cuda else (1 << 25)
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, repeats=20, max_seconds=5.0)
    bandwidth = 2 * numel * 2 / (t["median_ms"] * 1e-3) / 1e12
    return Ceilings(rates, bandwidth)
