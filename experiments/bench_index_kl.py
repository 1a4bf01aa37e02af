"""MSA's index KL loss over the selected tokens on the GPU: the fused Triton kernels
(``msa_lab/kernels/index_kl.py``) against the PyTorch reference of ``index_kl_loss``.

1. Correctness: loss, d index_q and d index_k of the kernels against the reference on
   float64 copies of the same inputs, for bf16, fp32 and mixed (bf16 q/k, fp32 index)
   inputs, at a few sizes with odd N and G in {1, 4, 8, 16}; with the main attention's LSE
   passed in and recomputed; run-to-run difference (the gradients use float32 atomics).
2. Tiles: tokens per tile x warps of each pass at 32K, MSA's config; the fastest is kept.
3. Timing, loss + gradients, at 32K, 64K, 128K, MSA's config (Hq=64, Hkv=4, D=Di=128,
   block 128, top-16, bf16 q/k, batch 1), index inputs in fp32 (as bench_training_step.py
   timed the reference) and bf16: the reference, and the kernels with the teacher's LSE
   recomputed or passed in (the attention's forward returns it).

Usage: python experiments/bench_index_kl.py --out OUT.json [--lengths N ...] [--skip-tiles] [--skip-checks]
       python experiments/bench_index_kl.py --smoke --out /tmp/smoke.json   (CPU, interpreted)
"""

import argparse
import os
import sys

import torch

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--out", required=True, help="JSON file for the result rows")
parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU through TRITON_INTERPRET=1")
parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072], help="timed sequence lengths")
parser.add_argument("--skip-tiles", action="store_true", help="time the default tiles only")
parser.add_argument("--skip-checks", action="store_true",
                    help="no float64 checks at small sizes (about 5 minutes on an H200); the check at the "
                         "first timed length still runs")
args = parser.parse_args()
if args.smoke and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before msa_lab's kernels are defined

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench.timing import time_call  # noqa: E402
from msa_lab.kernels import index_kl as kernel  # noqa: E402
from msa_lab.nn import index_kl_loss  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
if dev == "cpu" and not args.smoke:
    sys.exit("no CUDA GPU: run with --smoke for the interpreted CPU check")
rows = result_rows(args.out, smoke=args.smoke)
gen = torch.Generator(device=dev).manual_seed(0)
NAMES = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)


def rnd(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device=dev, generator=gen, dtype=dtype)


def loss_and_grads(iq, ik, q, k, sel, **kw):
    iq, ik = (x.detach().clone().requires_grad_() for x in (iq, ik))
    loss = index_kl_loss(iq, ik, q, k, sel, **kw)
    return (loss.detach(), *torch.autograd.grad(loss, (iq, ik)))


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


# 1. Correctness against the reference in float64 (a real run: on the H200, about 5 minutes in all).
CHECKS = [  # B, N, Hq, Hkv, D, Di, block, top_k
    (1, 2048, 64, 4, 128, 128, 128, 16),   # MSA's config (G = 16), small N
    (1, 3001, 64, 8, 128, 128, 128, 16),   # G = 8, odd N
    (2, 1000, 32, 8, 128, 64, 64, 20),     # G = 4, batch 2, Di < D, top_k > blocks
    (1, 1777, 8, 8, 64, 96, 96, 8),        # G = 1, block and Di not powers of 2
]
DTYPES = [("bf16", "bf16"), ("fp32", "fp32"), ("bf16", "fp32")]  # (q/k, index)
if args.smoke:  # the CPU interpreter's bf16 dot is wrong: fp16 stands in
    CHECKS = [(1, 100, 8, 2, 16, 16, 16, 4), (2, 77, 4, 4, 16, 24, 24, 3), (1, 90, 8, 1, 32, 16, 16, 9)]
    DTYPES = [("fp16", "fp16"), ("fp32", "fp32"), ("fp16", "fp32")]
if args.skip_checks:
    CHECKS = []
