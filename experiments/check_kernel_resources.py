"""Shared memory of the block-sparse kernels at block sizes 16-4096, without a GPU.

Compiles each kernel offline for an H200 (sm_90, CUDA target of the installed Triton) with the
tile constants the library launches (``Launch.for_forward`` / ``for_rows``, ``triton_runtime.key_tile``, the
backward's key parts, the top-k row length at 1M tokens) and prints its shared memory against
the H200's 232448-byte limit. Triton on the GPU may allocate differently (3.6 there, this
script was run with 3.9): ``check_block_sizes_gpu.py`` is the check on the device.

Usage: python experiments/check_kernel_resources.py [--blocks 16,128,4096] [--dims 64,128] [--out FILE.json]
(the committed ``results/kernel_resources_sm90.json`` is the default grid; docs/kernels.md renders it)
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

import _common  # noqa: E402,F401  (this checkout first on sys.path)
from msa_lab.environment import gpu_environment  # noqa: E402
from msa_lab.kernels import kv_outer, kv_outer_bwd  # noqa: E402
from msa_lab.kernels.q_outer import NUM_WARPS as Q_OUTER_WARPS, _q_outer_fwd  # noqa: E402
from msa_lab.select.topk_triton import top_blocks_kernel  # noqa: E402
from msa_lab.triton_runtime import dot_pad, dot_precision, next_pow2  # noqa: E402
from msa_lab.triton_runtime import KernelSettings, key_tile  # noqa: E402

H200_SHARED = 232448
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
GROUP = 16  # MSA's heads: Hq = 64, Hkv = 4


def shared_bytes(kernel, constexprs: dict, pointers: dict, num_warps: int, num_stages: int) -> int:
    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        sig[name] = ("constexpr" if name in constexprs else "*" + pointers[name] if name in pointers
                     else "fp32" if name == "scale" else "i32")
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages)).metadata.shared


def rows(launch: kv_outer.Launch) -> dict:
    return dict(G=GROUP, HPR=launch.HPR, QT=launch.QT, M=launch.M)


def forward(bs, D, dtype, per):
    t = TYPES[dtype]
    keys = key_tile(bs, D, dtype)
    io = dict(q_ptr=t, k_ptr=t, v_ptr=t, o_part_ptr=t, lse_part_ptr="fp32", query_ptr="i32", slot_ptr="i32",
              work_list_ptr="i32", work_start_ptr="i32", work_count_ptr="i32")
    launch = kv_outer.Launch.for_forward(per, GROUP, bs, D, dtype)
    const = dict(rows(launch), BS=bs, KT=keys, KEY_TILES=triton.cdiv(bs, keys), D=D, D_PAD=dot_pad(D),
                 PRECISION=dot_precision(dtype))
    return shared_bytes(kv_outer._kv_outer_fwd, const, io, launch.num_warps, launch.num_stages)


def backward(bs, D, dtype, per, deterministic):
    t = TYPES[dtype]
    if deterministic:
        keys = min(dot_pad(bs), KernelSettings().backward_keys_per_program)
    else:
        keys = max(16, min(next_pow2(bs), KernelSettings().backward_keys_per_program))
    parts = triton.cdiv(bs, keys)
    per_slot = deterministic or parts == 1
    dq = ("bf16" if dtype == torch.bfloat16 else "fp32") if per_slot else "fp32"
    io = dict(q_ptr=t, k_ptr=t, v_ptr=t, do_ptr=t, lse_ptr="fp32", delta_ptr="fp32", dq_ptr=dq, dk_ptr="fp32",
              dv_ptr="fp32", query_ptr="i32", slot_ptr="i32", work_list_ptr="i32", work_start_ptr="i32",
              work_count_ptr="i32")
    const = dict(rows(kv_outer.Launch.for_rows(per, GROUP)), BS=bs, D=D, D_PAD=dot_pad(D), KEYS=keys, PARTS=parts if deterministic else 1,
                 PRECISION=dot_precision(dtype), DQ_PER_SLOT=per_slot, DETERMINISTIC=deterministic)
    return shared_bytes(kv_outer_bwd._kv_outer_bwd, const, io, KernelSettings().backward_num_warps, 1)


def q_outer(bs, D, dtype, per):
    t = TYPES[dtype]
    keys = key_tile(bs, D, dtype)
    hpr = GROUP if per == "group" else 1
    io = dict(q_ptr=t, k_ptr=t, v_ptr=t, sel_ptr="i32", out_ptr=t, lse_ptr="fp32")
    const = dict(G=GROUP, HPR=hpr, M=dot_pad(hpr), K=8, BS=bs, KT=keys, KEY_TILES=triton.cdiv(bs, keys), D=D,
                 D_PAD=dot_pad(D), PRECISION=dot_precision(dtype))
    return shared_bytes(_q_outer_fwd, const, io, Q_OUTER_WARPS, 3)  # launched with Triton's default stages


def top_k(bs):
    nb = triton.cdiv(1 << 20, bs)  # a row's blocks at 1M tokens
    return shared_bytes(top_blocks_kernel, dict(K=8, BS=bs, NB_PAD=next_pow2(nb),
                                                ROW_TILE=KernelSettings().top_k_row_tile),
                        dict(score_ptr="fp32", sel_ptr="i32"), 4, 3)


KERNELS = {
    "kv_outer fwd (group)": lambda bs, D, dt: forward(bs, D, dt, "group"),
    "kv_outer fwd (head)": lambda bs, D, dt: forward(bs, D, dt, "head"),
    "kv_outer bwd (head)": lambda bs, D, dt: backward(bs, D, dt, "head", False),
    "kv_outer bwd deterministic (group)": lambda bs, D, dt: backward(bs, D, dt, "group", True),
    "q_outer (group)": lambda bs, D, dt: q_outer(bs, D, dt, "group"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="16,64,128,256,512,1024,4096")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtypes", default="bf16,fp32", help="fp16 tiles are laid out as bf16's")
    ap.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()
    blocks = [int(x) for x in args.blocks.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    dtypes = [dt for dt, name in TYPES.items() if name in args.dtypes.split(",")]
    print(f"triton {triton.__version__}, target sm_90; H200 limit {H200_SHARED} B; shared memory in bytes")
    print("| kernel | dtype | D | " + " | ".join(f"block {bs}" for bs in blocks) + " |")
    print("|---|---|---|" + "---|" * len(blocks))
    rows = []
    for name, fn in KERNELS.items():
        for dt in dtypes:
            for D in dims:
                cells = [fn(bs, D, dt) for bs in blocks]
                rows += [dict(kernel=name, dtype=TYPES[dt], head_dim=D, block_size=bs, shared_bytes=c)
                         for bs, c in zip(blocks, cells)]
                print(f"| {name} | {TYPES[dt]} | {D} | " + " | ".join(map(str, cells)) + " |", flush=True)
    cells = [top_k(bs) for bs in blocks]
    rows += [dict(kernel="top-k, row at 1M tokens", dtype="fp32 scores", head_dim=None, block_size=bs, shared_bytes=c)
             for bs, c in zip(blocks, cells)]
    print("| top-k, row at 1M tokens | fp32 scores | - | " + " | ".join(map(str, cells)) + " |")
    worst = max(r["shared_bytes"] for r in rows)
    print(f"largest: {worst} B ({'fits' if worst <= H200_SHARED else 'OVER'} the H200's {H200_SHARED} B)")
    if args.out:
        env = gpu_environment(target="cuda sm_90 (offline compile)", shared_limit_bytes=H200_SHARED)
        args.out.write_text(json.dumps(dict(environment=env, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
