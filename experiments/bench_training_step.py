"""Block-sparse attention for training on the GPU: the KV-outer backward against autograd
through the reference, then the attention's training step (forward + backward) of MSA
against dense SDPA at 32K-128K tokens, MSA's config (Hq=64, Hkv=4, D=128, block 128, top-16,
bf16, batch 1).

Timed per length: MSA selection (Triton index kernels, no gradient), KV-outer forward alone,
forward + backward (fast: dK/dV by atomics; deterministic),
the index KL loss over the selected tokens (forward + backward, the Triton kernels with the
attention's LSE given, bf16 index inputs), the whole MSA attention step as msa_lab.nn.Attention runs it
(selection, attention forward with its LSE, index KL, one backward through both), and dense
SDPA forward + backward with the cuDNN and FlashAttention backends. The plain-PyTorch index
KL (1.6-6.8 s per step here) was timed in bench_training_step_h200.json and
bench_index_kl_*_h200.json.

Usage: python experiments/bench_training_step.py OUT_DIR [--lengths N ...] [--sections ...]
"""

import argparse
import contextlib
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench.timing import time_call  # noqa: E402
from msa_lab.kernels.kv_outer import kv_outer_attention  # noqa: E402
from msa_lab.kernels import kv_outer_bwd  # noqa: E402
from msa_lab.kernels.kv_outer_bwd import KVOuterAttention  # noqa: E402
from msa_lab.nn import index_kl_loss  # noqa: E402
from msa_lab.triton_runtime import using_kernel_settings  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("out_dir", nargs="?", default="results/training_step")
parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072], help="timed sequence lengths")
SECTIONS = ["checks", "tiles", "steps", "dense"]
parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS,
                    help="gradient checks; the backward's tile sweep (else its default tile); the sparse "
                         "steps; dense SDPA")
args = parser.parse_args()
rows = result_rows(Path(args.out_dir) / "bench_training_step.json")
gen = torch.Generator(device="cuda").manual_seed(0)


