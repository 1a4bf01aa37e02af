"""Quest's Triton selection on the GPU (issue 15).

1. Agreement: ``select_quest(backend="triton")`` against the reference on the same CUDA inputs
   (bf16, fp16, fp32; GQA 1..16; N not a multiple of the block; head dims 64 and 128): the
   share of rows whose block sets differ, and the share among rows with no near-tie at their
   top_k boundary (judged on float64 bounds of the same rounded inputs; must be 0).
2. Timing at 128K, MSA's head config (Hq=64, Hkv=4, D=128, bf16, block 128, top-16), one
   process: ``select_quest`` vs ``select_moba`` (both ``backend="triton"``), and their block
   summaries (``block_key_bounds``, ``block_mean_keys``) alone; ``time_call`` (CUDA events
   after warm-up, median of >= 20 runs, L2 flushed between runs).

Usage: python experiments/check_quest_gpu.py --out OUT.json [--length 131072]
       python experiments/check_quest_gpu.py --smoke --out /tmp/quest_smoke.json   (CPU, interpreted)
About a minute on an H200.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--out", required=True, help="JSON file for the result rows")
parser.add_argument("--length", type=int, default=131072, help="timed sequence length")
parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU through TRITON_INTERPRET=1")
args = parser.parse_args()
if args.smoke and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before msa_lab's kernels are defined

import _common  # noqa: E402,F401  (this checkout first on sys.path)
import msa_lab as ml  # noqa: E402
from msa_lab.bench import ResultRows  # noqa: E402
from msa_lab.environment import gpu_environment  # noqa: E402
from msa_lab.bench.timing import time_call  # noqa: E402
from msa_lab.select import block_key_bounds, block_mean_keys  # noqa: E402
from msa_lab.select.quest import quest_bound_scores  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
if dev == "cpu" and not args.smoke:
    sys.exit("no CUDA GPU: run with --smoke for the interpreted CPU check")
out_path = Path(args.out)
out_path.parent.mkdir(parents=True, exist_ok=True)
rows = ResultRows(out_path, gpu_environment(smoke=args.smoke))
gen = torch.Generator(device=dev).manual_seed(0)
# The interpreter's bf16 dot is wrong (docs/semantics.md): the smoke run skips bf16.
DTYPES = dict(fp32=torch.float32, fp16=torch.float16) if args.smoke else \
    dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)
SHAPES = [(1, 77, 4, 2, 16, 16, 3)] if args.smoke else [
    # B, N, Hq, Hkv, D, block, top_k
    (2, 1000, 8, 2, 64, 64, 4), (1, 2111, 16, 1, 128, 128, 5), (1, 777, 4, 4, 128, 32, 8),
    (1, 3001, 32, 8, 64, 16, 16), (1, 4099, 64, 4, 128, 128, 16),
]


def rnd(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device=dev, generator=gen, dtype=dtype)


def clear_rows(q, k, block_size, top_k, rel_gap=1e-5):
    """``bool [B, Hq, N]``: rows whose worst kept and best dropped earlier block differ by more
    than ``rel_gap`` of the largest bound (float64, same rounded inputs); rows that keep every
    candidate are clear."""
    key_min, key_max = block_key_bounds(k.double(), block_size)
    N = q.shape[1]
    positions = torch.arange(N, device=dev)
    scores = torch.cat([quest_bound_scores(q.double(), key_min, key_max, pos) for pos in positions.split(256)], 2)
    nb = scores.shape[-1]
    own = torch.arange(N, device=dev) // block_size
    earlier = torch.arange(nb, device=dev) < own.view(-1, 1)
    ranked = scores.masked_fill(~earlier, float("-inf")).sort(-1, descending=True).values
    if not 1 <= top_k - 1 < nb:
        return torch.ones(scores.shape[:-1], dtype=torch.bool, device=dev)
    kept, dropped = ranked[..., top_k - 2], ranked[..., top_k - 1]
    return ~torch.isfinite(dropped) | (kept - dropped > rel_gap * scores.abs().max())


def agreement():
    for B, N, Hq, Hkv, D, bs, top_k in SHAPES:
        for name, dtype in DTYPES.items():
            q, k = rnd(B, N, Hq, D, dtype=dtype), rnd(B, N, Hkv, D, dtype=dtype)
            ref = ml.select_quest(q, k, block_size=bs, top_k=top_k)
            got = ml.select_quest(q, k, block_size=bs, top_k=top_k, backend="triton").validate()
            differs = (got.canonical().indices != ref.canonical().indices).any(-1)
            clear = clear_rows(q, k, bs, top_k)
            rows.append(dict(check="triton vs reference selection", dtype=name, B=B, N=N, Hq=Hq, Hkv=Hkv, D=D,
                             block_size=bs, top_k=top_k, rows=differs.numel(),
                             differing_rows=float(differs.float().mean()),
                             clear_rows=float(clear.float().mean()),
                             differing_clear_rows=int((differs & clear).sum()),
                             own_block_first=bool((got.indices[..., 0] == torch.arange(N, device=dev) // bs).all())))


def timing():
    N, Hq, Hkv, D, bs, top_k = (args.length, 64, 4, 128, 128, 16) if not args.smoke else (64, 2, 1, 16, 16, 3)
    dtype = torch.float16 if args.smoke else torch.bfloat16
    q, k = rnd(1, N, Hq, D, dtype=dtype), rnd(1, N, Hkv, D, dtype=dtype)
    config = dict(B=1, N=N, Hq=Hq, Hkv=Hkv, D=D, block_size=bs, top_k=top_k, dtype=str(dtype)[6:], backend="triton")
    calls = {
        "quest selection": lambda: ml.select_quest(q, k, block_size=bs, top_k=top_k, backend="triton"),
        "moba selection": lambda: ml.select_moba(q, k, block_size=bs, top_k=top_k, backend="triton"),
        "quest key bounds": lambda: block_key_bounds(k, bs),
        "moba mean keys": lambda: block_mean_keys(k, bs),
    }
    medians = {}
    for what, fn in calls.items():
        t = time_call(fn, dev, max_seconds=30.0 if not args.smoke else 5.0)
        medians[what] = t["median_ms"]
        rows.append(dict(check="timing", what=what, **config, **t))
    rows.append(dict(check="timing ratio", what="quest / moba selection, same process and inputs", **config,
                     ratio=medians["quest selection"] / medians["moba selection"]))


agreement()
timing()
bad = [r for r in rows if r.get("differing_clear_rows") or r.get("own_block_first") is False]
print(f"{len(rows)} rows written to {out_path}; {len(bad)} agreement rows with differing clear rows")
sys.exit(1 if bad else 0)