for B, N, Hq, Hkv, D, Di, bs, K in CHECKS:
    q, k, v = rnd(B, N, Hq, D, dtype=torch.float64), rnd(B, N, Hkv, D, dtype=torch.float64), \
        rnd(B, N, Hkv, D, dtype=torch.float64)
    iq, ik = rnd(B, N, Hkv, Di, dtype=torch.float64), rnd(B, N, 1, Di, dtype=torch.float64)
    sel = ml.select_msa(iq.float(), ik.float(), block_size=bs, top_k=K, backend="triton")
    ref = loss_and_grads(iq, ik, q, k, sel, backend="reference")
    for qk_name, index_name in DTYPES:
        qd, idt = NAMES[qk_name], NAMES[index_name]
        qc, kc, vc, iqc, ikc = q.to(qd), k.to(qd), v.to(qd), iq.to(idt), ik.to(idt)
        with torch.no_grad():
            _, lse = ml.block_sparse_attention(qc, kc, vc, sel, backend="triton", return_lse=True)
        for given in (False, True):
            got = loss_and_grads(iqc, ikc, qc, kc, sel, backend="triton", lse=lse if given else None)
            again = loss_and_grads(iqc, ikc, qc, kc, sel, backend="triton", lse=lse if given else None)
            rows.append(dict(what="check", B=B, N=N, Hq=Hq, Hkv=Hkv, D=D, Di=Di, block_size=bs, top_k=K,
                             qk_dtype=qk_name, index_dtype=index_name, lse_given=given,
                             **{f"err_{n}": rel_err(g, r) for n, g, r in zip(("loss", "diq", "dik"), got, ref)},
                             nan=any(bool(torch.isnan(g).any()) for g in got),
                             run_to_run=max(rel_err(a, b) for a, b in zip(again, got))))
    del q, k, v, iq, ik, ref

# 2. Tiles of each pass at MSA's config.
Hq, Hkv, D, Di, BS, K = 64, 4, 128, 128, 128, 16
LENGTHS, QK, INDEX, SECONDS = args.lengths, "bf16", ("bf16", "fp32"), 20
if args.smoke:
    Hq, Hkv, D, Di, BS, K, LENGTHS, QK, INDEX, SECONDS = 8, 2, 32, 32, 16, 4, (128, 200), "fp16", ("fp16", "fp32"), 1


def inputs(N, index_dtype):
    q, k = rnd(1, N, Hq, D, dtype=NAMES[QK]), rnd(1, N, Hkv, D, dtype=NAMES[QK])
    iq, ik = rnd(1, N, Hkv, Di, dtype=index_dtype), rnd(1, N, 1, Di, dtype=index_dtype)
    sel = ml.select_msa(iq, ik, block_size=BS, top_k=K, backend="triton")
    return q, k, iq, ik, sel


