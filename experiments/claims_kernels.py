"""The numbers of the kernel docs (kernels.md, benchmarks.md, reference_check.md, cost_model.md
and results.md's GQA table), each computed from the committed bench file it comes from.

Most kernel benches write one JSON file per run (``{"environment", "rows"}``): every row of one
file is one process, so a ratio of two rows of one file is a same-process ratio (SPEC). A few
older runs wrote a list, or only a log of one ``repr``-ed dict a line.
"""

from __future__ import annotations

import json
import math

from claims import (MOBA_BLOCKS, ROOT, SELECTION_CHECK, Claim, Table, med, row, rows_of, same_value, stage,
                    sweep_rows, total)

RESULTS = "experiments/results"
KV_OUTER_V1 = f"{RESULTS}/bench_kv_outer_v1_h200.json"
BLOCK_SPARSE_V2 = f"{RESULTS}/bench_block_sparse_v2_h200.json"
BLOCK_SPARSE_V3 = f"{RESULTS}/bench_block_sparse_v3_h200.json"
TUNE_ATTEND = f"{RESULTS}/tune_kv_outer_attend_h200.json"
TUNE_LARGE_BLOCKS = f"{RESULTS}/tune_kv_outer_large_blocks_h200.json"
KERNEL_RESOURCES = f"{RESULTS}/kernel_resources_sm90.json"
MOBA_BLOCKS_V1 = "experiments/results/superseded/moba_block_sizes_v1_h200"
TUNE_INDEX = f"{RESULTS}/tune_index_topk_h200.json"
MSA_OPERATOR_V1 = f"{RESULTS}/bench_msa_operator_v1_h200.json"
MOBA_SELECTION = f"{RESULTS}/bench_moba_selection_h200.json"
DENSE = f"{RESULTS}/bench_dense_h200.json"
DENSE_64K = f"{RESULTS}/bench_dense_64k_check_h200.json"
DECODE_BENCH = f"{RESULTS}/bench_decode_h200.json"
DECODE_BEFORE_SYNC_FIX = f"{RESULTS}/bench_decode_h200_before_sync_fix.log"
STEP_FIRST = f"{RESULTS}/bench_training_step_h200.json"  # the first v1 table, 2026-11-23
STEP_V1 = f"{RESULTS}/bench_training_step_v2_h200.json"  # the v1 backward's rows
STEP_V2 = f"{RESULTS}/bench_training_step_v3_h200.json"  # the v2 backward's rows
STEP_V4 = f"{RESULTS}/bench_training_step_v4_h200.json"  # the index KL's swept tiles
GQA_GRID = "experiments/results/sweeps/gqa_grid_h200"
REFERENCE_CHECK = f"{RESULTS}/reference_check_h200.json"
KL_32K = f"{RESULTS}/bench_index_kl_32k_h200.json"
KL_64K = f"{RESULTS}/bench_index_kl_64k_h200.json"
KL_128K = f"{RESULTS}/bench_index_kl_128k_h200.json"
KL_TILES = f"{RESULTS}/bench_index_kl_tiles_32k_h200.json"
KL_TILES_V2 = f"{RESULTS}/bench_index_kl_tiles_32k_v2.json"
KL_TILED = f"{RESULTS}/bench_index_kl_tiled_h200.json"
CORRECTNESS_V3 = f"{RESULTS}/kernel_correctness_64k_v3_h200.json"
BLOCK_SIZES_GPU = f"{RESULTS}/check_block_sizes_gpu_h200.json"
MSA_ABLATIONS_GPU = f"{RESULTS}/check_msa_ablations_gpu_h200.json"
CORRECTNESS_V2 = f"{RESULTS}/kernel_correctness_64k_v2_h200.json"
CORRECTNESS_FINAL = f"{RESULTS}/kernel_correctness_64k_h200.json"
LOGS = f"{RESULTS}/logs"


# --- reading ------------------------------------------------------------------------------------

def errors(path: str, key: str, check: str, **match) -> list[float]:
    """``key`` of every correctness row of ``check`` (the start of its name) that matches."""
    found = [float(r[key]) for r in rows_of(path) if str(r.get("check", "")).startswith(check)
             and all(r.get(k) == v for k, v in match.items())]
    if not found:
        raise ValueError(f"{path}: no {check!r} rows with {match}")
    return found


def sci(value: float) -> str:
    """An error as the docs write it: ``3.6e-3``."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def passed(log: str) -> tuple[int, ...]:
    """pytest's closing counts in ``log``: (passed, failed)."""
    import re

    last = [line for line in (ROOT / log).read_text().splitlines() if " passed" in line][-1]
    count = lambda word: int(m.group(1)) if (m := re.search(rf"(\d+) {word}", last)) else 0  # noqa: E731
    return count("passed"), count("failed")


def gqa_stage(kv_heads: int, backend: str, stage_name: str) -> float:
    (r,) = [r for r in sweep_rows(GQA_GRID) if r["num_kv_heads"] == kv_heads and r["backend"] == backend
            and r["stage"] == stage_name and r["status"] == "ok"]
    return r["median_ms"]


