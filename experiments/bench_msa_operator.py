"""The whole MSA operator (index scores, top-k, query lists, attention, merge) against dense
attention, up to 1M tokens (issue: Triton kernels). MSA's config: Hq=64, Hkv=4, D=128,
Di=128 (one shared index key head), bf16, block 128, top-16, batch 1, random inputs.

1. Selection correctness: Triton index kernels vs select_msa's reference (float32 inputs:
   identical sets expected; bf16 inputs: share of identical rows reported).
2. 128K: Triton selection vs the reference selection; the exp-free top-k kernel vs
   torch.topk on the same score buffer.
3. 1M (and 128K): the whole operator and its stages, median of REPEATS event-timed runs
   after a warm-up (a 1M call takes seconds; do_bench's defaults would take minutes), and
   dense SDPA cuDNN timed the same way.

4. MoBA: the Triton gate + top-k against select_moba's reference (identical rows), and its
   time at 128K (per-head selection, block 128, top-16).

Usage: python experiments/bench_msa_operator.py OUT_DIR [--sections selection operator moba]
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench import event_timed  # noqa: E402
from msa_lab.kernels import kv_outer  # noqa: E402
from msa_lab.select.topk_triton import top_blocks_kernel  # noqa: E402
from msa_lab.triton_runtime import kernel_settings  # noqa: E402

REPEATS = 5


def timed(fn, repeats=REPEATS):
    return event_timed(fn, repeats)


def inputs(N, dtype=torch.bfloat16, seed=0, Hq=64, Hkv=4, D=128, Di=128):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=g, dtype=dtype) for h in (Hq, Hkv, Hkv))
    iq = torch.randn(1, N, Hkv, Di, device="cuda", generator=g, dtype=dtype)
    ik = torch.randn(1, N, 1, Di, device="cuda", generator=g, dtype=dtype)
    return q, k, v, iq, ik


def selection_checks(rows):
    for N, dtype in ((8191, torch.float32), (65536, torch.float32), (65536, torch.bfloat16)):
        _, _, _, iq, ik = inputs(N, dtype, seed=N)
        ref = ml.select_msa(iq, ik, block_size=128, top_k=16).canonical().indices
        got = ml.select_msa(iq, ik, block_size=128, top_k=16, backend="triton").validate().canonical().indices
        same = (ref == got).all(-1).float().mean().item()
        rows.append(dict(check="triton selection vs reference", N=N, dtype=str(dtype)[6:],
                         identical_rows=same, local_block_in_slot0=True))


def selection_timing(rows, N=131072):
    _, _, _, iq, ik = inputs(N)
    rows.append(dict(N=N, what="select_msa reference", **timed(lambda: ml.select_msa(iq, ik), 2)))
    rows.append(dict(N=N, what="select_msa triton (scores + top-k)",
                     **timed(lambda: ml.select_msa(iq, ik, backend="triton"))))
    nb = N // 128
    scores = torch.randn(1, 4, N, nb, device="cuda")
    sel = torch.empty(1, 4, N, 16, device="cuda", dtype=torch.int32)
    rows.append(dict(N=N, what="top-k kernel alone", **timed(lambda: top_blocks_kernel[(N, 4, 1)](
        scores, sel, 0, *scores.stride()[:3], *sel.stride()[:3], K=16, BS=128, NB_PAD=nb,
        ROW_TILE=kernel_settings().top_k_row_tile))))
    rows.append(dict(N=N, what="torch.topk on the same scores (no causal mask, no ties rule)",
                     **timed(lambda: torch.topk(scores, 16, dim=-1))))


def operator(rows, N):
    q, k, v, iq, ik = inputs(N)
    D, Hq = 128, 64
    dense_flop = 4 * Hq * D * N * N / 2
    sel = ml.select_msa(iq, ik, backend="triton")
    useful = 4 * D * float(sel.tokens_per_query().sum()) * (Hq // 4) + 2 * 4 * 128 * N * N / 2
    base = dict(N=N, Hq=Hq, Hkv=4, D=D, Di=128, block=128, top_k=16, dtype="bf16",
                dense_equiv_flop=dense_flop, useful_flop=useful)
    stages = {
        "stage: selection (index scores + top-k)": lambda: ml.select_msa(iq, ik, backend="triton"),
        "stage: attention (lists + KV-outer + merge)": lambda: ml.block_sparse_attention(q, k, v, sel,
                                                                                        backend="triton"),
        "whole MSA operator": lambda: ml.msa_attention(q, k, v, iq, ik, backend="triton"),
    }
    for name, fn in stages.items():
        t = timed(fn)
        rows.append(dict(base, what=name, **t, useful_tflops=useful / t["median_ms"] / 1e9 if "whole" in name else None))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        t = timed(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True),
                  repeats=3 if N > 300000 else REPEATS)
    rows.append(dict(base, what="dense SDPA cuDNN", **t, tflops=dense_flop / t["median_ms"] / 1e9))
    whole = next(r for r in rows[::-1] if r.get("what") == "whole MSA operator" and r["N"] == N)
    rows.append(dict(base, what="speedup of the whole MSA operator over dense cuDNN",
                     speedup=t["median_ms"] / whole["median_ms"]))


def moba(rows, N=131072):
    for n, dtype in ((16384, torch.float32), (65536, torch.bfloat16)):
        q, k, _, _, _ = inputs(n, dtype, seed=n)
        ref = ml.select_moba(q, k, block_size=128, top_k=16).canonical().indices
        got = ml.select_moba(q, k, block_size=128, top_k=16, backend="triton").validate().canonical().indices
        rows.append(dict(check="moba triton selection vs reference", N=n, dtype=str(dtype)[6:],
                         identical_rows=(ref == got).all(-1).float().mean().item()))
    q, k, v, _, _ = inputs(N)
    rows.append(dict(N=N, what="select_moba reference", **timed(lambda: ml.select_moba(q, k, block_size=128, top_k=16), 2)))
    rows.append(dict(N=N, what="select_moba triton", **timed(
        lambda: ml.select_moba(q, k, block_size=128, top_k=16, backend="triton"))))
    rows.append(dict(N=N, what="moba_attention triton (selection + KV-outer per head)", **timed(
        lambda: ml.moba_attention(q, k, v, block_size=128, top_k=16, backend="triton"))))


def main(out_dir, sections):
    rows = result_rows(Path(out_dir) / "bench_msa_operator.json", announce=True,
                       partial_bytes=kv_outer.partial_budget(torch.device('cuda')),
                       score_bytes=kernel_settings().score_bytes)
    if "selection" in sections:
        selection_checks(rows)
        selection_timing(rows)
    for N in (131072, 1 << 20) if "operator" in sections else ():
        operator(rows, N)
        torch.cuda.empty_cache()
    if "moba" in sections:
        moba(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--sections", nargs="*", default=["selection", "operator", "moba"],
                        choices=["selection", "operator", "moba"])
    args = parser.parse_args()
    main(args.out_dir, args.sections)
