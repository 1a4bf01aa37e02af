"""The numbers of the kernel docs (kernels.md, benchmarks.md, reference_check.md, cost_model.md
and results.md's GQA table), each computed from the committed bench file it comes from.

Most kernel benches write one JSON file per run (``{"environment", "rows"}``): every row of one
file is one process, so a ratio of two rows of one file is a same-process ratio (SPEC). A few
older runs wrote a list, or only a log of one ``repr``-ed dict a line.
"""

from __future__ import annotations

import ast
import json
import sys

# claims.py imports this module at its end, as ``claims`` (the tests) or as the script
# ``__main__`` (``python claims.py``, where ``from claims import`` would run it a second time).
_claims = sys.modules["claims"] if "claims" in sys.modules else sys.modules["__main__"]
ROOT, Claim, Table, json_rows, sweep_rows = (getattr(_claims, name) for name in
                                             ("ROOT", "Claim", "Table", "json_rows", "sweep_rows"))

RESULTS = "experiments/results"
KV_OUTER_V1 = f"{RESULTS}/bench_kv_outer_v1_h200.json"
BLOCK_SPARSE_V2 = f"{RESULTS}/bench_block_sparse_v2_h200.json"
BLOCK_SPARSE_V3 = f"{RESULTS}/bench_block_sparse_v3_h200.json"
TUNE_ATTEND = f"{RESULTS}/tune_kv_outer_attend_h200.json"
TUNE_INDEX = f"{RESULTS}/tune_index_topk_h200.json"
MSA_OPERATOR_V1 = f"{RESULTS}/bench_msa_operator_v1_h200.json"
MOBA_SELECTION = f"{RESULTS}/bench_moba_selection_h200.json"
DENSE = f"{RESULTS}/bench_dense_h200.json"
DENSE_64K = f"{RESULTS}/bench_dense_64k_check_h200.json"
DECODE_BENCH = f"{RESULTS}/bench_decode_h200.json"
DECODE_BEFORE_SYNC_FIX = f"{RESULTS}/bench_decode_h200_before_sync_fix.log"
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
CORRECTNESS_V2 = f"{RESULTS}/kernel_correctness_64k_v2_h200.json"
CORRECTNESS_FINAL = f"{RESULTS}/kernel_correctness_64k_h200.json"
LOGS = f"{RESULTS}/logs"


# --- reading ------------------------------------------------------------------------------------

def rows_of(path: str) -> list[dict]:
    """The rows of a bench file: ``{"rows": [...]}``, a bare list, or a log of one dict a line."""
    if path.endswith(".log"):
        return [ast.literal_eval(line) for line in (ROOT / path).read_text().splitlines()
                if line.startswith("{")]
    data = json.loads((ROOT / path).read_text())
    return data["rows"] if isinstance(data, dict) else data


def row(path: str, **match) -> dict:
    """The one row of ``path`` whose fields equal ``match`` (a ``method`` or ``what`` given
    as ``startswith=`` matches the start of either)."""
    prefix = match.pop("startswith", None)
    found = [r for r in rows_of(path) if all(r.get(k) == v for k, v in match.items())
             and (prefix is None or str(r.get("method", r.get("what", ""))).startswith(prefix))]
    if len(found) != 1:
        raise ValueError(f"{path}: {len(found)} rows match {match} {prefix or ''}")
    return found[0]


def med(path: str, **match) -> float:
    return float(row(path, **match)["median_ms"])


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


TABLES: list[Table] = [
    Table("docs/results.md", "gqa_128k", GQA_GRID, _gqa_sweep_table),
    Table("docs/kernels.md", "kv_outer_v1", KV_OUTER_V1, _kv_outer_v1_table),
    Table("docs/kernels.md", "gqa_32k_v2", BLOCK_SPARSE_V2, lambda: _gqa_bench_table(BLOCK_SPARSE_V2, 32768, "")),
    Table("docs/kernels.md", "gqa_128k_v3", BLOCK_SPARSE_V3, lambda: _gqa_bench_table(BLOCK_SPARSE_V3, 131072, "ms")),
]

CLAIMS: list[Claim] = []
