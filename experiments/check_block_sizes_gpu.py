"""GPU check of the Triton kernels at block sizes 16-4096 (issue 15, "MoBA at its own block sizes").

For every block size in 16, 64, 128, 256, 512, 1024, 2048, 4096 and head dim 64 and 128, in
bf16 at N = 8192 + 77 (not a multiple of any block), Hq = 16, Hkv = 2:

- MoBA through ``moba_attention(backend="triton")``: the Triton selection (gate + shared top-k)
  against the reference selection (fraction of rows with the same block set: bf16 gates are
  summed in another order, so a near-tie may resolve differently), and the KV-outer forward
  (per head) and fast backward against the reference on that same selection;
- a random per-group selection (8 query heads a row): the KV-outer forward, its deterministic
  backward and the Q-outer forward against the reference.

Errors are ||x - ref|| / ||ref|| against the reference in float32 (inf when x has a NaN).
Points run in parallel worker processes (compiles dominate: ~7 kernels a point).
A point that raises records its error. Expect well under 4 minutes on an H200.

Usage: python experiments/check_block_sizes_gpu.py OUT_DIR   (writes OUT_DIR/check_block_sizes_gpu.json)
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from _common import rel_err  # noqa: E402  (this checkout first on sys.path)
import msa_lab as ml  # noqa: E402
from msa_lab.environment import gpu_environment  # noqa: E402

BLOCKS = (16, 64, 128, 256, 512, 1024, 2048, 4096)
DIMS = (64, 128)
N, HQ, HKV = 8192 + 77, 16, 2
WORKERS = 8


def grads(q, k, v, sel, dout, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = ml.block_sparse_attention(q, k, v, sel, **kw)
    out.backward(dout.to(out.dtype))
    return out, q.grad, k.grad, v.grad


def random_group_selection(bs, top_k, gen):
    nb = -(-N // bs)
    scores = torch.rand(1, HKV, N, nb, device="cuda", generator=gen)
    ids = ml.select_top_blocks(scores, torch.arange(N, device="cuda"), block_size=bs, top_k=top_k)
    return ml.BlockSelection(ids, bs, "group")


def errors(name, got, ref):
    return {f"{name}_{x}": rel_err(g, r) for x, g, r in zip(("out", "dq", "dk", "dv"), got, ref)}


def check_point(bs, D):
    row = dict(block_size=bs, head_dim=D, seq_len=N, num_heads=HQ, num_kv_heads=HKV, dtype="bf16")
    t0 = time.perf_counter()
    try:
        gen = torch.Generator(device="cuda").manual_seed(bs * 1000 + D)
        q, k, v = (torch.randn(1, N, h, D, device="cuda", generator=gen) for h in (HQ, HKV, HKV))
        dout = torch.randn(1, N, HQ, D, device="cuda", generator=gen)
        qb, kb, vb = (x.bfloat16() for x in (q, k, v))
        top_k = min(8, -(-N // bs))
        # MoBA: Triton selection vs reference, then attention fwd + fast bwd on that selection.
        _, sel = ml.moba_attention(qb, kb, vb, block_size=bs, top_k=top_k, backend="triton", return_selection=True)
        ref_sel = ml.select_moba(qb, kb, block_size=bs, top_k=top_k)
        row["top_k"] = top_k
        row["moba_selection_rows_equal"] = float(
            (sel.validate().canonical().indices == ref_sel.canonical().indices).all(-1).float().mean())
        ref = grads(q, k, v, sel, dout)
        row.update(errors("moba_kv_outer", grads(qb, kb, vb, sel, dout, backend="triton"), ref))
        # Per-group selection: KV-outer fwd + deterministic bwd, and the Q-outer forward.
        gsel = random_group_selection(bs, top_k, gen)
        ref = grads(q, k, v, gsel, dout)
        row.update(errors("group_kv_outer_deterministic",
                          grads(qb, kb, vb, gsel, dout, backend="triton", deterministic=True), ref))
        with torch.no_grad():
            row["group_q_outer_out"] = rel_err(ml.block_sparse_attention(qb, kb, vb, gsel, backend="triton_q_outer"),
                                               ref[0])
        torch.cuda.synchronize()
        row["ok"] = True
    except Exception as err:  # recorded, so one failing point does not hide the others
        row.update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
    row["seconds"] = time.perf_counter() - t0
    return row


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "check_block_sizes_gpu.json"
    t0 = time.perf_counter()
    points = [(bs, D) for bs in BLOCKS for D in DIMS]
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
        rows = []
        for row in pool.map(check_point, *zip(*points)):
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
    env = gpu_environment(script="experiments/check_block_sizes_gpu.py", wall_seconds=time.perf_counter() - t0)
    path.write_text(json.dumps(dict(environment=env, rows=rows), indent=1) + "\n")
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} points ran; wrote {path}")


if __name__ == "__main__":
    main()
