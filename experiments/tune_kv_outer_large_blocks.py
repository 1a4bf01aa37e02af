"""The KV-outer attend stage at MoBA's own block sizes (512/top-3, 1024/top-6, 4096/top-8),
where a program walks a block in 128-key sub-tiles for each query tile: rows per tile x
num_warps x num_stages (software pipelining of the sub-tile loop). MoBA's selection (per query
head) on random bf16 inputs, Hq = 64, Hkv = 4, D = 128, batch 1; each configuration's merged
output is compared with the module defaults' (a wrong tiling shows up as a large error or NaN).

Usage: python experiments/tune_kv_outer_large_blocks.py OUT.json [N]
"""

import sys
import time
from dataclasses import replace

import torch
import triton

# _common first: it puts this checkout's msa_lab on sys.path.
from _common import rel_err, result_rows  # noqa: E402
import msa_lab as ml  # noqa: E402
from msa_lab.kernels import kv_outer  # noqa: E402
from msa_lab.kv_outer_plan import build_query_lists  # noqa: E402

out_path, N = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 131072
Hq, Hkv, D = 64, 4, 128
rows = result_rows(out_path, announce=True, N=N, Hq=Hq, Hkv=Hkv, D=D, dtype="bf16", selection="moba (per head)")
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))


def median_ms(fn, repeats: int = 5) -> tuple[float, float, float]:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


for block_size, top_k in ((512, 3), (1024, 6), (4096, 8)):
    sel = ml.select_moba(q, k, block_size=block_size, top_k=top_k, backend="triton")
    useful = 4 * D * float(sel.tokens_per_query().sum())
    o_part, lse_part = kv_outer.partial_buffers(1, N, top_k, Hq, D, q.dtype, q.device)
    out, lse = torch.empty_like(q), torch.empty(1, Hq, N, device="cuda")
    reference = None
    for tile_rows in (64, 128):
        launch = kv_outer.Launch(1, tile_rows, tile_rows, 4096 // tile_rows * tile_rows)
        lists = build_query_lists(sel, 0, N, launch.entries)
        for warps in (4, 8):
            for stages in (1, 2, 3):
                def attend():
                    kv_outer.attend(q, k, v, lists, o_part, lse_part, 0, D ** -0.5, block_size, Hq,
                                    replace(launch, num_warps=warps, num_stages=stages))
                try:
                    med, lo, hi = median_ms(attend)
                except triton.runtime.errors.OutOfResources as err:
                    rows.append(dict(block_size=block_size, top_k=top_k, rows=tile_rows, warps=warps,
                                     stages=stages, status="out of resources", message=str(err)[:200]))
                    continue
                kv_outer.merge(o_part, lse_part, sel.indices, out, lse, 0, launch)
                if reference is None:
                    reference = out.clone()
                rows.append(dict(block_size=block_size, top_k=top_k, rows=tile_rows, warps=warps, stages=stages,
                                 status="ok", median_ms=med, min_ms=lo, max_ms=hi, repeats=5,
                                 useful_tflops=useful / med / 1e9, rel_err_vs_first=rel_err(out, reference)))
    del o_part, lse_part, sel, reference
