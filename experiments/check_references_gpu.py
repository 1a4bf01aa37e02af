"""GPU check of the references (issue: core library).

1. Agreement on CUDA: every reference on CUDA against the same reference on the CPU
   (float64 inputs), and block-sparse attention through compiled FlexAttention against the
   reference (fp16/bf16/fp32, head dims 64 and 128, GQA 1..16, N not a multiple of the block).
2. The references as oracles at 64K tokens (MSA's published heads: Hq=64, Hkv=4, D=128,
   bf16, block 128, top-16): wall time of each, synchronised, one run after a warm-up.
3. Coverage at 1M tokens on sampled rows: recall of 4 rows re-derived directly in float64.

Usage: python experiments/check_references_gpu.py OUT_DIR   (needs only torch + msa_lab)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - t


def agreement(rows):
    dev = "cuda"
    for (N, Hq, Hkv, D, bs, topk) in [(300, 8, 2, 64, 64, 3), (517, 16, 1, 128, 128, 3),
                                      (1000, 4, 4, 64, 96, 4), (777, 12, 3, 128, 64, 5)]:
        q, k, v = (torch.randn(2, N, h, D, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
        iq, ik = torch.randn(2, N, Hkv, 32, dtype=torch.float64), torch.randn(2, N, 1, 32, dtype=torch.float64)
        cpu = dict(full=ml.full_attention(q, k, v),
                   moba=ml.moba_attention(q, k, v, block_size=bs, top_k=topk, return_selection=True),
                   msa=ml.msa_attention(q, k, v, iq, ik, block_size=bs, top_k=topk, return_selection=True),
                   oracle=ml.select_oracle(q, k, block_size=bs, top_k=topk))
        qc, kc, vc, iqc, ikc = (x.to(dev) for x in (q, k, v, iq, ik))
        gpu = dict(full=ml.full_attention(qc, kc, vc),
                   moba=ml.moba_attention(qc, kc, vc, block_size=bs, top_k=topk, return_selection=True),
                   msa=ml.msa_attention(qc, kc, vc, iqc, ikc, block_size=bs, top_k=topk, return_selection=True),
                   oracle=ml.select_oracle(qc, kc, block_size=bs, top_k=topk))
        cov_cpu = ml.coverage(q, k, cpu["msa"][1], rows=64, seed=1)
        cov_gpu = ml.coverage(qc, kc, gpu["msa"][1], rows=64, seed=1)
        shape = f"N={N} Hq={Hq} Hkv={Hkv} D={D} block={bs} top_k={topk}"
        rows.append(dict(check="cuda vs cpu, float64", shape=shape,
                         full=rel_err(gpu["full"].cpu(), cpu["full"]),
                         moba_out=rel_err(gpu["moba"][0].cpu(), cpu["moba"][0]),
                         moba_same_selection=gpu["moba"][1].to("cpu").equals(cpu["moba"][1]),
                         msa_out=rel_err(gpu["msa"][0].cpu(), cpu["msa"][0]),
                         msa_same_selection=gpu["msa"][1].to("cpu").equals(cpu["msa"][1]),
                         oracle_same_selection=gpu["oracle"].to("cpu").equals(cpu["oracle"]),
                         coverage_recall=rel_err(cov_gpu.recall, cov_cpu.recall)))
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for per, sel in (("group", gpu["msa"][1]), ("head", gpu["moba"][1])):
                x = [t.to(dtype) for t in (qc, kc, vc)]
                ref, ref_lse = ml.block_sparse_attention(*(t.float() for t in x), sel, return_lse=True)
                out, lse = ml.block_sparse_attention(*x, sel, backend="flex", return_lse=True)
                rows.append(dict(check=f"flex (compiled) vs reference, {str(dtype)[6:]}, per {per}",
                                 shape=shape, out=rel_err(out, ref), lse=rel_err(lse, ref_lse)))


def oracle_timings(rows, N=65536, Hq=64, Hkv=4, D=128, bs=128, topk=16):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
    iq, ik = torch.randn(1, N, Hkv, 128, device="cuda", generator=g, dtype=torch.bfloat16), \
        torch.randn(1, N, 1, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    ml.full_attention(q[:, :2048], k[:, :2048], v[:, :2048])  # warm-up
    shape = f"N={N} Hq={Hq} Hkv={Hkv} D={D} bf16 block={bs} top_k={topk}"
    o_full, t = timed(lambda: ml.full_attention(q, k, v))
    rows.append(dict(check="reference time", shape=shape, what="full_attention (reference, fp32 math)", seconds=t))
    o_sdpa, t = timed(lambda: ml.full_attention(q, k, v, backend="sdpa"))
    rows.append(dict(check="reference time", shape=shape, what="full_attention backend=sdpa", seconds=t,
                     rel_err_vs_reference=rel_err(o_sdpa, o_full)))
    sel, t = timed(lambda: ml.select_msa(iq, ik, block_size=bs, top_k=topk))
    rows.append(dict(check="reference time", shape=shape, what="select_msa", seconds=t))
    moba, t = timed(lambda: ml.select_moba(q, k, block_size=bs, top_k=topk))
    rows.append(dict(check="reference time", shape=shape, what="select_moba", seconds=t))
    oracle, t = timed(lambda: ml.select_oracle(q, k, block_size=bs, top_k=topk))
    rows.append(dict(check="reference time", shape=shape, what="select_oracle", seconds=t))
    o_sparse, t = timed(lambda: ml.block_sparse_attention(q, k, v, sel))
    rows.append(dict(check="reference time", shape=shape, what="block_sparse_attention (reference)", seconds=t))
    _, t = timed(lambda: ml.block_sparse_attention(q, k, v, sel, backend="flex"))
    o_flex, t2 = timed(lambda: ml.block_sparse_attention(q, k, v, sel, backend="flex"))
    rows.append(dict(check="reference time", shape=shape, what="block_sparse_attention backend=flex "
                     "(second call; first incl. compile and mask)", seconds=t2, first_call_seconds=t,
                     rel_err_vs_reference=rel_err(o_flex, o_sparse)))
    cov, t = timed(lambda: ml.coverage(q, k, {"msa": sel, "moba": moba, "oracle": oracle}, rows=4096))
    rows.append(dict(check="reference time", shape=shape, what="coverage of 3 selections, 4096 sampled rows",
                     seconds=t, msa_recall=cov["msa"].summary()["recall"]["mean"],
                     oracle_recall=cov["oracle"].summary()["recall"]["mean"]))
    rows.append(dict(check="reference time", shape=shape, what="peak GPU memory (GiB)",
                     seconds=float("nan"), peak_gib=torch.cuda.max_memory_allocated() / 2**30))


def coverage_1m(rows, N=1 << 20, Hq=64, Hkv=4, D=128, bs=128, topk=16):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, N, Hq, D, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(1, N, Hkv, D, device="cuda", generator=g, dtype=torch.bfloat16)
    sel = ml.select_window(q, k, block_size=bs, top_k=topk)
    rep, t = timed(lambda: ml.coverage(q, k, sel, rows=256, seed=0))
    # direct float64 re-derivation for 4 of the sampled rows
    worst = 0.0
    for i in (0, 85, 170, 255):
        p = int(rep.positions[i])
        s = torch.einsum("gxd,jgd->gxj", q[0, p].double().view(Hkv, Hq // Hkv, D),
                         k[0, :p + 1].double()) * D ** -0.5
        prob = s.flatten(0, 1).softmax(-1)
        first = max(0, (p // bs - topk + 1) * bs)
        direct = prob[:, first:].sum(-1)
        worst = max(worst, float((rep.recall[0, :, i].double() - direct.cpu()).abs().max()))
    rows.append(dict(check="coverage at 1M tokens, 256 sampled rows", shape=f"N={N} Hq={Hq} Hkv={Hkv} D={D} bf16 "
                     f"window block={bs} top_k={topk}", seconds=t, recall_mean=rep.summary()["recall"]["mean"],
                     max_abs_diff_vs_direct_fp64=worst))


def main(out_dir):
    rows = result_rows(Path(out_dir) / "reference_check_gpu.json", announce=True)
    for step in (agreement, oracle_timings, coverage_1m):
        t = time.perf_counter()
        step(rows)
        print(f"{step.__name__}: {time.perf_counter() - t:.1f} s", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/gpu_check")
