"""Dense Triton flash forward on the GPU: correctness against the float32 reference, then
time against SDPA cuDNN / FlashAttention at MSA's heads (Hq=64, Hkv=4, D=128, bf16, causal).

Usage: python experiments/bench_dense.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.bench import bench_median  # noqa: E402


out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "results/dense")
rows = result_rows(out_dir / "bench_dense.json")
g = torch.Generator(device="cuda").manual_seed(1)
for (Nq, Nk, Hq, Hkv, D, causal) in [(4099, 4099, 64, 4, 128, True), (3000, 3000, 8, 8, 64, True),
                                     (3000, 3000, 16, 2, 128, False), (17, 5000, 32, 4, 128, True),
                                     (65536, 65536, 64, 4, 128, True)]:
    q = torch.randn(1, Nq, Hq, D, device="cuda", generator=g)
    k, v = (torch.randn(1, Nk, Hkv, D, device="cuda", generator=g) for _ in range(2))
    ref, ref_lse = ml.full_attention(q, k, v, causal=causal, return_lse=True)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        out, lse = ml.full_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, backend="triton",
                                     return_lse=True)
        rows.append(dict(check="flash vs reference", Nq=Nq, Nk=Nk, Hq=Hq, Hkv=Hkv, D=D, causal=causal,
                         dtype=str(dtype)[6:], out_rel_err=rel_err(out, ref), lse_rel_err=rel_err(lse, ref_lse)))
for N in (32768, 131072):
    q = torch.randn(1, N, 64, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    k, v = (torch.randn(1, N, 4, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    flop = 4 * 64 * 128 * N * N / 2
    quick = dict(warmup_ms=25, rep_ms=100) if N > 100000 else {}
    t = bench_median(lambda: ml.full_attention(q, k, v, backend="triton"), **quick)
    rows.append(dict(N=N, method="triton flash", **t, tflops=flop / t["median_ms"] / 1e9))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        with sdpa_kernel(backend):
            t = bench_median(lambda: torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, is_causal=True, enable_gqa=True), **quick)
        rows.append(dict(N=N, method=name, **t, tflops=flop / t["median_ms"] / 1e9))
