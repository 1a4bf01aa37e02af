"""Check and time block-sparse attention kernels on the GPU (issue: Triton kernels).

1. Correctness: the KV-outer Triton kernel against the float32 reference on fresh random
   inputs, partial buffers poisoned with NaN (an unwritten slot shows), over GQA 1..16,
   head dims 64/128, N not a multiple of the block, per-group and per-head selections.
2. Timing (SPEC protocol: CUDA events via triton.testing.do_bench after warm-up, median and
   20th/80th percentiles): MSA's config (Hq=64, Hkv=4, D=128, bf16, block 128, top-16),
   the whole KV-outer and Q-outer operators, the KV-outer stages (query lists, attend,
   merge) with a sweep of attend variants, FlexAttention on the same selection, dense SDPA
   (cuDNN and FlashAttention backends), and KV-outer vs Q-outer for GQA group sizes 1..16.

Usage: python experiments/bench_block_sparse.py OUT_DIR [--sizes N ...] [--gqa-n N]
       [--sections correctness timing gqa]
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench import bench_median  # noqa: E402
from msa_lab.kernels import kv_outer  # noqa: E402
from msa_lab.kv_outer_plan import build_query_lists  # noqa: E402
from msa_lab.triton_runtime import using_kernel_settings  # noqa: E402


def bench(fn, warmup=100, rep=500):
    return bench_median(fn, warmup, rep)


def correctness(rows):
    with using_kernel_settings(poison_partials=True):  # a slot a kernel fails to write shows as NaN
        correctness_rows(rows)


def correctness_rows(rows):
    g = torch.Generator(device="cuda").manual_seed(int(time.time()))
    for (N, Hq, Hkv, D, bs, topk, per) in [(4099, 64, 4, 128, 128, 16, "group"), (3000, 8, 8, 64, 64, 8, "group"),
                                           (5000, 16, 8, 128, 128, 4, "group"), (4500, 32, 8, 64, 64, 6, "head"),
                                           (2222, 16, 1, 128, 96, 5, "group"), (8192, 32, 4, 128, 128, 16, "head"),
                                           (16384, 64, 4, 128, 128, 16, "group"), (65536, 64, 4, 128, 128, 16, "group"),
                                           (65536, 32, 8, 128, 128, 8, "head")]:
        q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=g) for h in (Hq, Hkv, Hkv))
        if per == "group":
            sel = ml.select_msa(torch.randn(1, N, Hkv, 64, device="cuda", generator=g),
                                torch.randn(1, N, 1, 64, device="cuda", generator=g), block_size=bs, top_k=topk)
        else:
            sel = ml.select_moba(q, k, block_size=bs, top_k=topk)
        ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
        for backend, dtypes in (("triton", (torch.bfloat16, torch.float16, torch.float32)),
                                ("triton_q_outer", (torch.bfloat16, torch.float32))):
            for dtype in dtypes:
                x = [t.to(dtype) for t in (q, k, v)]
                out, lse = ml.block_sparse_attention(*x, sel, backend=backend, return_lse=True)
                rows.append(dict(check=f"{backend} vs reference", N=N, Hq=Hq, Hkv=Hkv, D=D, block=bs,
                                 top_k=topk, per=per, dtype=str(dtype)[6:], out_rel_err=rel_err(out, ref),
                                 lse_rel_err=rel_err(lse, ref_lse), nan=bool(torch.isnan(out).any())))


def timing(rows, N, B=1, Hq=64, Hkv=4, D=128, bs=128, topk=16, stages=True, quick=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, N, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
    sel = ml.select_msa(torch.randn(B, N, Hkv, 128, device="cuda", generator=g, dtype=torch.bfloat16),
                        torch.randn(B, N, 1, 128, device="cuda", generator=g, dtype=torch.bfloat16),
                        block_size=bs, top_k=topk, backend="triton")
    tokens = float(sel.tokens_per_query().sum()) * (Hq // sel.num_rows_heads)
    useful = 4 * D * tokens
    dense = 4 * B * Hq * D * N * N / 2
    base = dict(N=N, B=B, Hq=Hq, Hkv=Hkv, D=D, block=bs, top_k=topk, dtype="bf16",
                dense_equiv_flop=dense, useful_flop=useful)

    reps = dict(warmup=25, rep=100) if quick else {}

    def row(method, timing, flop):
        rows.append(dict(base, method=method, **timing, tflops=flop / timing["median_ms"] / 1e9,
                         useful_tflops=useful / timing["median_ms"] / 1e9))

    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        try:
            with sdpa_kernel(backend):
                row(name, bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=True, enable_gqa=True), **reps), dense)
        except RuntimeError as err:
            rows.append(dict(base, method=name, status=f"error: {str(err)[:120]}"))
    for backend in ("triton", "triton_q_outer"):
        row(f"{backend} whole operator", bench(lambda: ml.block_sparse_attention(q, k, v, sel, backend=backend),
                                                **reps), useful)
    if not stages:
        return
    with using_kernel_settings(partial_bytes=4 << 30):  # the fixed chunking this replaced, for comparison
        row("triton whole operator, 4 GiB partial chunks",
            bench(lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton")), useful)
    scale = D ** -0.5
    try:
        ml.block_sparse_attention(q, k, v, sel, backend="flex")
        row("flex (block mask built in the timed call)",
            bench(lambda: ml.block_sparse_attention(q, k, v, sel, backend="flex")), useful)
    except (RuntimeError, ValueError) as err:
        rows.append(dict(base, method="flex", status=f"error: {str(err)[:120]}"))
    launch = kv_outer.Launch.for_forward(sel.per, Hq // Hkv, sel.block_size, D, q.dtype)
    lists = build_query_lists(sel, 0, N, launch.entries)
    row("stage: query lists", bench(lambda: build_query_lists(sel, 0, N, launch.entries)), 0)
    o_part, lse_part = kv_outer.partial_buffers(B, N, topk, Hq, D, q.dtype, q.device)
    for warps, st in ((launch.num_warps, launch.num_stages), (8, 1), (4, 2)):
        name = f"stage: attend (warps={warps}, stages={st}, rows={launch.M})"
        try:
            row(name, bench(lambda: kv_outer.attend(q, k, v, lists, o_part, lse_part, 0, scale, sel.block_size,
                                                    sel.indices.shape[1],
                                                    replace(launch, num_warps=warps, num_stages=st))), useful)
        except Exception as err:  # an impossible config (shared memory) is a result
            rows.append(dict(base, method=name, status=f"error: {str(err)[:120]}"))
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, N, device="cuda")
    row("stage: merge", bench(lambda: kv_outer.merge(o_part, lse_part, sel.indices, out, lse, 0, launch)), 0)
    part_bytes = o_part.numel() * 2 + lse_part.numel() * 4
    rows.append(dict(base, method="bytes", q_bytes=q.numel() * 2, partial_bytes=part_bytes,
                     entries=int(lists.query.numel()), work_items=lists.num_items))
    del o_part, lse_part


def main(out_dir, sizes, gqa_n, sections):
    rows = result_rows(Path(out_dir) / "bench_block_sparse.json", announce=True)
    if "correctness" in sections:
        t = time.perf_counter()
        correctness(rows)
        print(f"correctness: {time.perf_counter() - t:.0f} s", flush=True)
    for N in sizes if "timing" in sections else ():
        t = time.perf_counter()
        timing(rows, N)
        torch.cuda.empty_cache()
        print(f"timing N={N}: {time.perf_counter() - t:.0f} s", flush=True)
    if "gqa" not in sections:
        return
    t = time.perf_counter()
    for G in (1, 2, 4, 8, 16):  # KV-outer vs Q-outer by GQA group size, Hq = 64
        timing(rows, gqa_n, Hkv=64 // G, stages=False, quick=True)
        torch.cuda.empty_cache()
    print(f"GQA table at N={gqa_n}: {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--sizes", type=int, nargs="*", default=[32768, 131072])
    parser.add_argument("--gqa-n", type=int, default=131072)
    parser.add_argument("--sections", nargs="*", default=["correctness", "timing", "gqa"],
                        choices=["correctness", "timing", "gqa"])
    args = parser.parse_args()
    main(args.out_dir, args.sizes, args.gqa_n, args.sections)
