"""DSA's Triton kernels on the GPU (issue 16): correctness against the reference, then the
stages and the whole operator against dense SDPA cuDNN and the MSA operator in the same process.
MSA's head config: Hq=64, Hkv=4, D=128, bf16, batch 1; DSA's budget of 2048 tokens per query
(MSA's 16 blocks x 128); random normal inputs (index weights uniform in (0, 1)).

1. check: at 8K, the selection kernel against the reference on the same inputs (float32: every
   row; bf16: the share of rows that differ, and the share that differ from the float32 reference
   of the unrounded inputs); at 4K, the token-gather forward and backward against float64.
2. stages: at each length, index scores, torch.topk, the take kernel, the whole selection, the
   attention forward, forward + backward; the whole operator; dense cuDNN; MSA's operator.
3. indexer: the selection at 32K for H_I in {4, 16, 64} and Di in {64, 128}.

Useful FLOPs: indexer ``2 * H_I * Di * N^2 / 2``; attention ``4 * Hq * D * sum_t min(2048, t + 1)``
(QK and PV over the selected tokens); dense causal ``4 * Hq * D * N^2 / 2``.

Usage: python experiments/bench_dsa.py OUT_DIR [--sections check stages indexer] [--lengths 32768 131072]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench import event_timed  # noqa: E402
from msa_lab.select import dsa_triton  # noqa: E402
from msa_lab.triton_runtime import dot_pad, dot_precision, kernel_settings  # noqa: E402

HQ, HKV, D, TOP_K = 64, 4, 128, 2048
parser = argparse.ArgumentParser()
parser.add_argument("out_dir")
parser.add_argument("--sections", nargs="+", default=["check", "stages", "indexer"])
parser.add_argument("--lengths", nargs="+", type=int, default=[32768, 131072])
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
rows = result_rows(Path(args.out_dir) / "bench_dsa.json", announce=True)
gen = torch.Generator(device="cuda").manual_seed(0)


def randn(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", generator=gen, dtype=dtype)


def index_inputs(N, H, Di, dtype=torch.bfloat16):
    w = torch.rand(1, N, H, device="cuda", generator=gen).to(dtype)
    return randn(1, N, H, Di, dtype=dtype), randn(1, N, 1, Di, dtype=dtype), w


def timed(fn):
    return event_timed(fn, args.repeats)


def tflops(flop, t):
    return flop / (t["median_ms"] * 1e-3) / 1e12


def attended(N, K=TOP_K):
    t = torch.arange(N, dtype=torch.float64)
    return float(torch.clamp(t + 1, max=K).sum())


def differing(a, b):
    return float((a.canonical().indices != b.canonical().indices).any(-1).double().mean())


if "check" in args.sections:
    N = 8192
    iq, ik, w = index_inputs(N, 4, 128, torch.float32)
    ref = ml.select_dsa(iq, ik, w, top_k=TOP_K)
    rows.append(dict(what="selection float32 vs reference", seq_len=N,
                     rows_differ=differing(ml.select_dsa(iq, ik, w, top_k=TOP_K, backend="triton"), ref)))
    half = [x.bfloat16() for x in (iq, ik, w)]
    got = ml.select_dsa(*half, top_k=TOP_K, backend="triton")
    rows.append(dict(what="selection bf16 vs reference on the same bf16 inputs", seq_len=N,
                     rows_differ=differing(got, ml.select_dsa(*half, top_k=TOP_K))))
    rows.append(dict(what="selection bf16 vs float32 reference of the unrounded inputs", seq_len=N,
                     rows_differ=differing(got, ref)))
    N = 4096  # the float64 autograd reference holds every chunk's probabilities: 8.6 GB at 4K
    got = ml.select_dsa(*(x[:, :N] for x in half), top_k=TOP_K, backend="triton")
    q, k, v = (x.requires_grad_() for x in (randn(1, N, HQ, D), randn(1, N, HKV, D), randn(1, N, HKV, D)))
    out = ml.block_sparse_attention(q, k, v, got, backend="triton")
    dout = randn(1, N, HQ, D)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out = ml.block_sparse_attention(q64, k64, v64, got)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    rows.append(dict(what="token gather bf16 vs float64", seq_len=N, out=rel_err(out, ref_out),
                     **{f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}))
    del q, k, v, q64, k64, v64, ref_out, ref_grads, grads, out

if "stages" in args.sections:
    for N in args.lengths:
        iq, ik, w = index_inputs(N, 4, 128)
        q, k, v = randn(1, N, HQ, D), randn(1, N, HKV, D), randn(1, N, HKV, D)
        base = dict(seq_len=N, index_heads=4, index_dim=128, top_k=TOP_K)
        index_flop = 2 * 4 * 128 * N * N / 2
        attend_flop = 4 * HQ * D * attended(N)
        t = timed(lambda: ml.select_dsa(iq, ik, w, top_k=TOP_K, backend="triton"))
        rows.append(dict(what="selection (scores, topk, take)", **base, **t, index_tflops=tflops(index_flop, t)))
        # the selection's stages on one chunk's buffer (the whole sequence at these lengths when it fits)
        C = min(N - TOP_K, kernel_settings().score_bytes // (4 * N) // 64 * 64)
        q0, q1 = N - C, N
        scores = torch.empty(1, C, q1, device="cuda")
        launch = lambda: dsa_triton._index_scores[(-(-C // dsa_triton.BLOCK_ROWS), -(-q1 // dsa_triton.BLOCK_KEYS), 1)](  # noqa: E731
            iq, ik, w, scores, q0, q1, iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(1),
            w.stride(0), w.stride(1), w.stride(2), scores.stride(0), scores.stride(1), H=4,
            BM=dsa_triton.BLOCK_ROWS, BN=dsa_triton.BLOCK_KEYS, DI=128, DI_PAD=dot_pad(128),
            PRECISION=dot_precision(iq.dtype), num_warps=dsa_triton.NUM_WARPS)
        t = timed(launch)
        chunk_flop = 2 * 4 * 128 * C * (q0 + q1) / 2
        rows.append(dict(what=f"index scores kernel, last {C} rows", **base, **t, tflops=tflops(chunk_flop, t)))
        rows.append(dict(what=f"torch.topk of the scores, last {C} rows", **base,
                         **timed(lambda: torch.topk(scores, TOP_K, dim=-1, sorted=False))))
        sel = ml.select_dsa(iq, ik, w, top_k=TOP_K, backend="triton")
        t = timed(lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton"))
        rows.append(dict(what="token gather forward", **base, **t, tflops=tflops(attend_flop, t)))
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        dout = randn(1, N, HQ, D)

        def fwd_bwd():
            out = ml.block_sparse_attention(*leaves, sel, backend="triton")
            torch.autograd.grad(out, leaves, dout)

        t = timed(fwd_bwd)
        rows.append(dict(what="token gather forward + backward", **base, **t, tflops=tflops(3.5 * attend_flop, t)))
        dsa = timed(lambda: ml.dsa_attention(q, k, v, iq, ik, w, top_k=TOP_K, backend="triton"))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            dense = timed(lambda: ml.full_attention(q, k, v, backend="sdpa"))
        msa_iq, msa_ik = randn(1, N, HKV, 128), randn(1, N, 1, 128)
        msa = timed(lambda: ml.msa_attention(q, k, v, msa_iq, msa_ik, block_size=128, top_k=16, backend="triton"))
        rows.append(dict(what="whole DSA operator", **base, **dsa, speedup_vs_dense=dense["median_ms"] / dsa["median_ms"],
                         vs_msa=msa["median_ms"] / dsa["median_ms"]))
        rows.append(dict(what="dense SDPA cuDNN", **base, **dense, tflops=tflops(4 * HQ * D * N * N / 2, dense)))
        rows.append(dict(what="whole MSA operator (block 128, top-16)", **base, **msa))
        del iq, ik, w, q, k, v, scores, sel, leaves, dout, msa_iq, msa_ik
        torch.cuda.empty_cache()

if "indexer" in args.sections:
    N = 32768
    for H in (4, 16, 64):
        for Di in (64, 128):
            iq, ik, w = index_inputs(N, H, Di)
            t = timed(lambda: ml.select_dsa(iq, ik, w, top_k=TOP_K, backend="triton"))
            rows.append(dict(what="selection", seq_len=N, index_heads=H, index_dim=Di, **t,
                             index_tflops=tflops(2 * H * Di * N * N / 2, t)))