def rnd(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", generator=gen, dtype=dtype)


def grads(q, k, v, sel, dout, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = ml.block_sparse_attention(q, k, v, sel, **kw)
    out.backward(dout.to(out.dtype))
    return q.grad, k.grad, v.grad


# 1. Correctness: gradients of every dtype against autograd through the float64 reference.
script_settings = contextlib.ExitStack()  # kernel settings this run chooses, for the rest of it
if "checks" in args.sections:
    CHECKS = [  # B, N, Hq, Hkv, D, block, top_k, per (the full grid ran in v1: bench_training_step_v1_h200.json)
        (1, 2048, 64, 4, 128, 128, 16, "group"),   # MSA's config, small N
        (1, 1777, 32, 2, 128, 96, 8, "head"),      # per head (MoBA), G = 16, block split 64 + 32
    ]
    for B, N, Hq, Hkv, D, bs, K, per in CHECKS:
        q, k, v = rnd(B, N, Hq, D, dtype=torch.float64), rnd(B, N, Hkv, D, dtype=torch.float64), \
            rnd(B, N, Hkv, D, dtype=torch.float64)
        dout = rnd(B, N, Hq, D, dtype=torch.float64)
        iq, ik = rnd(B, N, Hkv, 64, dtype=torch.float32), rnd(B, N, 1, 64, dtype=torch.float32)
        sel = ml.select_msa(iq, ik, block_size=bs, top_k=K) if per == "group" else \
            ml.select_moba(q.float(), k.float(), block_size=bs, top_k=K)
        ref = grads(q, k, v, sel, dout)
        for dtype in (torch.bfloat16, torch.float32):
            for deterministic in (False, True):
                got = grads(q.to(dtype), k.to(dtype), v.to(dtype), sel, dout, backend="triton",
                            deterministic=deterministic)
                errs = {f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", got, ref)}
                rows.append(dict(what="backward check", B=B, N=N, Hq=Hq, Hkv=Hkv, D=D, block_size=bs, top_k=K, per=per,
                                 dtype=str(dtype).split(".")[-1], deterministic=deterministic, **errs,
                                 nan=any(torch.isnan(g).any().item() for g in got)))
        del q, k, v, dout, ref

    # Determinism: the deterministic mode twice, bitwise; the fast mode's run-to-run difference.
    q, k, v = rnd(1, 8192, 64, 128), rnd(1, 8192, 4, 128), rnd(1, 8192, 4, 128)
    dout = rnd(1, 8192, 64, 128)
    sel = ml.select_msa(rnd(1, 8192, 4, 128), rnd(1, 8192, 1, 128), block_size=128, top_k=16, backend="triton")
    for deterministic in (True, False):
        a, b = grads(q, k, v, sel, dout, backend="triton", deterministic=deterministic), \
            grads(q, k, v, sel, dout, backend="triton", deterministic=deterministic)
        rows.append(dict(what="run to run", N=8192, deterministic=deterministic,
                         bitwise_equal=all(torch.equal(x, y) for x, y in zip(a, b)),
                         max_rel_diff=max(rel_err(x, y) if not torch.equal(x, y) else 0.0 for x, y in zip(a, b))))
    del q, k, v, dout

# 2. Tile of the backward kernel: keys per program x warps, fast mode, 32K, MSA's config.
Hq, Hkv, D, Di, BS, K = 64, 4, 128, 128, 128, 16
if "tiles" in args.sections:
    N = 32768
    q, k, v, dout = rnd(1, N, Hq, D), rnd(1, N, Hkv, D), rnd(1, N, Hkv, D), rnd(1, N, Hq, D)
    sel = ml.select_msa(rnd(1, N, Hkv, Di), rnd(1, N, 1, Di), block_size=BS, top_k=K, backend="triton")
    out, lse = kv_outer_attention(q, k, v, sel, D ** -0.5)
    best = None
    for keys, warps in ((128, 4), (128, 8), (64, 4), (64, 8), (32, 4), (32, 8)):
        t = time_call(lambda: kv_outer_bwd.kv_outer_backward(q, k, v, out, lse, dout, sel, D ** -0.5,
                                                              keys_per_program=keys, num_warps=warps), "cuda")
        rows.append(dict(what="backward tile", N=N, keys_per_program=keys, num_warps=warps, **t))
        if best is None or t["median_ms"] < best[0]:
            best = (t["median_ms"], keys, warps)
    # The rest of the script trains with the chosen tile.
    script_settings.enter_context(using_kernel_settings(backward_keys_per_program=best[1], backward_num_warps=best[2]))
    rows.append(dict(what="backward tile chosen", keys_per_program=best[1], num_warps=best[2]))
    del q, k, v, dout, out, lse, sel

# 3. Training step of the attention at MSA's config.
for N in args.lengths if {"steps", "dense"} & set(args.sections) else ():
    q, k, v = rnd(1, N, Hq, D), rnd(1, N, Hkv, D), rnd(1, N, Hkv, D)
    iq, ik = rnd(1, N, Hkv, Di), rnd(1, N, 1, Di)
    dout = rnd(1, N, Hq, D)
    scale = D ** -0.5
    sel = ml.select_msa(iq, ik, block_size=BS, top_k=K, backend="triton")
    tokens = float(sel.tokens_per_query().float().sum()) * (Hq // Hkv)  # (query, head, key) triples
    fwd_flop = 4 * D * tokens
    base = dict(N=N, Hq=Hq, Hkv=Hkv, D=D, block_size=BS, top_k=K, dtype="bf16")

    def record(what, fn, flop=None, max_seconds=60):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time_call(fn, "cuda", max_seconds=max_seconds)
        row = dict(what=what, **base, **t, peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9)
        if flop:
            row["useful_tflops"] = flop / t["median_ms"] / 1e9
        rows.append(row)

    if "steps" in args.sections:
        record("msa selection", lambda: ml.select_msa(iq, ik, block_size=BS, top_k=K, backend="triton"))
        record("kv-outer forward", lambda: kv_outer_attention(q, k, v, sel, scale), fwd_flop)
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

        def sparse_step(deterministic):
            def step():
                out, _ = KVOuterAttention.apply(qg, kg, vg, sel, scale, deterministic, None)
                torch.autograd.grad(out, (qg, kg, vg), dout)
            return step

        record("kv-outer forward+backward", sparse_step(False), 3.5 * fwd_flop)  # backward: 5 of the 7 matmuls
        record("kv-outer forward+backward deterministic", sparse_step(True), 3.5 * fwd_flop)
        # bf16 index inputs, as the indexer emits them under train.dtype: bf16-mixed
        iqg, ikg = iq.detach().requires_grad_(), ik.detach().requires_grad_()
        lse = kv_outer_attention(q, k, v, sel, scale)[1]
        record("index KL on selected tokens forward+backward (triton, LSE given)",
               lambda: torch.autograd.grad(index_kl_loss(iqg, ikg, q, k, sel, backend="triton", lse=lse), (iqg, ikg)))

        def msa_step():
            with torch.no_grad():
                step_sel = ml.select_msa(iqg, ikg, block_size=BS, top_k=K, backend="triton")
            out, step_lse = ml.block_sparse_attention(qg, kg, vg, step_sel, backend="triton", return_lse=True)
            kl = index_kl_loss(iqg, ikg, qg, kg, step_sel, backend="triton", lse=step_lse)
            torch.autograd.grad((out, kl), (qg, kg, vg, iqg, ikg), (dout, torch.ones_like(kl)))

        record("msa attention step: selection + attention + index KL, forward+backward", msa_step, 3.5 * fwd_flop)
        del qg, kg, vg, iqg, ikg, lse
    dense_flop = 4 * D * Hq * N * (N + 1) / 2
    dense = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION))
    for name, backend in dense if "dense" in args.sections else ():
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        dt = dout.transpose(1, 2)

        def dense_step():
            with sdpa_kernel(backend):
                out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
            torch.autograd.grad(out, (qt, kt, vt), dt)
        try:
            record(f"sdpa {name} forward+backward", dense_step, 3.5 * dense_flop)
        except RuntimeError as err:
            rows.append(dict(what=f"sdpa {name} forward+backward", **base, error=str(err)[:300]))
        del qt, kt, vt
    del q, k, v, iq, ik, dout, sel
    torch.cuda.empty_cache()

print("wrote", rows.path)
