"""Focused sweep of the KV-outer attend stage at MSA's config (H200 notes in docs/kernels.md):
rows per tile x num_warps, then the whole operator with the module defaults. (The committed
result also swept a manual Q prefetch, since removed: it helped only 32-row tiles, which
still lost to 64-row tiles without it.)

Usage: python experiments/tune_kv_outer_attend.py OUT_DIR [N]
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import triton

# _common first: it puts this checkout's msa_lab on sys.path.
import _common  # noqa: E402, F401
import msa_lab as ml  # noqa: E402
from msa_lab.kernels import kv_outer  # noqa: E402
from msa_lab.kv_outer_plan import build_query_lists  # noqa: E402

out_dir, N = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 131072
out_dir.mkdir(parents=True, exist_ok=True)
Hq, Hkv, D, bs, topk = 64, 4, 128, 128, 16
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
sel = ml.select_msa(torch.randn(1, N, Hkv, 128, device="cuda", generator=g, dtype=torch.bfloat16),
                    torch.randn(1, N, 1, 128, device="cuda", generator=g, dtype=torch.bfloat16), block_size=bs, top_k=topk)
useful = 4 * D * float(sel.tokens_per_query().sum()) * (Hq // Hkv)
ref = ml.block_sparse_attention(q, k, v, sel, backend="flex")
rows = [dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, N=N)]
o_part, lse_part = kv_outer.partial_buffers(1, N, topk, Hq, D, q.dtype, q.device)
out, lse = torch.empty_like(q), torch.empty(1, Hq, N, device="cuda")
for tile_rows in (32, 64, 128):
    QT = tile_rows // 16
    launch = kv_outer.Launch(16, QT, tile_rows, 4096 // 16 // QT * QT)
    lists = build_query_lists(sel, 0, N, launch.entries)
    for warps in (2, 4, 8):
        fn = lambda: kv_outer.attend(q, k, v, lists, o_part, lse_part, 0, D ** -0.5, bs, Hkv,  # noqa: E731
                                     replace(launch, num_warps=warps, num_stages=1))
        ms = triton.testing.do_bench(fn, warmup=50, rep=300, quantiles=[0.5, 0.2, 0.8])
        kv_outer.merge(o_part, lse_part, sel.indices, out, lse, 0, launch)
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        rows.append(dict(stage="attend", rows=tile_rows, warps=warps, median_ms=ms[0], p20_ms=ms[1],
                         p80_ms=ms[2], useful_tflops=useful / ms[0] / 1e9, rel_err_vs_flex=err))
        print(rows[-1], flush=True)
del o_part, lse_part
ms = triton.testing.do_bench(lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton"), warmup=50, rep=300,
                             quantiles=[0.5, 0.2, 0.8])
rows.append(dict(stage="whole operator, module defaults", median_ms=ms[0], p20_ms=ms[1], p80_ms=ms[2],
                 useful_tflops=useful / ms[0] / 1e9))
print(rows[-1], flush=True)
(out_dir / "tune_kv_outer_attend.json").write_text(json.dumps(rows, indent=1) + "\n")