CANDIDATES = [(16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (64, 8)] if not args.smoke else [(16, 4), (32, 8)]
if args.skip_tiles:
    CANDIDATES = []
STAGES = (("kl and gradients", "kl"), ("lse partials", "lse"))
DEFAULT_TILES = {size: dict(passes) for size, passes in kernel.TILES.items()}
N = LENGTHS[0]
for index_name in INDEX:
    q, k, iq, ik, sel = inputs(N, NAMES[index_name])
    size = NAMES[index_name].itemsize
    tiles = kernel.TILES[size]  # the sweep edits the kernel's table in place
    for stage, pass_name in STAGES:
        best = None
        for tokens, warps in CANDIDATES:
            tiles[pass_name] = (tokens, warps)
            row = dict(what="tile", stage=stage, N=N, index_dtype=index_name, tokens=tokens, num_warps=warps)
            try:
                t = time_call(lambda: kernel.index_kl(iq, ik, q, k, sel, D ** -0.5), dev, max_seconds=SECONDS / 2)
            except Exception as err:  # noqa: BLE001 (a tile out of resources is a result)
                rows.append(dict(row, error=f"{type(err).__name__}: {str(err)[:200]}"))
                continue
            rows.append(dict(row, **t))
            if best is None or t["median_ms"] < best[0]:
                best = (t["median_ms"], tokens, warps)
        tiles[pass_name] = best[1:] if best else DEFAULT_TILES[size][pass_name]
    rows.append(dict(what="tiles chosen", index_dtype=index_name, default=DEFAULT_TILES[size], **tiles))
    del q, k, iq, ik, sel

# 3. Timing at MSA's config.


def model(sel, lse_given, qk_bytes, index_bytes):
    """Useful FLOPs and the fewest bytes of the design (docs/kernels.md, "Index KL kernel")."""
    G = Hq // Hkv
    keys = float(sel.tokens_per_query().double().sum())  # (query, group, key) triples
    entries = float((sel.indices >= 0).sum())            # (query, group, slot)
    teacher_passes = 1 if lse_given else 2
    flop = teacher_passes * 2 * D * G * keys + 4 * 2 * Di * keys  # QKᵀ per head; z twice, d iq, d ik
    q_rows = G * D * qk_bytes
    partials = 1 if lse_given else 1 + G  # float32 partial LSEs per entry: filled, written, merged
    per_entry = (teacher_passes * q_rows + 2 * Di * index_bytes  # Q rows and index rows, both passes
                 + 4 * (G + 1)                                    # the merged LSEs read in pass 2
                 + 2 * 4 * Di                                     # d index_q atomics (read + write)
                 + 3 * 4 * partials)
    return flop, entries * per_entry


summary = []
for N in LENGTHS:
    base = dict(N=N, Hq=Hq, Hkv=Hkv, D=D, Di=Di, block_size=BS, top_k=K, qk_dtype=QK)
    for index_name in INDEX[::-1]:
        q, k, iq, ik, sel = inputs(N, NAMES[index_name])
        with torch.no_grad():
            _, lse = ml.block_sparse_attention(q, k, rnd(1, N, Hkv, D, dtype=NAMES[QK]), sel, backend="triton",
                                               return_lse=True)
        iqg, ikg = iq.detach().requires_grad_(), ik.detach().requires_grad_()

        def step(backend, lse=None):
            return lambda: torch.autograd.grad(index_kl_loss(iqg, ikg, q, k, sel, backend=backend, lse=lse),
                                               (iqg, ikg))

        variants = [("triton", None), ("triton", lse)]
        if index_name == "fp32":
            variants.insert(0, ("reference", None))
        for backend, given in variants:
            sync()
            if dev == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time_call(step(backend, given), dev, max_seconds=SECONDS)
            row = dict(what="loss+backward", backend=backend, index_dtype=index_name, lse_given=given is not None,
                       **base, **t)
            if dev == "cuda":
                row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            if backend == "triton":
                flop, bytes_ = model(sel, given is not None, NAMES[QK].itemsize, NAMES[index_name].itemsize)
                row.update(model_tflop=flop / 1e12, model_gb=bytes_ / 1e9,
                           tflops=flop / t["median_ms"] / 1e9, gb_per_s=bytes_ / t["median_ms"] / 1e6)
            rows.append(row)
            summary.append((N, index_name, backend, given is not None, t["median_ms"], t["spread_pct"]))
        if N == LENGTHS[0] and index_name == "fp32":  # the kernels against the reference at full size
            ref = loss_and_grads(iq, ik, q, k, sel, backend="reference")
            got = loss_and_grads(iq, ik, q, k, sel, backend="triton")
            rows.append(dict(what="check at size", **base, index_dtype=index_name,
                             **{f"err_{n}": rel_err(g, r) for n, g, r in zip(("loss", "diq", "dik"), got, ref)},
                             nan=any(bool(torch.isnan(g).any()) for g in got)))
            del ref, got
        del q, k, iq, ik, sel, lse, iqg, ikg

print(f"\n{'N':>7} {'index':>5} {'backend':>9} {'lse given':>9} {'median ms':>10} {'spread %':>8}")
for N, index_name, backend, given, ms, spread in summary:
    print(f"{N:>7} {index_name:>5} {backend:>9} {str(given):>9} {ms:>10.2f} {spread:>8.1f}")
errs = [r for r in rows if r["what"] in ("check", "check at size")]
print(f"checks: {len(errs)}, worst rel err loss {max(r['err_loss'] for r in errs):.2e}, "
      f"d index_q {max(r['err_diq'] for r in errs):.2e}, d index_k {max(r['err_dik'] for r in errs):.2e}, "
      f"nan {any(r['nan'] for r in errs)}")
print("wrote", rows.path)
