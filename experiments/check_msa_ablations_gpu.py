"""GPU check of MSA's ablations (issue 15): the Triton index kernels against select_msa's
reference for every pooling (max, mean, lse) x per (group, head) x sink_blocks (0, 2) x block
size 16 .. 4096, bf16 inputs, index dim 128 (and 64 without sinks), N not a multiple of the
block and at least 10 blocks long, top_k 4.

Each row records the share of query rows whose block sets differ. bf16 products are exact in
float32, so the two differ only in the order of float32 sums: a differing row should be a
near-tie, and ``max_swap_gap`` says how near (the largest float64 score gap between a block
one side picked and the block the other picked instead, over the first 256 differing rows,
relative to the largest score). The run stops at the first configuration that raises (a
Triton resource error was the failure before: block 512 at Di 128).

Usage: python experiments/check_msa_ablations_gpu.py OUT_DIR   (about 2 minutes on an H200,
most of it compiling the ~80 kernel variants)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import _common  # noqa: E402,F401  (this checkout first on sys.path)
import msa_lab as ml  # noqa: E402
from msa_lab.bench import ResultRows  # noqa: E402
from msa_lab.environment import gpu_environment  # noqa: E402

BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
POOLINGS = ("max", "mean", "lse")
TOP_K = 4
GROUPS, QUERY_HEADS = 4, 8  # index heads for per="group" and per="head"


def seq_len(block_size: int) -> int:
    """At least 10 blocks and 2,000 tokens, the last block partial."""
    return max(10 * block_size + block_size // 3 + 1, 2001)


def swap_gap(iq, ik, ref, got, block_size, pooling, rows=256) -> float:
    """Largest float64 score gap of a swapped block pair over the first ``rows`` differing rows."""
    a, b = ref.dense_mask(), got.dense_mask()
    differs = (a != b).any(-1)[0]  # [H, N]
    where = differs.nonzero()[:rows]
    if where.numel() == 0:
        return 0.0
    positions = where[:, 1].unique()
    scores = ml.msa_block_scores(iq.double(), ik.double(), positions, block_size, pooling=pooling)[0]
    scale = scores[scores.isfinite()].abs().max()
    col = {int(p): i for i, p in enumerate(positions.tolist())}
    worst = 0.0
    for h, t in where.tolist():
        s = scores[h, col[t]]
        dropped, added = s[a[0, h, t] & ~b[0, h, t]], s[b[0, h, t] & ~a[0, h, t]]
        if dropped.numel() and added.numel():
            worst = max(worst, float((dropped.max() - added.min()) / scale))
    return worst


def check(rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    for Di in (128, 64):
        for bs in BLOCK_SIZES:
            N = seq_len(bs)
            for per, heads in (("group", GROUPS), ("head", QUERY_HEADS)):
                iq = torch.randn(1, N, heads, Di, device="cuda", generator=g, dtype=torch.bfloat16)
                ik = torch.randn(1, N, 1, Di, device="cuda", generator=g, dtype=torch.bfloat16)
                for pooling in POOLINGS:
                    for sinks in ((0, 2) if Di == 128 else (0,)):
                        args = dict(block_size=bs, top_k=TOP_K, pooling=pooling, per=per, sink_blocks=sinks)
                        t = time.perf_counter()
                        got = ml.select_msa(iq, ik, backend="triton", **args).validate()
                        torch.cuda.synchronize()
                        first_call = time.perf_counter() - t  # compile included
                        ref = ml.select_msa(iq, ik, **args)
                        differs = (ref.dense_mask() != got.dense_mask()).any(-1)
                        own = torch.arange(N, device="cuda") // bs
                        rows.append(dict(
                            Di=Di, block_size=bs, N=N, per=per, heads=heads, pooling=pooling, sink_blocks=sinks,
                            top_k=TOP_K, dtype="bfloat16", same_per=got.per == per,
                            local_block_first=bool((got.indices[..., 0] == own).all()),
                            share_rows_differ=differs.float().mean().item(),
                            rows_differ=int(differs.sum()),
                            max_swap_gap=swap_gap(iq, ik, ref, got, bs, pooling),
                            first_call_seconds=first_call))
                torch.cuda.empty_cache()


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = gpu_environment()
    print(json.dumps(env), flush=True)
    rows = ResultRows(out / "msa_ablations_gpu.json", env)
    t = time.perf_counter()
    check(rows)
    worst = max(r["share_rows_differ"] for r in rows)
    print(f"{len(rows)} configurations in {time.perf_counter() - t:.1f} s; largest share of rows that "
          f"differ: {worst:.3%}; largest swap gap: {max(r['max_swap_gap'] for r in rows):.2e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/msa_ablations_gpu")
