"""Decode step on the GPU: MSA decode (Triton) against dense decoding (SDPA cuDNN and
FlashAttention with one query), batch 8, MSA's config (Hq=64, Hkv=4, D=128, Di=128, bf16,
block 128, top-16). Correctness against the reference decode first (128K context), then
times at 128K and 1M context, and the share of HBM bandwidth on the minimal bytes (device
copy bandwidth measured in the same run).

Usage: python experiments/bench_decode.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench import bench_median  # noqa: E402

B, Hq, Hkv, D, Di, BS, TOPK = 8, 64, 4, 128, 128, 128, 16
out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "results/decode")
rows = result_rows(out_dir / "bench_decode.json")
g = torch.Generator(device="cuda").manual_seed(0)
src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
dst = torch.empty_like(src)
t = bench_median(lambda: dst.copy_(src))
copy_bw = 2 * src.numel() * 2 / t["median_ms"] / 1e9  # TB/s, read + write
rows.append(dict(what="device copy", **t, tb_per_s=copy_bw))


def graphed(fn):
    """``fn`` captured in a CUDA graph (after a warm-up run): replays skip launch overheads,
    as a decode loop would."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
del src, dst


def cache_of(L):
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=torch.bfloat16)  # noqa: E731
    cache = ml.KVCache(B, L, Hkv, D, index_dim=Di, dtype=torch.bfloat16, device="cuda")
    step = 1 << 16
    for s in range(0, L, step):
        n = min(step, L - s)
        cache.append(rnd(B, n, Hkv, D), rnd(B, n, Hkv, D), rnd(B, n, 1, Di))
    return cache, rnd(B, 1, Hq, D), rnd(B, 1, Hkv, Di)


for L in (131072, 1 << 20):
    cache, q, iq = cache_of(L)
    if L == 131072:
        ref, ref_ids = ml.msa_decode(q, iq, cache, return_blocks=True)
        out, ids = ml.msa_decode(q, iq, cache, backend="triton", return_blocks=True)
        same = (ids.sort(-1).values == ref_ids.sort(-1).values).all(-1).float().mean().item()
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        rows.append(dict(check="msa_decode triton vs reference", L=L, out_rel_err=err, identical_block_sets=same,
                         nan=bool(torch.isnan(out).any())))
    msa_bytes = B * (L * Di * 2 + Hkv * TOPK * BS * D * 2 * 2 + 2 * Hq * D * 2 + Hkv * Di * 2)
    dense_bytes = B * (L * Hkv * D * 2 * 2 + 2 * Hq * D * 2)
    t = bench_median(lambda: ml.msa_decode(q, iq, cache, backend="triton"))
    rows.append(dict(L=L, B=B, method="msa_decode triton", **t, min_bytes=msa_bytes,
                     hbm_share=msa_bytes / t["median_ms"] / 1e9 / copy_bw))
    t = bench_median(graphed(lambda: ml.msa_decode(q, iq, cache, backend="triton")))
    rows.append(dict(L=L, B=B, method="msa_decode triton, CUDA graph replay", **t, min_bytes=msa_bytes,
                     hbm_share=msa_bytes / t["median_ms"] / 1e9 / copy_bw))
    msa_ms = t["median_ms"]
    qt, kt, vt = q.transpose(1, 2), cache.keys().transpose(1, 2), cache.values().transpose(1, 2)
    best = None
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                t = bench_median(graphed(lambda: torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, enable_gqa=True)))
        except RuntimeError as err:
            rows.append(dict(L=L, method=name, status=f"error: {str(err)[:120]}"))
            continue
        rows.append(dict(L=L, B=B, method=f"dense {name}, CUDA graph replay", **t, min_bytes=dense_bytes,
                         hbm_share=dense_bytes / t["median_ms"] / 1e9 / copy_bw))
        best = t["median_ms"] if best is None else min(best, t["median_ms"])
    rows.append(dict(L=L, what="speedup of msa_decode over the faster dense decode (both graph-replayed)",
                     speedup=best / msa_ms))
    del cache
    torch.cuda.empty_cache()