def ms3(value: float) -> str:
    """Three significant digits, as the GQA tables write times: 96.5, 525, 1616."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def up(value: float) -> float:
    """A spread quoted as a bound (``≤ 1.2 %``): rounded up to one decimal, so the bound holds."""
    import math

    return math.ceil(value * 10 - 1e-9) / 10


GROUPS = (1, 2, 4, 8, 16)


# --- tables ---------------------------------------------------------------------------------------

def _gqa_sweep_table() -> str:
    """results.md: the GQA sweep at 128K (one process), Hkv = 64 / G."""
    kv = [64 // g for g in GROUPS]
    cells = lambda values: " | ".join(f"{ms3(v)} ms" for v in values)  # noqa: E731
    lines = ["| G = Hq / Hkv | 1 | 2 | 4 | 8 | 16 |", "|---|---|---|---|---|---|",
             "| KV-outer attention path (lists + attend + merge) | " + cells(
                 sum(gqa_stage(h, "triton", s) for s in ("metadata", "attention", "merge")) for h in kv) + " |",
             "| Q-outer attention | " + cells(gqa_stage(h, "triton_q_outer", "attention") for h in kv) + " |",
             "| whole MSA operator, KV-outer | " + cells(gqa_stage(h, "triton", "total") for h in kv) + " |",
             "| dense SDPA cuDNN | " + cells(gqa_stage(h, "sdpa_cudnn", "total") for h in kv) + " |"]
    return "\n".join(lines)


def _kv_outer_v1_table() -> str:
    f = KV_OUTER_V1
    lines = ["| N | stage | ms | useful TFLOP/s | note |", "|---|---|---|---|---|"]
    for n, label in ((32768, "32K"), (131072, "128K")):
        lists = med(f, N=n, method="stage: query lists")
        attend = row(f, N=n, method="stage: attend (warps=8, stages=1)")
        merge = med(f, N=n, method="stage: merge")
        whole = row(f, N=n, method="kv_outer total (lists+attend+merge)")
        if n == 32768:
            notes = ("torch sort/bincount/cumsum",
                     f"4 warps: {med(f, N=n, method='stage: attend (warps=4, stages=1)'):.2f}; 2 stages: "
                     f"{med(f, N=n, method='stage: attend (warps=8, stages=2)'):.1f}; 3 stages: "
                     f"{med(f, N=n, method='stage: attend (warps=8, stages=3)'):.1f}", "",
                     "default then was 2 stages, 2 chunks")
        else:
            # 71 and 37 GB are the byte model's minimal bytes of the two stages (above).
            notes = ("", f"{71 / attend['median_ms']:.2f} TB/s on the 71 GB: 3x over its floor",
                     f"{37 / merge:.1f} TB/s on its 37 GB: at the floor", "2 stages and 8 query chunks then")
        lines += [f"| {label} | query lists | {lists:.2f} | – | {notes[0]} |",
                  f"| {label} | attend, 8 warps, 1 stage | {attend['median_ms']:.2f} | "
                  f"{attend['useful_tflops']:.0f} | {notes[1]} |",
                  f"| {label} | merge | {merge:.2f} | – | {notes[2]} |",
                  f"| {label} | whole operator | {whole['median_ms']:.2f} | {whole['useful_tflops']:.0f} | {notes[3]} |"]
    cudnn, flash = (row(f, N=131072, method=m) for m in ("sdpa_cudnn", "sdpa_flash"))
    flex = row(f, N=131072, method="flex (block mask built in the timed call)")
    lines += [f"| 128K | SDPA cuDNN, dense causal | {cudnn['median_ms']:.1f} | {cudnn['useful_tflops']:.1f} "
              f"({cudnn['tflops']:.0f} dense) | the dense baseline |",
              f"| 128K | SDPA FlashAttention | {flash['median_ms']:.1f} | {flash['useful_tflops']:.1f} "
              f"({flash['tflops']:.0f} dense) | |",
              f"| 128K | FlexAttention, same selection | {flex['median_ms']:.0f} | {flex['useful_tflops']:.1f} | "
              "BlockMask built in the timed call; every tile partial (per-token selection) |"]
    return "\n".join(line.replace("|  |", "| |") for line in lines)


def _gqa_bench_table(path: str, n: int, unit: str) -> str:
    """The GQA group-size rows of one ``bench_block_sparse`` run (Hq = 64, Hkv = 64 / G)."""
    rows = rows_of(path)
    start = next(i for i, r in enumerate(rows) if r.get("N") == n and r.get("Hkv") == 64)
    section = rows[start:]  # the group-size section (an earlier section may time Hkv = 4 too)

    def cells(method: str, fmt) -> str:
        (found,) = ([r["median_ms"] for r in section if r["N"] == n and r["Hkv"] == 64 // g
                     and r["method"] == method] for g in GROUPS),
        return " | ".join(fmt(v) for (v,) in found)
    one = lambda v: f"{v:.1f}"  # noqa: E731
    lines = ["| G = Hq/Hkv | 1 | 2 | 4 | 8 | 16 |", "|---|---|---|---|---|---|"]
    if n == 32768:
        lines += [f"| KV-outer | {cells('triton whole operator', one)} |",
                  f"| Q-outer | {cells('triton_q_outer whole operator', one)} |",
                  f"| dense SDPA cuDNN | {cells('sdpa_cudnn', one)} |"]
    else:
        lines += [f"| KV-outer (ms) | {cells('triton whole operator', one)} |",
                  f"| Q-outer (ms) | {cells('triton_q_outer whole operator', ms3)} |",
                  f"| dense SDPA cuDNN (ms) | {cells('sdpa_cudnn', ms3)} |"]
    return "\n".join(lines)



def _index_tune_table() -> str:
    """The 1M selection by tile config (one run of the tuning script), after the first version's
    row from the operator bench (another run: its difference to the next row is of two runs)."""
    first = med(MSA_OPERATOR_V1, N=1 << 20, what="stage: selection (index scores + top-k)")
    tuned = {tuple(r["config"]): r["median_ms"] for r in rows_of(TUNE_INDEX)
             if r.get("what") == "select_msa triton at 1M"}
    default, base = tuned[(256, 4, 8, 3)], tuned[(128, 8, 4, 3)]
    notes = {(128, 1, 4, 3): f"one-reduction top-k: −{first - tuned[(128, 1, 4, 3)]:.0f} ms (against the first "
                             "version's run)",
             (128, 8, 4, 3): f"contiguous row stores: −{100 * (1 - base / tuned[(128, 1, 4, 3)]):.0f} %",
             (64, 8, 4, 3): "more key traffic per FLOP: slower, as the L2 model says",
             (256, 8, 8, 3): f"256 rows: −{100 * (1 - tuned[(256, 8, 8, 3)] / base):.0f} % vs 128"}
    lines = ["| rows per program | blocks per store | warps | stages | ms | note |", "|---|---|---|---|---|---|",
             f"| 128 | 1 (v1 top-k: max + min per pick) | 4 | default | {first:.0f} | first version |"]
    for config, t in tuned.items():
        if config == (256, 4, 8, 3):
            continue
        rows, store, warps, stages = config
        lines.append(f"| {rows} | {store} | {warps} | {stages} | {t:.0f} | {notes.get(config, '')} |")
    lines.append(f"| **256** | **4** | **8** | **3** | **{default:.0f}** | default now |")
    return "\n".join(line.replace("|  |", "| |") for line in lines)


def _spaced(value: float) -> str:
    """Thousands apart by a space, as the operator table writes 38 499 ms."""
    return f"{value:,.0f}".replace(",", " ")


def _operator_table() -> str:
    v1 = lambda n, what: med(MSA_OPERATOR_V1, N=n, what=what)  # noqa: E731
    sel, att, whole, dense = "stage: selection (index scores + top-k)", "stage: attention (lists + KV-outer + merge)", \
        "whole MSA operator", "dense SDPA cuDNN"
    speedup = lambda n: row(MSA_OPERATOR_V1, N=n, what="speedup of the whole MSA operator over dense cuDNN")["speedup"]  # noqa: E731
    m = 1 << 20
    tuned = lambda what: med(TUNE_INDEX, what=what)  # noqa: E731
    tuned_selection = med(TUNE_INDEX, what="select_msa triton at 1M", config=[256, 4, 8, 3])
    lines = ["| N | whole operator | selection | attention (lists + KV-outer + merge) | dense SDPA cuDNN (same run) | "
             "speedup |", "|---|---|---|---|---|---|",
             f"| 128K | {v1(131072, whole):.1f} ms | {v1(131072, sel):.1f} ms | {v1(131072, att):.1f} ms | "
             f"{v1(131072, dense):.0f} ms | {speedup(131072):.1f}x |",
             f"| 1M (v1 index kernel) | {v1(m, whole):.0f} ms | {v1(m, sel):.0f} ms ({100 * v1(m, sel) / v1(m, whole):.0f} %) "
             f"| {v1(m, att):.0f} ms ({100 * v1(m, att) / v1(m, whole):.0f} %) | {_spaced(v1(m, dense))} ms | "
             f"{speedup(m):.1f}x |",
             f"| 1M (tuned index kernel) | **{tuned('whole MSA operator at 1M'):.0f} ms** | ≈ {tuned_selection:.0f} ms | "
             f"≈ {v1(m, att):.0f} ms | **{_spaced(tuned('dense SDPA cuDNN at 1M'))} ms** | "
             f"**{row(TUNE_INDEX, what='speedup at 1M')['speedup']:.1f}x** |"]
    return "\n".join(lines)


def _dense_table() -> str:
    lines = ["| N (Hq=64, Hkv=4, D=128, bf16, causal) | Triton flash | SDPA cuDNN | SDPA FlashAttention |",
             "|---|---|---|---|"]
    for n, label in ((32768, "32K"), (131072, "128K")):
        cells = []
        for i, m in enumerate(("triton flash", "sdpa_cudnn", "sdpa_flash")):
            r = row(DENSE, N=n, method=m)
            t = f"{r['median_ms']:.1f}" if r["median_ms"] < 100 else f"{r['median_ms']:.0f}"
            cells.append(f"{t} ms, {r['tflops']:.0f}" + (" TFLOP/s" if (i, n) == (0, 32768) else ""))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _decode_bench_table() -> str:
    d = lambda n, m: row(DECODE_BENCH, L=n, method=m)  # noqa: E731
    first = row(DECODE_BEFORE_SYNC_FIX, L=1 << 20, method="msa_decode triton")
    first_speedup = row(DECODE_BEFORE_SYNC_FIX, L=1 << 20, what="speedup of msa_decode over the faster dense decode")
    speedup = lambda n: row(DECODE_BENCH, L=n, startswith="speedup of msa_decode")["speedup"]  # noqa: E731
    graph_1m = d(1 << 20, "msa_decode triton, CUDA graph replay")
    lines = ["| step | 128K | 1M |", "|---|---|---|",
             f"| MSA decode, first version (a host sync to size the work list) | – | {float(first['median_ms']):.3f} ms "
             f"({float(first_speedup['speedup']):.1f}x) |",
             f"| MSA decode, no host sync | {d(1 << 17, 'msa_decode triton')['median_ms']:.3f} ms | "
             f"{d(1 << 20, 'msa_decode triton')['median_ms']:.3f} ms |",
             f"| MSA decode, CUDA graph replay | {d(1 << 17, 'msa_decode triton, CUDA graph replay')['median_ms']:.3f} ms | "
             f"**{graph_1m['median_ms']:.3f} ms, {100 * graph_1m['hbm_share']:.0f} % of copy bandwidth on its bytes** |"]
    for label, m in (("dense SDPA cuDNN, graph replay", "dense sdpa_cudnn, CUDA graph replay"),
                     ("dense SDPA FlashAttention, graph replay", "dense sdpa_flash, CUDA graph replay")):
        lines.append(f"| {label} | {d(1 << 17, m)['median_ms']:.3f} ms | {d(1 << 20, m)['median_ms']:.3f} ms |")
    lines.append(f"| speedup (both graph-replayed) | {speedup(1 << 17):.1f}x | **{speedup(1 << 20):.1f}x** |")
    return "\n".join(lines)


def _large_blocks_tune_table() -> str:
    """The attend stage at MoBA's block sizes for each launch setting: median and useful TFLOP/s."""
    rows = rows_of(TUNE_LARGE_BLOCKS)
    if any(r["status"] != "ok" or r["rel_err_vs_first"] != r["rel_err_vs_first"] or r["rel_err_vs_first"] > 1e-2
           for r in rows):
        raise ValueError(f"{TUNE_LARGE_BLOCKS}: a setting failed or disagrees with the first")
    blocks = sorted({(r["block_size"], r["top_k"]) for r in rows})
    settings = sorted({(r["rows"], r["warps"], r["stages"]) for r in rows})
    lines = ["| rows per tile, warps, stages | " + " | ".join(f"block {b}, top-{k}" for b, k in blocks) + " |",
             "|---|" + "---|" * len(blocks)]
    for setting in settings:
        cells = []
        for b, k in blocks:
            r = row(TUNE_LARGE_BLOCKS, block_size=b, rows=setting[0], warps=setting[1], stages=setting[2])
            cells.append(f"{r['median_ms']:.1f} ms ({r['useful_tflops']:.0f} TFLOP/s)")
        lines.append(f"| {', '.join(map(str, setting))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kernel_resources_table() -> str:
    """Shared memory of each kernel by block size, from the offline compile for sm_90."""
    data = json.loads((ROOT / KERNEL_RESOURCES).read_text())
    env, rows = data["environment"], data["rows"]
    blocks = sorted({r["block_size"] for r in rows})
    lines = [f"triton {env['triton']}, target sm_90; H200 limit {env['shared_limit_bytes']} B; shared memory in bytes",
             "| kernel | dtype | D | " + " | ".join(f"block {b}" for b in blocks) + " |", "|---|---|---|" + "---|" * len(blocks)]
    keys = list(dict.fromkeys((r["kernel"], r["dtype"], r["head_dim"]) for r in rows))
    for kernel, dtype, D in keys:
        cells = {r["block_size"]: r["shared_bytes"] for r in rows if (r["kernel"], r["dtype"], r["head_dim"]) == (kernel, dtype, D)}
        lines.append(f"| {kernel} | {dtype} | {'-' if D is None else D} | " + " | ".join(str(cells[b]) for b in blocks) + " |")
    worst = max(r["shared_bytes"] for r in rows)
    lines.append(f"largest: {worst} B ({'fits' if worst <= env['shared_limit_bytes'] else 'OVER'} the H200's "
                 f"{env['shared_limit_bytes']} B)")
    return "\n".join(lines)


TABLES: list[Table] = [
    Table("docs/kernels.md", "kernel_resources", KERNEL_RESOURCES, _kernel_resources_table),
    Table("docs/kernels.md", "tune_large_blocks", TUNE_LARGE_BLOCKS, _large_blocks_tune_table),
    Table("docs/results.md", "gqa_128k", GQA_GRID, _gqa_sweep_table),
    Table("docs/kernels.md", "kv_outer_v1", KV_OUTER_V1, _kv_outer_v1_table),
    Table("docs/kernels.md", "gqa_32k_v2", BLOCK_SPARSE_V2, lambda: _gqa_bench_table(BLOCK_SPARSE_V2, 32768, "")),
    Table("docs/kernels.md", "index_tune_1m", f"{TUNE_INDEX}, {MSA_OPERATOR_V1}", _index_tune_table),
    Table("docs/kernels.md", "operator", f"{MSA_OPERATOR_V1}, {TUNE_INDEX}", _operator_table),
    Table("docs/kernels.md", "dense_flash", DENSE, _dense_table),
    Table("docs/kernels.md", "decode_bench", f"{DECODE_BENCH}, {DECODE_BEFORE_SYNC_FIX}", _decode_bench_table),
    Table("docs/kernels.md", "gqa_128k_v3", BLOCK_SPARSE_V3, lambda: _gqa_bench_table(BLOCK_SPARSE_V3, 131072, "ms")),
]

CLAIMS: list[Claim] = []


def _step(path: str, what: str, n: int) -> dict:
    return row(path, what=what, N=n)


FWD, FWD_BWD, DET = "kv-outer forward", "kv-outer forward+backward", "kv-outer forward+backward deterministic"
SEL, CUDNN = "msa selection", "sdpa cudnn forward+backward"
MSA_STEP = "msa attention step: selection + attention + index KL, forward+backward"
KL_STEP = "index KL on selected tokens forward+backward (triton, LSE given)"


def _backward_row(n: int) -> tuple:
    """One row of the backward table: v1's and v2's runs, each ratio within its own run."""
    t = lambda path, what: _step(path, what, n)["median_ms"]  # noqa: E731
    v1 = t(STEP_V1, CUDNN) / (t(STEP_V1, SEL) + t(STEP_V1, FWD_BWD))
    v2 = t(STEP_V2, CUDNN) / (t(STEP_V2, SEL) + t(STEP_V2, FWD_BWD))
    return (t(STEP_V2, SEL), t(STEP_V2, FWD), _step(STEP_V2, FWD, n)["useful_tflops"], t(STEP_V1, FWD_BWD),
            _step(STEP_V1, FWD_BWD, n)["useful_tflops"], t(STEP_V2, FWD_BWD), _step(STEP_V2, FWD_BWD, n)["useful_tflops"],
            t(STEP_V2, DET), t(STEP_V2, CUDNN), v1, v2, t(STEP_V1, DET) if n < 131072 else None)


def _kl(path: str, backend: str, dtype: str, lse_given: bool, n: int) -> float:
    return med(path, what="loss+backward", backend=backend, index_dtype=dtype, lse_given=lse_given, N=n)


def _tile(path: str, stage_name: str, dtype: str, tokens: int, warps: int) -> float:
    return med(path, what="tile", stage=stage_name, index_dtype=dtype, tokens=tokens, num_warps=warps, N=32768)


K = "docs/kernels.md"
CLAIMS += [
    Claim(K, "Whole operator at 128K: {0:.1f}x faster than the dense baseline (cuDNN)", KV_OUTER_V1,
          lambda: (med(KV_OUTER_V1, N=131072, method="sdpa_cudnn")
                   / med(KV_OUTER_V1, N=131072, method="kv_outer total (lists+attend+merge)"),)),
    Claim(K, "bf16 {0}–{1}, fp16 {2}–{3}, fp32 {4}–{5} relative error against the float32 reference; LSE ≤ {6}",
          KV_OUTER_V1, lambda: tuple(sci(f(errors(KV_OUTER_V1, "out_rel_err", "kv_outer", dtype=d)))
                                     for d in ("bfloat16", "float16", "float32") for f in (min, max))
          + (sci(max(errors(KV_OUTER_V1, "lse_rel_err", "kv_outer"))),)),
    # v2's outcomes: the attend stage at 128K, one tuning run (the 48.8 is v1's run)
    Claim(K, "{0:.1f} → {1:.1f} ms (−{2:.0f} %) (v1's run → v2's)", f"{KV_OUTER_V1}, {BLOCK_SPARSE_V2}", lambda: (
        med(KV_OUTER_V1, N=131072, method="stage: attend (warps=4, stages=1)"),
        med(BLOCK_SPARSE_V2, N=131072, method="stage: attend (prefetch=False, warps=4, stages=1, rows=128)"),
        100 * (1 - med(BLOCK_SPARSE_V2, N=131072, method="stage: attend (prefetch=False, warps=4, stages=1, rows=128)")
               / med(KV_OUTER_V1, N=131072, method="stage: attend (warps=4, stages=1)")))),
    Claim(K, "**worse** at 128 rows ({0:.1f} → {1:.1f} ms at 4 warps, {2:.1f} at 8); at 64 rows {3:.1f} → {4:.1f} ms; "
          "helped only 32-row tiles ({5:.1f} → {6:.1f})", TUNE_ATTEND, lambda: tuple(
              med(TUNE_ATTEND, stage="attend", rows=r, prefetch=p, warps=w)
              for r, p, w in ((128, False, 4), (128, True, 4), (128, True, 8), (64, False, 4), (64, True, 4),
                              (32, False, 4), (32, True, 2)))),
    Claim(K, "**{0:.1f} ms, {1:.0f} useful TFLOP/s** ({2:.1f} TB/s on the 71 GB)", TUNE_ATTEND, lambda: (
        lambda r: (r["median_ms"], r["useful_tflops"], 71 / r["median_ms"]))(
            row(TUNE_ATTEND, stage="attend", rows=64, prefetch=False, warps=4))),
    Claim(K, "{0:.1f} ms at 4 warps: MMA too small", TUNE_ATTEND,
          lambda: (med(TUNE_ATTEND, stage="attend", rows=32, prefetch=False, warps=4),)),
    Claim(K, "| 2 or 8 warps at 64 rows | – | {0:.1f} / {1:.1f} ms |", TUNE_ATTEND,
          lambda: tuple(med(TUNE_ATTEND, stage="attend", rows=64, prefetch=False, warps=w) for w in (2, 8))),
    Claim(K, "Merge stays at {0:.2f} ms", BLOCK_SPARSE_V2, lambda: (med(BLOCK_SPARSE_V2, N=131072, method="stage: merge"),)),
    Claim(K, "measured {0:.1f} ms ({1:.0f} useful TFLOP/s)", TUNE_ATTEND, lambda: (
        lambda r: (r["median_ms"], r["useful_tflops"]))(row(TUNE_ATTEND, stage="whole operator, module defaults"))),
    Claim(K, "At 128K, G = 16: KV-outer {0:.1f} ms whole operator (v2-run defaults), Q-outer {1:.1f} ms, "
          "FlexAttention {2:.0f} ms", BLOCK_SPARSE_V2, lambda: tuple(
              med(BLOCK_SPARSE_V2, N=131072, method=m) for m in (
                  "triton whole operator", "triton_q_outer whole operator", "flex (block mask built in the timed call)"))),
    Claim(K, "128K: Triton selection {0:.1f} ms vs the reference {1:.0f} ms. The top-k kernel {2:.1f} ms vs "
          "`torch.topk` {3:.1f} ms", MSA_OPERATOR_V1, lambda: tuple(med(MSA_OPERATOR_V1, N=131072, what=w) for w in (
              "select_msa triton (scores + top-k)", "select_msa reference", "top-k kernel alone",
              "torch.topk on the same scores (no causal mask, no ties rule)"))),
    Claim(K, "no tie rule): {0:.1f}x", MSA_OPERATOR_V1, lambda: (
        med(MSA_OPERATOR_V1, N=131072, what="torch.topk on the same scores (no causal mask, no ties rule)")
        / med(MSA_OPERATOR_V1, N=131072, what="top-k kernel alone"),)),
    Claim(K, "(8192 blocks per row): {0:.1f} ms", TUNE_INDEX, lambda: (med(TUNE_INDEX, startswith="top-k kernel alone"),)),
    Claim(K, "the index branch) {0}: {1:.0f} useful TFLOP/s for the whole operator",
          f"{MSA_OPERATOR_V1}, {TUNE_INDEX}", lambda: (
              lambda flop: (sci(flop), flop / med(TUNE_INDEX, what="whole MSA operator at 1M") / 1e9))(
                  row(MSA_OPERATOR_V1, N=1 << 20, what="whole MSA operator")["useful_flop"])),
    # v3
    Claim(K, "measured, same run: **{0:.1f} ms** ({1:.0f} useful TFLOP/s) vs {2:.1f} ms with 4 GiB chunks. The whole "
          "KV-outer call at 128K is now {3:.1f}x faster than dense cuDNN ({4:.1f} ms). Stages in that run: lists "
          "{5:.1f} ms, attend {6:.1f} ms, merge {7:.1f} ms", BLOCK_SPARSE_V3, lambda: (
              lambda rows: (rows[2]["median_ms"], rows[2]["useful_tflops"], rows[4]["median_ms"],
                            rows[0]["median_ms"] / rows[2]["median_ms"], rows[0]["median_ms"], rows[6]["median_ms"],
                            rows[7]["median_ms"], rows[10]["median_ms"]))(_v3_chunking_rows())),
    Claim(K, "16K (fp32) and on {0:.7f} of rows at 64K (bf16). At 128K (Hq = 64, block 128, top-16, per head): "
          "{1:.1f} ms vs the reference {2:.0f} ms", MOBA_SELECTION, lambda: (
              row(MOBA_SELECTION, check="moba triton selection vs reference", N=65536)["identical_rows"],
              med(MOBA_SELECTION, what="select_moba triton"), med(MOBA_SELECTION, what="select_moba reference"))),
    Claim(K, "`moba_attention(backend=\"triton\")` at 128K: {0:.0f} ms whole", MOBA_SELECTION,
          lambda: (med(MOBA_SELECTION, startswith="moba_attention triton"),)),
    Claim(K, "bf16 {0}–{1}, fp16 ≤ {2}, fp32 ≤ {3} (causal, non-causal", DENSE, lambda: (
        sci(min(errors(DENSE, "out_rel_err", "flash", dtype="bfloat16"))),
        sci(max(errors(DENSE, "out_rel_err", "flash", dtype="bfloat16"))),
        sci(max(errors(DENSE, "out_rel_err", "flash", dtype="float16"))),
        sci(max(errors(DENSE, "out_rel_err", "flash", dtype="float32"))))),
    Claim(K, "Copy bandwidth measured in the same run: {0:.2f} TB/s (read + write of 1 GiB). Dense cuDNN decode shows "
          "{1:.0f} % of it", DECODE_BENCH, lambda: (
              float(row(DECODE_BENCH, what="device copy")["tb_per_s"]),
              100 * row(DECODE_BENCH, L=1 << 20, method="dense sdpa_cudnn, CUDA graph replay")["hbm_share"])),
    Claim(K, "relative error {0} (bf16), identical block sets", DECODE_BENCH, lambda: (
        sci(row(DECODE_BENCH, check="msa_decode triton vs reference")["out_rel_err"]),)),
]


def _v3_chunking_rows() -> list[dict]:
    """The chunking section of the v3 bench: the 128K rows before its group-size section."""
    rows = rows_of(BLOCK_SPARSE_V3)
    end = next(i for i, r in enumerate(rows) if r.get("Hkv") == 64)
    section = rows[:end]
    if not (section[2]["method"] == "triton whole operator" and section[4]["method"].endswith("4 GiB partial chunks")
            and section[0]["method"] == "sdpa_cudnn" and section[6]["method"] == "stage: query lists"
            and section[7]["method"] == "stage: attend (warps=4, stages=1, rows=64)"
            and section[10]["method"] == "stage: merge"):
        raise ValueError(f"{BLOCK_SPARSE_V3}: the chunking section is not laid out as the claim reads it")
    return section


CLAIMS += [
    Claim(K, "| 32K | {0:.1f} ms | {1:.1f} ms ({2:.0f} TF) | {3:.1f} ms ({4:.0f} TF) | {11:.1f} ms | **{5:.1f} ms ({6:.0f} TF)** "
          "| {7:.1f} ms | {8:.1f} ms | {9:.1f}x → {10:.1f}x |", f"{STEP_V1}, {STEP_V2}",
          lambda: _backward_row(32768)),
    Claim(K, "| 128K | {0:.1f} ms | {1:.1f} ms ({2:.0f} TF) | {3:.1f} ms ({4:.0f} TF) | not run", f"{STEP_V1}, {STEP_V2}",
          lambda: _backward_row(131072)[:5]),
    Claim(K, "| **{5:.1f} ms ({6:.0f} TF)** | {7:.1f} ms | {8:.0f} ms | {9:.1f}x → {10:.1f}x |", f"{STEP_V1}, {STEP_V2}",
          lambda: _backward_row(131072)),
    Claim(K, "| 64K | {0:.1f} ms | {1:.1f} ms | {3:.1f} ms | {11:.1f} ms | **{5:.1f} ms ({6:.0f} TF)** | {7:.1f} ms | "
          "{8:.1f} ms | {9:.1f}x → {10:.2f}x |", f"{STEP_V1}, {STEP_V2}", lambda: _backward_row(65536)),
    Claim(K, "v1's speedups are against its own run's cuDNN ({0:.1f}, {1:.1f}, {2:.0f} ms)", STEP_V1,
          lambda: tuple(_step(STEP_V1, CUDNN, n)["median_ms"] for n in (32768, 65536, 131072))),
    Claim(K, "| 32K | {0:.1f} ms | {1:.1f} ms | {2:.1f} ms | **{3:.1f} ms** | {4:.1f} ms | {5:.1f} ms | {6:.1f}x → {7:.1f}x "
          "(two runs) |", f"{STEP_V1}, {STEP_V2}, {STEP_V4}", lambda: _step_row(32768)),
    Claim(K, "| 128K | {0:.1f} ms | {1:.1f} ms | {2:.1f} ms | **{3:.1f} ms** | {4:.1f} ms | {5:.0f} ms | {6:.1f}x → {7:.1f}x "
          "(two runs) |", f"{STEP_V1}, {STEP_V2}, {STEP_V4}", lambda: _step_row(131072)),
    Claim(K, "| 64K | {0:.1f} ms | {1:.1f} ms | {2:.1f} ms | not run | – | {3:.1f} ms | {4:.1f}x |", f"{STEP_V1}, {STEP_V2}",
          lambda: tuple(_step(p, w, 65536)["median_ms"] for p, w in (
              (STEP_V1, MSA_STEP), (STEP_V2, MSA_STEP), (STEP_V2, KL_STEP), (STEP_V2, CUDNN)))
          + (_step(STEP_V2, CUDNN, 65536)["median_ms"] / _step(STEP_V2, MSA_STEP, 65536)["median_ms"],)),
    Claim(K, "(attention forward + backward {0:.1f} / {1:.1f} ms)", STEP_V4,
          lambda: tuple(_step(STEP_V4, FWD_BWD, n)["median_ms"] for n in (32768, 131072))),
]


def _step_row(n: int) -> tuple:
    """The MSA step table: the v1 and v2 backward's runs, then the v4 run with the swept index KL
    tiles. v4 timed no dense row, so its speedup divides by v2's run's cuDNN: two runs."""
    t = lambda path, what: _step(path, what, n)["median_ms"]  # noqa: E731
    cudnn = t(STEP_V2, CUDNN)
    return (t(STEP_V1, MSA_STEP), t(STEP_V2, MSA_STEP), t(STEP_V2, KL_STEP), t(STEP_V4, MSA_STEP), t(STEP_V4, KL_STEP),
            cudnn, cudnn / t(STEP_V2, MSA_STEP), cudnn / t(STEP_V4, MSA_STEP))


def _kl_first(path: str, n: int, label: str) -> tuple:
    ref = _kl(path, "reference", "fp32", False, n)
    f32, b16 = (_kl(path, "triton", d, False, n) for d in ("fp32", "bf16"))
    return (label, ref, f32, ref / f32, _kl(path, "triton", "fp32", True, n), b16, ref / b16,
            _kl(path, "triton", "bf16", True, n))


def _kl_tiled(n: int, label: str, first: str) -> tuple:
    now = lambda d, g: _kl(KL_TILED, "triton" if d else "reference", d or "fp32", g, n)  # noqa: E731
    was = lambda d, g: _kl(first, "triton", d, g, n)  # noqa: E731
    return (label, now(None, False), now("fp32", False), was("fp32", False), now("fp32", True), was("fp32", True),
            now("bf16", False), was("bf16", False), now("bf16", True), was("bf16", True))


CLAIMS += [
    Claim(K, "| {0} | fp32 | {1:.0f} ms | {2:.1f} ms ({3:.0f}x) | {4:.1f} ms |\n| {0} | bf16 | – | {5:.1f} ms ({6:.0f}x",
          KL_32K, lambda: _kl_first(KL_32K, 32768, "32K")),
    Claim(K, "| {0} | fp32 | {1:.0f} ms | {2:.1f} ms ({3:.0f}x) | {4:.1f} ms |\n| {0} | bf16 | – | {5:.1f} ms ({6:.0f}x) "
          "| {7:.1f} ms |", KL_64K, lambda: _kl_first(KL_64K, 65536, "64K")),
    Claim(K, "reference {1:.0f} ms; Triton with fp32 index inputs {2:.0f} ms (LSE recomputed) and {4:.0f} ms (LSE given); "
          "bf16 index inputs {5:.0f} ms and {7:.1f} ms", KL_128K, lambda: _kl_first(KL_128K, 131072, "128K")),
    Claim(K, "| {0} | fp32 | {1:.0f} ms | {2:.1f} ms (was {3:.1f}) | {4:.1f} ms ({5:.1f}) |\n| {0} | bf16 | – | "
          "{6:.1f} ms ({7:.1f}) | **{8:.1f} ms ({9:.1f})** |", f"{KL_TILED}, {KL_32K}", lambda: _kl_tiled(32768, "32K", KL_32K)),
    Claim(K, "| {0} | fp32 | {1:.0f} ms | {2:.1f} ms ({3:.0f}) | {4:.1f} ms ({5:.0f}) |\n| {0} | bf16 | – | "
          "{6:.1f} ms ({7:.0f}) | **{8:.1f} ms ({9:.1f})** |", f"{KL_TILED}, {KL_128K}",
          lambda: _kl_tiled(131072, "128K", KL_128K)),
    Claim(K, "| bf16 | 2 (KL and gradients) | {0:.1f} | {1:.1f} | **{2:.1f}** | *{3:.1f}* | {4:.1f} | {5:.1f} |", KL_TILES,
          lambda: tuple(_tile(KL_TILES, "kl and gradients", "bf16", t, w) for t, w in TILE_ORDER)),
    Claim(K, "| fp32 | 2 | {0:.1f} | {1:.1f} | **{2:.1f}** | {3:.1f} | *{4:.1f}* | {5:.1f} |", KL_TILES,
          lambda: tuple(_tile(KL_TILES, "kl and gradients", "fp32", t, w) for t, w in TILE_ORDER)),
    Claim(K, "{0} passed with bf16 ≤ 1e-2 included", f"{LOGS}/gpu_tests_cuda_index_kl_tiles_h200.log",
          lambda: (passed(f"{LOGS}/gpu_tests_cuda_index_kl_tiles_h200.log")[0],)),
    Claim(K, "): {0} passed, {1} failed, both in", f"{LOGS}/gpu_tests_cuda_h200.log",
          lambda: passed(f"{LOGS}/gpu_tests_cuda_h200.log")),
    Claim(K, "`test_decode.py`, {0} passed)", f"{LOGS}/gpu_tests_cuda_backward_h200.log",
          lambda: (passed(f"{LOGS}/gpu_tests_cuda_backward_h200.log")[0],)),
    Claim(K, "**{0} passed** in 165 s", f"{LOGS}/gpu_tests_cuda_v3_h200.log",
          lambda: (passed(f"{LOGS}/gpu_tests_cuda_v3_h200.log")[0],)),
]
TILE_ORDER = ((16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (64, 8))


B = "docs/benchmarks.md"
CLAIMS += [
    Claim(B, "attend stage {0:.0f} useful TFLOP/s ({1:.1f} ms); the whole call (query lists + attend + merge) {2:.1f} ms = "
          "{3:.0f} useful TFLOP/s, {4:.1f}x dense cuDNN", BLOCK_SPARSE_V3, lambda: (
              lambda rows: (rows[7]["useful_tflops"], rows[7]["median_ms"], rows[2]["median_ms"], rows[2]["useful_tflops"],
                            rows[0]["median_ms"] / rows[2]["median_ms"]))(_v3_chunking_rows())),
    Claim(B, "MSA {0:.3f} ms vs dense cuDNN {1:.3f} ms, both CUDA-graph replayed: **{2:.1f}x** ({3:.1f}x without graphs); "
          "MSA at {4:.0f} % of the measured copy bandwidth", DECODE_BENCH, lambda: (
              lambda msa, plain, dense: (msa["median_ms"], dense["median_ms"], dense["median_ms"] / msa["median_ms"],
                                         dense["median_ms"] / plain["median_ms"], 100 * msa["hbm_share"]))(
                  row(DECODE_BENCH, L=1 << 20, method="msa_decode triton, CUDA graph replay"),
                  row(DECODE_BENCH, L=1 << 20, method="msa_decode triton"),
                  row(DECODE_BENCH, L=1 << 20, method="dense sdpa_cudnn, CUDA graph replay"))),
    Claim(B, "{0:.0f} / {1:.0f} TFLOP/s at 32K / 128K (cuDNN {2:.0f} / {3:.0f}, FlashAttention backend {4:.0f} / {5:.0f})",
          DENSE, lambda: tuple(row(DENSE, N=n, method=m)["tflops"] for m in ("triton flash", "sdpa_cudnn", "sdpa_flash")
                               for n in (32768, 131072))),
    Claim(B, "in bf16 (64K); {0:.1f} ms vs {1:.0f} ms at 128K (Hq = 64)", MOBA_SELECTION, lambda: (
        med(MOBA_SELECTION, what="select_moba triton"), med(MOBA_SELECTION, what="select_moba reference"))),
    Claim(B, "per-token selection {0:.0f} ms (every 128 x 128 tile partial, the block mask built inside the call), our "
          "Q-outer kernel {1:.0f} ms, our KV-outer kernel {2:.1f} ms whole operator",
          f"{BLOCK_SPARSE_V2}, {BLOCK_SPARSE_V3} (three times, no ratio)", lambda: (
              med(BLOCK_SPARSE_V2, N=131072, method="flex (block mask built in the timed call)"),
              _v3_chunking_rows()[3]["median_ms"], _v3_chunking_rows()[2]["median_ms"])),
]


# --- reference_check.md ---------------------------------------------------------------------------

R = "docs/reference_check.md"


def _span(values, fmt=sci) -> str:
    """``lo–hi`` as the docs write a range, one value where both ends read the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _shape_fields(shape: str) -> dict:
    return {k: int(v) for k, v in (f.split("=") for f in shape.split() if "=" in f and f.split("=")[1].isdigit())}


def _reference_agreement_table() -> str:
    rows = rows_of(REFERENCE_CHECK)
    cpu = [r for r in rows if r["check"] == "cuda vs cpu, float64"]
    flex = [r for r in rows if r["check"].startswith("flex (compiled) vs reference")]
    if not all(r[k] for r in cpu for k in ("moba_same_selection", "msa_same_selection", "oracle_same_selection")) \
            or any(r["coverage_recall"] != 0 for r in cpu):
        raise ValueError(f"{REFERENCE_CHECK}: a CUDA selection or coverage differs from the CPU's")
    shapes = [_shape_fields(r["shape"]) for r in cpu]
    joined = lambda values: "/".join(str(v) for v in sorted(values))  # noqa: E731
    ns = [s["N"] for s in shapes]
    shape_cell = (f"N {min(ns)}–{max(ns)}, GQA {joined({s['Hq'] // s['Hkv'] for s in shapes})}, "
                  f"D {joined({s['D'] for s in shapes})}, blocks {joined({s['block'] for s in shapes})} (partial last block)")
    outs = [r[k] for r in cpu for k in ("full", "moba_out", "msa_out")]
    by_dtype = {d: [r["out"] for r in flex if f", {d}," in r["check"]] for d in ("float32", "float16", "bfloat16")}
    lines = ["| check | shapes | result |", "|---|---|---|",
             f"| every reference on CUDA vs the CPU, float64 inputs | {shape_cell} | outputs within {_span(outs)} "
             "relative; MoBA, MSA and oracle selections identical; coverage recall identical |",
             "| block-sparse attention through compiled FlexAttention vs the reference (float32 math on the same inputs) "
             "| same shapes, per group and per head | " + ", ".join(f"{d} {_span(v)}" for d, v in by_dtype.items())
             + f"; LSE {_span([r['lse'] for r in flex])} |"]
    return "\n".join(lines)


def _reference_time(what: str) -> dict:
    return row(REFERENCE_CHECK, check="reference time", what=what)


def _reference_seconds_table() -> str:
    t = lambda what: f"{_reference_time(what)['seconds']:.2f}"  # noqa: E731
    sdpa = _reference_time("full_attention backend=sdpa")
    flex = _reference_time("block_sparse_attention backend=flex (second call; first incl. compile and mask)")
    lines = ["| operation | seconds |", "|---|---|",
             f"| `full_attention` reference (float32 math, query chunks) | {t('full_attention (reference, fp32 math)')} |",
             f"| `full_attention(backend=\"sdpa\")` (rel. error vs reference {sci(sdpa['rel_err_vs_reference'])}, bf16 "
             f"output) | {sdpa['seconds']:.2f} |",
             f"| `select_msa` | {t('select_msa')} |",
             f"| `select_moba` | {t('select_moba')} |",
             f"| `select_oracle` (true block mass of every row) | {t('select_oracle')} |",
             f"| `block_sparse_attention` reference | {t('block_sparse_attention (reference)')} |",
             f"| `block_sparse_attention(backend=\"flex\")`, second call (first, with compilation: "
             f"{flex['first_call_seconds']:.1f} s) | {flex['seconds']:.2f} |",
             f"| `coverage` of three selections on 4,096 sampled rows | "
             f"{t('coverage of 3 selections, 4096 sampled rows')} |"]
    return "\n".join(lines)


TABLES += [
    Table(R, "reference_agreement", REFERENCE_CHECK, _reference_agreement_table),
    Table(R, "reference_seconds", REFERENCE_CHECK, _reference_seconds_table),
]
CLAIMS += [
    Claim(R, "Peak GPU memory over the whole step: {0:.0f} GiB", REFERENCE_CHECK,
          lambda: (_reference_time("peak GPU memory (GiB)")["peak_gib"],)),
    Claim(R, "`coverage(q, k, window_selection, rows=256)` on `N = {0:,}` (same heads, bf16) took {1:.2f} s; the recall "
          "of 4 sampled rows re-derived directly in float64 (full softmax over all visible keys) differs by at most {2}",
          REFERENCE_CHECK, lambda: (lambda r: (_shape_fields(r["shape"])["N"], r["seconds"],
                                               sci(r["max_abs_diff_vs_direct_fp64"])))(
              row(REFERENCE_CHECK, check="coverage at 1M tokens, 256 sampled rows"))),
]


# --- cost_model.md: the roofline reading, from the sweeps' pct_of_bound ------------------------

C = "docs/cost_model.md"
SWEEP_1M = "experiments/results/sweeps/prefill_1m_h200"
HEADLINE_1M = "experiments/results/sweeps/headline_prefill_1m_h200"


def _pct_of_bound(folder: str, stage_name: str, seq_len: int = 1 << 20) -> float:
    (r,) = [r for r in sweep_rows(folder) if r["method"] == "msa" and r["backend"] == "triton"
            and r["seq_len"] == seq_len and r["stage"] == stage_name and r["status"] == "ok"]
    return r["pct_of_bound"]


def _dense_roof() -> tuple:
    dense = [r for r in sweep_rows(SWEEP_1M) if r["method"] == "full" and r["backend"] == "sdpa_cudnn"
             and r["stage"] == "total" and r["status"] == "ok"]
    if any(r["bound_by"] != "compute" for r in dense):
        raise ValueError(f"{SWEEP_1M}: a dense row is not compute-bound")
    useful, peak = [r["tflops_useful"] for r in dense], [r["peak_tflops"]["bf16"] for r in dense]
    return (min(r["seq_len"] for r in dense) >> 10, max(r["seq_len"] for r in dense) >> 20,
            min(useful), max(useful), min(peak), max(peak))


CLAIMS += [
    Claim(C, "rows sit at {0:.0f} % of their bound at 1M in `headline_prefill_1m_h200`", HEADLINE_1M,
          lambda: (_pct_of_bound(HEADLINE_1M, "metadata"),)),
    Claim(C, "dense attention (SDPA cuDNN, {0}K–{1}M in `prefill_1m_h200`) sits near the compute roof ({2:.0f}–{3:.0f} "
          "of the {4:.0f}–{5:.0f} TFLOP/s peak each run measured); at 1M in `headline_prefill_1m_h200`, MSA's selection "
          "at {6:.0f} % of its compute bound, the KV-outer attend at {7:.0f} % of its memory bound and the merge at "
          "{8:.0f} %", f"{SWEEP_1M}, {HEADLINE_1M}", lambda: _dense_roof() + tuple(
              _pct_of_bound(HEADLINE_1M, s) for s in ("selection", "attention", "merge"))),
]


# --- benchmarks.md: the decode sweep and the GPU correctness bullets -------------------------------

DECODE_SWEEP = "experiments/results/sweeps/decode_1m_h200"
SWEEP_FIRST_REVISION = "fe76583c0462"  # the sweeps' first H200 run, before the fixes its rows led to


def _decode_sweep(method: str, backend: str, seq_len: int = 1 << 20) -> dict:
    (r,) = [r for r in sweep_rows(DECODE_SWEEP) if r["method"] == method and r["backend"] == backend
            and r["seq_len"] == seq_len and r["stage"] == "total" and r["status"] == "ok"]
    return r


def _one_run(a: dict, b: dict) -> float:
    """``b``'s time over ``a``'s for two rows of one run (old rows name no process: one revision)."""
    if a.get("process") != b.get("process") or a["git_revision"] != b["git_revision"]:
        raise ValueError("rows of different runs")
    return b["median_ms"] / a["median_ms"]


def _decode_sweep_claim() -> tuple:
    msa, dense = _decode_sweep("msa", "triton"), _decode_sweep("full", "sdpa_cudnn")
    return msa["median_ms"], dense["median_ms"], _one_run(msa, dense), msa["pct_of_bound"]


def _flash_decoding() -> dict:
    r = _decode_sweep("full", "triton")
    if r["git_revision"] == _decode_sweep("full", "sdpa_cudnn")["git_revision"]:
        raise ValueError("the doc labels cuDNN's row as another run's: it is now the same run")
    return r


def _first_run_raw(folder: str, method: str, backend: str, seq_len: int, stage_name: str = "total") -> dict:
    """A row of the sweep's first run that a later ``--redo`` superseded (the file keeps both)."""
    found = [r for r in map(json.loads, (ROOT / folder / "results.jsonl").read_text().splitlines())
             if r.get("git_revision") == SWEEP_FIRST_REVISION and r["method"] == method and r["backend"] == backend
             and r["seq_len"] == seq_len and r["stage"] == stage_name and r.get("status") == "ok"]
    if len(found) != 1:
        raise ValueError(f"{folder}: {len(found)} first-run rows for {method}/{backend} N={seq_len} {stage_name}")
    return found[0]


def _correctness_bullet() -> tuple:
    rows = [r for r in rows_of(CORRECTNESS_FINAL) if r["check"] in ("triton vs reference", "triton_q_outer vs reference")]
    if any(r["nan"] for r in rows) or {r["per"] for r in rows} != {"group", "head"}:
        raise ValueError(f"{CORRECTNESS_FINAL}: a NaN, or not both per-group and per-head rows")
    joined = lambda values: "/".join(str(v) for v in sorted(set(values)))  # noqa: E731
    err = lambda d: sci(max(r["out_rel_err"] for r in rows if r["dtype"] == d))  # noqa: E731
    return (f"{min(r['N'] for r in rows):,}", f"{max(r['N'] for r in rows):,}", joined(r["Hq"] // r["Hkv"] for r in rows),
            joined(r["D"] for r in rows), joined(r["block"] for r in rows), err("bfloat16"), err("float16"),
            err("float32"), sci(max(r["lse_rel_err"] for r in rows)))


def _dense_check_bullet() -> tuple:
    rows = [r for r in rows_of(DENSE_64K) if r.get("check") == "flash vs reference"]
    if not (any(r["causal"] for r in rows) and any(not r["causal"] for r in rows) and any(r["Nq"] < r["Nk"] for r in rows)):
        raise ValueError(f"{DENSE_64K}: the causal / non-causal / Nq < Nk cases are not all there")
    err = lambda d: sci(max(r["out_rel_err"] for r in rows if r["dtype"] == d))  # noqa: E731
    return f"{max(r['Nq'] for r in rows) >> 10}K", err("bfloat16"), err("float32")


def _decode_check() -> tuple:
    r = row(DECODE_BENCH, check="msa_decode triton vs reference")
    if r["identical_block_sets"] != 1.0 or r["nan"]:
        raise ValueError(f"{DECODE_BENCH}: the decode's block sets differ")
    return f"{r['L'] >> 10}K", sci(r["out_rel_err"])


CLAIMS += [
    Claim(B, "in the decode sweep: {0:.3f} vs {1:.2f} ms, **{2:.1f}x**, {3:.0f} %", DECODE_SWEEP, _decode_sweep_claim),
    Claim(B, "{0:.2f} ms at 1M, batch 8 ({1:.0f} % of the copy bound; cuDNN {2:.2f} in the sweep's earlier run)",
          DECODE_SWEEP, lambda: (_flash_decoding()["median_ms"], _flash_decoding()["pct_of_bound"],
                                 _decode_sweep("full", "sdpa_cudnn")["median_ms"])),
    Claim(B, "KV-outer and Q-outer against the float32 reference over N {0}–{1}, GQA {2}, head dims {3}, blocks {4}, per "
          "group and per head: bf16 ≤ {5}, fp16 ≤ {6}, fp32 ≤ {7} relative error, LSE ≤ {8}, never NaN",
          CORRECTNESS_FINAL, _correctness_bullet),
    Claim(B, "Dense flash forward up to {0} (causal, non-causal, Nq < Nk): bf16 ≤ {1}, fp32 ≤ {2}", DENSE_64K,
          _dense_check_bullet),
    Claim(B, "Decode at {0} context: {1} (bf16) against the reference decode, identical block sets", DECODE_BENCH,
          _decode_check),
]


def _float32_selections() -> tuple:
    def lengths(check: str) -> str:
        rows = [r for r in rows_of(SELECTION_CHECK) if r.get("check") == check and r["dtype"] == "float32"]
        if not rows or any(r["identical_rows"] != 1.0 for r in rows):
            raise ValueError(f"{SELECTION_CHECK}: a float32 {check!r} row differs from the reference")
        return " and ".join(f"{round(r['N'] / 1024)}K" for r in rows)
    return lengths("triton selection vs reference"), lengths("moba triton selection vs reference")


CLAIMS += [Claim(B, "the same set on every row in float32 (MSA: {0}; MoBA: {1})", SELECTION_CHECK, _float32_selections)]


# --- kernels.md prose: the 1M sweep's fixes, the v2 backward -------------------------------------

def _sweep_stage(folder: str, seq_len: int, stage_name: str) -> dict:
    (r,) = [r for r in sweep_rows(folder) if r["method"] == "msa" and r["backend"] == "triton"
            and r["seq_len"] == seq_len and r["stage"] == stage_name and r["status"] == "ok"]
    return r


def _chunk_fix() -> tuple:
    """The first 1M sweep's MSA rows (superseded in the file, kept) against the ``--redo``'s."""
    m, half = 1 << 20, 1 << 19
    first = _first_run_raw(SWEEP_1M, "msa", "triton", m)
    now = lambda n, s: _sweep_stage(SWEEP_1M, n, s)  # noqa: E731
    return (first["median_ms"], med(TUNE_INDEX, what="whole MSA operator at 1M"), first["peak_mem_gb"],
            _first_run_raw(SWEEP_1M, "msa", "triton", m, "metadata")["median_ms"],
            now(m, "metadata")["median_ms"], now(m, "attention")["median_ms"], now(m, "merge")["median_ms"],
            now(m, "total")["median_ms"], now(m, "total")["peak_mem_gb"],
            _first_run_raw(SWEEP_1M, "msa", "triton", half)["median_ms"], now(half, "total")["median_ms"])


def _dense_decode_log() -> tuple:
    """``batch N Hq Hkv triton dense decode rel err E nan False``, one line a case."""
    import re

    cases = [re.match(r"(\d+) (\d+) \d+ \d+ triton dense decode rel err (\S+) nan (\w+)", line)
             for line in (ROOT / f"{LOGS}/dense_decode_check_h200.log").read_text().splitlines() if "rel err" in line]
    if not cases or any(c is None or c.group(4) != "False" for c in cases):
        raise ValueError("dense_decode_check_h200.log: a case is unreadable or has NaN")
    errs = [float(c.group(3)) for c in cases]
    return _span(errs), f"{round(max(int(c.group(2)) for c in cases) / 1000)}K"


def _backward_v2() -> tuple:
    tile = lambda path, keys, warps: med(path, what="backward tile", keys_per_program=keys, num_warps=warps)  # noqa: E731
    peak = lambda path: row(path, what=FWD_BWD, N=131072)["peak_mem_gb"]  # noqa: E731
    dq = lambda path: sci(max(r["dq"] for r in rows_of(path) if r.get("what") == "backward check"  # noqa: E731
                              and r["dtype"] == "bfloat16"))
    return (_step(STEP_V2, FWD_BWD, 32768)["median_ms"], _step(STEP_V2, FWD_BWD, 131072)["median_ms"],
            tile(STEP_V1, 128, 8), tile(STEP_V2, 128, 8), peak(STEP_V1), peak(STEP_V2), dq(STEP_V1), dq(STEP_V2))


BACKWARD_TILES = ((128, 8), (128, 4), (64, 4), (64, 8), (32, 4), (32, 8))


def _block_sizes_gpu() -> tuple:
    rows = rows_of(BLOCK_SIZES_GPU)
    if not all(r["ok"] for r in rows):
        raise ValueError(f"{BLOCK_SIZES_GPU}: a point failed")
    errors = [v for r in rows for key, v in r.items() if key.startswith(("moba_kv_outer_", "group_"))]
    return (len(rows), min(r["block_size"] for r in rows), max(r["block_size"] for r in rows), rows[0]["seq_len"],
            sci(max(errors)), min(r["moba_selection_rows_equal"] for r in rows),
            json.loads((ROOT / BLOCK_SIZES_GPU).read_text())["environment"]["package_hash"])


def _msa_ablations_gpu() -> tuple:
    rows = rows_of(MSA_ABLATIONS_GPU)
    if not all(r["local_block_first"] and r["same_per"] for r in rows):
        raise ValueError(f"{MSA_ABLATIONS_GPU}: a selection without its local block first, or of another per")
    return (len(rows), min(r["block_size"] for r in rows), max(r["block_size"] for r in rows),
            sci(max(r["share_rows_differ"] for r in rows)), sci(max(r["max_swap_gap"] for r in rows)))


def _first_v1_table_drift() -> tuple:
    """The largest difference, in whole percent rounded up, between a timed row of the first v1
    table and the same row (what, N, tile) of v1's re-run; rows only one of them has are skipped."""
    key = lambda r: (r["what"], r.get("N"), r.get("keys_per_program"), r.get("num_warps"))  # noqa: E731
    rerun = {key(r): r["median_ms"] for r in rows_of(STEP_V1) if "median_ms" in r}
    pairs = [(r["median_ms"], rerun[key(r)]) for r in rows_of(STEP_FIRST) if key(r) in rerun]
    if len(pairs) < 20:
        raise ValueError(f"{STEP_FIRST}: only {len(pairs)} rows in common with {STEP_V1}")
    return (math.ceil(max(100 * abs(b / a - 1) for a, b in pairs)),)


def _backward_checks(path: str) -> tuple:
    rows = [r for r in rows_of(path) if r.get("what") == "backward check"]
    if any(r["nan"] for r in rows) or {r["deterministic"] for r in rows} != {True, False}:
        raise ValueError(f"{path}: a NaN, or not both modes")
    worst = lambda d: sci(max(r[g] for r in rows if r["dtype"] == d for g in ("dq", "dk", "dv")))  # noqa: E731
    return (max(r["N"] for r in rows), "/".join(str(g) for g in sorted({r["Hq"] // r["Hkv"] for r in rows})),
            " and ".join(str(b) for b in sorted({r["block_size"] for r in rows})), worst("bfloat16"), worst("float32"))


CLAIMS += [
    Claim(K, "operator at {0:.0f} ms where the index-tuning run (`tune_index_topk_h200.json`) had {1:.0f}, with peak memory at {2:.0f} of 143 GB", SWEEP_1M,
          lambda: _chunk_fix()[:3]),
    Claim(K, "(query lists {3:.0f} ms at 1M, expected ~20)", SWEEP_1M, _chunk_fix),
    Claim(K, "**lists {4:.1f}, attend {5:.0f}, merge {6:.1f} ms; whole operator {7:.0f} ms**; peak memory {8:.0f} GB",
          SWEEP_1M, _chunk_fix),
    Claim(K, "At 512K: {9:.0f} → {10:.0f} ms.", SWEEP_1M, _chunk_fix),
    Claim(K, "({0:.1f} ms at 1M, batch 8: {1:.0f} % of the copy bound)", DECODE_SWEEP, lambda: (
        lambda r: (r["median_ms"], r["pct_of_bound"]))(_first_run_raw(DECODE_SWEEP, "full", "triton", 1 << 20))),
    Claim(K, "**{0:.2f} ms at 1M ({1:.0f} % of the copy bound; cuDNN {2:.2f} ms in the sweep's earlier run), {3:.3f} ms at "
          "128K**; bf16 error against the float32 reference {4} up to {5} context, no NaN", f"{DECODE_SWEEP}, {LOGS}",
          lambda: (_flash_decoding()["median_ms"], _flash_decoding()["pct_of_bound"],
                   _decode_sweep("full", "sdpa_cudnn")["median_ms"], _decode_sweep("full", "triton", 1 << 17)["median_ms"])
          + _dense_decode_log()),
    Claim(K, "Measured {0:.0f} and {1:.0f} ms: better than predicted", STEP_V2, lambda: _backward_v2()[:2]),
    Claim(K, "all {0} points of block sizes {1}-{2} x D 64 and 128 ran in bf16 at N = {3} (no resource\nerror), with "
          "relative errors against the float32 reference of at most {4}", BLOCK_SIZES_GPU, _block_sizes_gpu),
    Claim(K, "MoBA's Triton selection equal to the\nreference on {5:.1f} of rows", BLOCK_SIZES_GPU, _block_sizes_gpu),
    Claim(K, "(`check_block_sizes_gpu_h200.json`, triton 3.6, package hash `{6}`)", BLOCK_SIZES_GPU, _block_sizes_gpu),
    Claim(K, "{0} FLOP, {1:.0f} ms at the H200's bf16 peak; the minimal bytes (the cost model's: Q, K, V read\nonce, "
          "the bf16 partials written once) are {2:.0f} GB, {3:.0f} ms at copy bandwidth", MOBA_BLOCKS, lambda: (
              lambda r: (sci(r["useful_flop"]), r["bound_ms"], r["min_bytes"] / 1e9,
                         r["min_bytes"] / (r["copy_tb_per_s"] * 1e12) * 1e3))(
                  stage(MOBA_BLOCKS, "moba", "triton", "attention", 1 << 17, block_size=4096))),
    Claim(K, "{0:.1f}-{1:.1f}x over the\nblock-128 settings (64, 4, 1) at MoBA's blocks", TUNE_LARGE_BLOCKS, lambda: (
        lambda gains: (min(gains), max(gains)))([
            row(TUNE_LARGE_BLOCKS, block_size=b, rows=64, warps=4, stages=1)["median_ms"]
            / row(TUNE_LARGE_BLOCKS, block_size=b, rows=128, warps=8, stages=3)["median_ms"] for b in (512, 1024, 4096)])),
    Claim(K, "whole operator: {0:.0f}\nms before, {1:.0f} ms after, two processes). The best setting reaches {2:.0f} useful "
          "TFLOP/s against\ncuDNN's dense {3:.0f} in the first sweep's process", f"{MOBA_BLOCKS_V1}, {MOBA_BLOCKS}, "
          f"{TUNE_LARGE_BLOCKS}", lambda: (
              total(MOBA_BLOCKS_V1, "moba", "triton", 1 << 17, block_size=4096)["median_ms"],
              total(MOBA_BLOCKS, "moba", "triton", 1 << 17, block_size=4096)["median_ms"],
              max(r["useful_tflops"] for r in rows_of(TUNE_LARGE_BLOCKS)),
              total(MOBA_BLOCKS_V1, "full", "sdpa_cudnn", 1 << 17)["tflops_useful"])),
    Claim(K, "{0} selections (pooling max / mean / lse, per group and\nper head, sink blocks 0 and 2, blocks {1}-{2})",
          MSA_ABLATIONS_GPU, _msa_ablations_gpu),
    Claim(K, "whose sets differ at most {3}, and every differing row a near-tie (score gap at most {4})",
          MSA_ABLATIONS_GPU, _msa_ablations_gpu),
    Claim(K, "2026-11-23, is `bench_training_step_h200.json` and agrees within {0} %", f"{STEP_FIRST}, {STEP_V1}",
          _first_v1_table_drift),
    Claim(K, "({0:.0f} ms of v2's {1:.0f} ms at 128K", STEP_V2, lambda: (
        _step(STEP_V2, FWD_BWD, 131072)["median_ms"] - _step(STEP_V2, "kv-outer forward", 131072)["median_ms"],
        _step(STEP_V2, FWD_BWD, 131072)["median_ms"])),
    Claim(K, "at 32K (tile sweep, 128 keys x 8 warps): {2:.1f} → {3:.1f} ms. Peak memory at 128K {4:.1f} → {5:.1f} GB",
          f"{STEP_V1}, {STEP_V2}", _backward_v2),
    Claim(K, "dQ error against the float64 reference {6} → {7} (the partials", f"{STEP_V1}, {STEP_V2}", _backward_v2),
    Claim(K, "Tile (backward alone, 32K, fast mode, v2): 128 keys x 8 warps {0:.1f} ms; 128 x 4: {1:.1f}; 64 x 4: {2:.1f}; "
          "64 x 8: {3:.1f}; 32 x 4: {4:.1f}; 32 x 8: {5:.1f} (64 and 32 keys split the block, so their dQ still goes by "
          "atomics; v1, same order: {6:.1f}, {7:.1f}, {8:.1f}, {9:.1f}, {10:.1f}, {11:.1f})", f"{STEP_V2}, {STEP_V1}",
          lambda: tuple(med(p, what="backward tile", keys_per_program=k, num_warps=w)
                        for p in (STEP_V2, STEP_V1) for k, w in BACKWARD_TILES)),
    Claim(K, "v2, N up to {0}, GQA {1}, per group and per head, block {2}: bf16 ≤ {3}, fp32 ≤ {4} relative error for "
          "dQ, dK, dV, both modes, no NaN", STEP_V2, lambda: _backward_checks(STEP_V2)),
]


def _grid_bounds(path: str) -> tuple:
    """The forward grid's worst relative errors: KV-outer bf16 / fp16 / fp32, Q-outer bf16 / fp32."""
    rows = rows_of(path)
    if any(r["nan"] for r in rows):
        raise ValueError(f"{path}: a NaN")
    worst = lambda check, d: sci(max(r["out_rel_err"] for r in rows if r["check"] == check and r["dtype"] == d))  # noqa: E731
    shapes = {(r["N"], r["Hq"], r["Hkv"], r["D"], r["block"], r["top_k"], r["per"]) for r in rows}
    return (len(shapes),) + tuple(worst(c, d) for c, d in (
        ("triton vs reference", "bfloat16"), ("triton vs reference", "float16"), ("triton vs reference", "float32"),
        ("triton_q_outer vs reference", "bfloat16"), ("triton_q_outer vs reference", "float32")))


CLAIMS += [
    Claim(K, "ran {0} of its 9 shapes up to 64K tokens", CORRECTNESS_V2, lambda: _grid_bounds(CORRECTNESS_V2)),
    Claim(K, "KV-outer bf16 ≤ {1}, fp16 ≤ {2}, fp32 ≤ {3},\nQ-outer bf16 ≤ {4}, fp32 ≤ {5} against the reference, no NaN",
          CORRECTNESS_V2, lambda: _grid_bounds(CORRECTNESS_V2)),
    Claim(K, "every check of the {0} shapes but the last of the ninth", CORRECTNESS_V3, lambda: _grid_bounds(CORRECTNESS_V3)),
    Claim(K, "KV-outer bf16 ≤ {1}, fp16 ≤ {2}, fp32 ≤ {3}, Q-outer bf16 ≤ {4}, fp32 ≤ {5} over all, no NaN",
          CORRECTNESS_V3, lambda: _grid_bounds(CORRECTNESS_V3)),
]


# --- kernels.md: the index KL's correctness bounds -------------------------------------------------

def _kl_checks(path: str = KL_32K) -> tuple:
    rows = [r for r in rows_of(path) if r.get("what") == "check"]
    if any(r["nan"] for r in rows):
        raise ValueError(f"{path}: a NaN")
    pick = lambda qk, index: [r for r in rows if r["qk_dtype"] == qk and r["index_dtype"] == index]  # noqa: E731
    grads = lambda rs: sci(max(max(r["err_diq"], r["err_dik"]) for r in rs))  # noqa: E731
    fp32, bf16, mixed = pick("fp32", "fp32"), pick("bf16", "bf16"), pick("bf16", "fp32")
    run_to_run = f"{max(r['run_to_run'] for r in rows):.0e}".replace("e-05", "e-5")
    at_size = row(path, what="check at size")
    return (max(r["N"] for r in rows), ", ".join(str(g) for g in sorted({r["Hq"] // r["Hkv"] for r in rows})),
            sci(max(r["err_loss"] for r in fp32)), grads(fp32), sci(max(r["err_loss"] for r in bf16)), grads(bf16),
            grads(mixed), run_to_run, sci(at_size["err_loss"]), sci(at_size["err_diq"]), sci(at_size["err_dik"]))


CLAIMS += [
    Claim(K, "Correctness at N ≤ {0} (G = {1}) against the float64 reference on unrounded inputs: fp32 loss ≤ {2}, "
          "gradients ≤ {3}; bf16 loss ≤ {4}, gradients ≤ {5}; bf16 q/k with fp32 index inputs: gradients ≤ {6}; no NaN; "
          "run to run (atomics) ≤ {7}. At 32K, MSA's config, fp32 index inputs: loss {8}, `d index_q` {9}, `d index_k` "
          "{10} against the reference", KL_32K, _kl_checks),
    Claim(K, "At 64K the kernel's loss matches the reference to {0:g} and its gradients to {1} / {2} (fp32 index inputs)",
          KL_64K, lambda: (lambda r: (r["err_loss"], sci(r["err_diq"]), sci(r["err_dik"])))(
              row(KL_64K, what="check at size"))),
    Claim(K, "checks skipped but one: loss {0}, gradients ≤ {1} against the reference", KL_128K, lambda: (
        lambda r: (sci(r["err_loss"]), sci(max(r["err_diq"], r["err_dik"]))))(row(KL_128K, what="check at size"))),
]


def _kl_v2(stage_name: str, dtype: str, tokens: int, warps: int) -> float:
    return _tile(KL_TILES_V2, stage_name, dtype, tokens, warps)


CLAIMS += [
    Claim(K, "| bf16 | 1 (partial LSEs) | {0:.1f} | **{1:.1f}** | {2:.1f} | *{3:.1f}* | {4:.1f} | {5:.1f} |", KL_TILES,
          lambda: tuple(_tile(KL_TILES, "lse partials", "bf16", t, w) for t, w in TILE_ORDER)),
    Claim(K, "| fp32 | 1 | {0:.1f} | ***{1:.1f}*** | {2:.1f} | {3:.1f} | {4:.1f} | {5:.1f} |", KL_TILES,
          lambda: tuple(_tile(KL_TILES, "lse partials", "fp32", t, w) for t, w in TILE_ORDER)),
    Claim(K, "bf16 pass 2 {0:.1f} ms at 32 x 4 ({1:.1f} at 16 x 16), pass 1 {2:.1f} ms; fp32 {3:.1f} and {4:.1f} ms; loss + "
          "gradients with the LSE given {5:.1f} ms (bf16) and {6:.1f} ms (fp32)", KL_TILES_V2, lambda: (
              _kl_v2("kl and gradients", "bf16", 32, 4), _kl_v2("kl and gradients", "bf16", 16, 16),
              _kl_v2("lse partials", "bf16", 32, 4), _kl_v2("kl and gradients", "fp32", 32, 8),
              _kl_v2("lse partials", "fp32", 16, 8), _kl(KL_TILES_V2, "triton", "bf16", True, 32768),
              _kl(KL_TILES_V2, "triton", "fp32", True, 32768))),
    Claim(K, "its checks skipped but the one at 32K: loss {0:g}, gradients ≤ {1} against the reference with float32 index "
          "inputs", KL_TILED, lambda: (lambda r: (r["err_loss"], sci(max(r["err_diq"], r["err_dik"]))))(
              row(KL_TILED, what="check at size"))),
    Claim(K, "{0:.1f} ms at 128K with the LSE given and the tiles of its sweep ({1:.1f} ms at the first defaults), where "
          "the plain-PyTorch loss took {2:.1f} s", f"{KL_TILED}, {KL_128K}", lambda: (
              _kl(KL_TILED, "triton", "bf16", True, 131072), _kl(KL_128K, "triton", "bf16", True, 131072),
              _kl(KL_128K, "reference", "fp32", False, 131072) / 1000)),
]


def _reference_kl_vs_step() -> tuple:
    """The plain-PyTorch index KL against the attention's step (selection + forward + backward) of
    each backward's run: ratios of separate runs, as the doc says."""
    n = 131072
    ref = _kl(KL_128K, "reference", "fp32", False, n)
    step = lambda path: _step(path, SEL, n)["median_ms"] + _step(path, FWD_BWD, n)["median_ms"]  # noqa: E731
    return (_kl(KL_32K, "reference", "fp32", False, 32768) / 1000, ref / 1000, ref / step(STEP_V1), ref / step(STEP_V2))


CLAIMS += [
    Claim(K, "`checkpoint` in the backward pass: {0:.1f} s at 32K and {1:.1f} s at 128K on the H200, about {2:.0f}x the "
          "attention's own training step (selection, forward, backward) with the v1 backward and {3:.0f}x with v2 (at "
          "128K; ratios of separate runs", f"{KL_32K}, {KL_128K}, {STEP_V1}, {STEP_V2}", _reference_kl_vs_step),
    Claim(K, "was already {0:.0f} ms faster than the atomics at 32K", STEP_V1, lambda: (
        _step(STEP_V1, FWD_BWD, 32768)["median_ms"] - _step(STEP_V1, DET, 32768)["median_ms"],)),
]


def _operator_1m_repeats() -> tuple:
    """Repeats and spreads of the operator table's 1M rows (the v1 bench and the tuning run)."""
    rows = [r for r in rows_of(MSA_OPERATOR_V1) if r.get("N") == 1 << 20 and "median_ms" in r] + \
        [r for r in rows_of(TUNE_INDEX) if r.get("what") in ("whole MSA operator at 1M", "dense SDPA cuDNN at 1M")]
    dense = [r for r in rows if r["what"].startswith("dense")]
    msa = [r for r in rows if not r["what"].startswith("dense")]
    spread = {r["what"]: 100 * (r["max_ms"] - r["min_ms"]) / r["median_ms"] for r in rows}
    attention = spread.pop("stage: attention (lists + KV-outer + merge)")
    return (min(r["repeats"] for r in msa), max(r["repeats"] for r in msa), min(r["repeats"] for r in dense),
            max(r["repeats"] for r in dense), same_value(*(r["median_ms"] / 1000 for r in dense), places=0),
            up(max(spread.values())), up(attention))


CLAIMS += [
    Claim(K, "The 1M rows are medians of {0}–{1} event-timed runs after a warm-up (dense: {2}–{3} runs; each takes {4:.0f} "
          "s), spreads (max − min over the median) ≤ {5:.1f} % but the v1 attention stage's {6:.1f} %",
          f"{MSA_OPERATOR_V1}, {TUNE_INDEX}", _operator_1m_repeats),
]


def _backward_table_spread() -> tuple:
    """The timing protocol of the backward table's rows (both runs; the flash rows are not in it)."""
    rows = [r for p in (STEP_V1, STEP_V2) for r in rows_of(p)
            if r.get("what") in (SEL, FWD, FWD_BWD, DET, CUDNN, MSA_STEP, KL_STEP)]
    off = lambda r: max(r["max_ms"] - r["median_ms"], r["median_ms"] - r["min_ms"]) / r["median_ms"]  # noqa: E731
    worst = max(rows, key=off)
    return (min(r["repeats"] for r in rows), up(100 * max((r["p75_ms"] - r["p25_ms"]) / r["median_ms"] for r in rows)),
            100 * off(worst), f"{worst['N'] >> 10}K")


CLAIMS += [
    Claim(K, "medians of ≥ {0} repeats, CUDA events, interquartile spread (p75 − p25)/median ≤ {1:.1f} %, the extremes up "
          "to {2:.0f} % off the median at {3}", f"{STEP_V1}, {STEP_V2}", _backward_table_spread),
]


def _kl_protocol() -> tuple:
    """The first index-KL runs' timing: repeats and spreads of their loss + gradients rows."""
    rows = [r for p in (KL_32K, KL_64K) for r in rows_of(p) if r.get("what") == "loss+backward"]
    ref = [r for r in rows if r["backend"] == "reference"]
    triton = [r for r in rows if r["backend"] == "triton"]
    iqr = lambda rs: max(100 * (r["p75_ms"] - r["p25_ms"]) / r["median_ms"] for r in rs)  # noqa: E731
    return (min(r["repeats"] for r in ref), max(r["repeats"] for r in ref), min(r["repeats"] for r in triton),
            max(r["repeats"] for r in triton), up(iqr(triton)), up(iqr(ref)),
            up(max(100 * (r["max_ms"] - r["min_ms"]) / r["median_ms"] for r in rows)))


def _kl_tile_protocol() -> tuple:
    rows = [r for r in rows_of(KL_TILES) if r.get("what") == "tile"]
    if any(abs(r["spread_pct"] - 100 * (r["p75_ms"] - r["p25_ms"]) / r["median_ms"]) > 1e-6 for r in rows):
        raise ValueError(f"{KL_TILES}: spread_pct is not the interquartile spread")
    return (min(r["repeats"] for r in rows), up(max(r["spread_pct"] for r in rows)),
            up(max(100 * (r["max_ms"] - r["min_ms"]) / r["median_ms"] for r in rows)))


CLAIMS += [
    Claim(K, "medians of {0}–{1} (reference) or {2}–{3} repeats, CUDA events; interquartile spread ≤ {4:.1f} % for the "
          "Triton rows, ≤ {5:.1f} % for the reference's, max − min over the median up to {6:.1f} %",
          f"{KL_32K}, {KL_64K}", _kl_protocol),
    Claim(K, "medians of ≥ {0} repeats, interquartile spread ≤ {1:.1f} % (the bench's `spread_pct`; max − min over the "
          "median reaches {2:.1f} %)", KL_TILES, _kl_tile_protocol),
]


def _v4_protocol() -> tuple:
    """The v4 run's timing, and how far its rows other than the retuned index KL (and the step
    that holds it) are from v3's: the doc says within 3 %."""
    rows = [r for r in rows_of(STEP_V4) if "median_ms" in r]
    v3 = {(r["what"], r.get("N")): r["median_ms"] for r in rows_of(STEP_V2) if "median_ms" in r}
    apart = [abs(r["median_ms"] / v3[(r["what"], r["N"])] - 1) for r in rows
             if (r["what"], r.get("N")) in v3 and r["what"] not in (KL_STEP, MSA_STEP)]
    if not apart or max(apart) > 0.03:
        raise ValueError(f"{STEP_V4}: a row is more than 3 % from v3's")
    return (min(r["repeats"] for r in rows), up(max(100 * (r["p75_ms"] - r["p25_ms"]) / r["median_ms"] for r in rows)),
            _step(STEP_V4, MSA_STEP, 131072)["median_ms"])


CLAIMS += [
    Claim(K, "medians of ≥ {0} repeats, interquartile spread ≤ {1:.1f} %) ran after the index KL's tiles were set from its "
          "sweep (below); the other rows of that run agree with v3's within 3 %", f"{STEP_V4}, {STEP_V2}", _v4_protocol),
    Claim(K, "≈ 290 ms at 128K: measured {2:.0f}", STEP_V4, _v4_protocol),
]
