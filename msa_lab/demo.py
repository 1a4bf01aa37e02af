"""The main demo: full attention vs MoBA vs MSA (and the oracle, a sliding window and
random blocks as bounds) on generated long-context data with planted structure.

It prints a table of output error and coverage, and writes ``coverage.csv``,
``summary.json`` and an interactive ``demo.html`` into ``out_dir``.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attention import block_sparse_attention, full_attention
from .coverage import coverage, output_error
from .data import structured_qkv
from .environment import gpu_environment
from .select.registry import SELECTORS
from .select.registry import selectors as registered
from .viz import (
    recall_by_distance_figure,
    recall_by_position_figure,
    recall_distribution_figure,
    selection_map_figure,
    write_html,
)

COLUMNS = ("method", "per", "tokens_per_query", "density", "output_error", "recall_mean",
           "recall_p5", "rows_below_0.9", "recall_vs_oracle", "overlap_with_oracle")


def run_demo(*, out_dir="results/demo", seq_len: int = 8192, num_heads: int = 8,
             num_kv_heads: int = 4, head_dim: int = 64, block_size: int = 128, top_k: int = 8,
             seed: int = 0, device: str = "cpu", progress: bool = True) -> list[dict]:
    """Run the demo and return one result row per method (also written to ``out_dir``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = structured_qkv(seq_len=seq_len, num_heads=num_heads, num_kv_heads=num_kv_heads,
                          head_dim=head_dim, seed=seed, device=device)
    q, k, v = data.q, data.k, data.v
    # Every registered selector of real inputs (MSA's index branch: the main Q/K, untrained); the
    # oracle without the local-block rule, the most mass any selection of this size keeps; and the
    # sliding window once more with StreamingLLM's sink (the first block).
    runs = [(s.name, s, dict(force_local=False) if s.name == "oracle" else {}) for s in registered()]
    runs.append(("window+sinks", SELECTORS["window"], dict(sink_blocks=1)))
    selectors = {name: lambda s=s, options=options: s.select(q, k, block_size=block_size, top_k=top_k, seed=seed,
                                                             **options)
                 for name, s, options in runs}
    steps = tqdm(total=2 + 2 * len(selectors), desc="demo", disable=not progress)

    def step(label, work):
        steps.set_postfix_str(label)
        result = work()
        steps.update()
        return result

    o_full = step("full attention", lambda: full_attention(q, k, v))
    selections, errors = {}, {}
    for name, make in selectors.items():
        selections[name] = step(f"select {name}", make)
        errors[name] = step(f"attend {name}", lambda: output_error(
            block_sparse_attention(q, k, v, selections[name]), o_full))
    reports = step("coverage", lambda: coverage(q, k, selections))
    steps.close()

    rows = [{"method": "full", "per": "-", "tokens_per_query": (seq_len + 1) / 2, "density": 1.0,
             "output_error": 0.0, "recall_mean": 1.0, "recall_p5": 1.0, "rows_below_0.9": 0.0,
             "recall_vs_oracle": None, "overlap_with_oracle": None}]  # no selection to compare
    for name, sel in selections.items():
        s, rep = sel.summary(), reports[name].summary()
        row = {"method": name, "per": sel.per, "tokens_per_query": s["mean_tokens_per_query"],
               "density": s["density"], "output_error": errors[name],
               "recall_mean": rep["recall"]["mean"], "recall_p5": rep["recall"]["p5"],
               "rows_below_0.9": rep["recall"]["share_below_0.9"],
               "recall_vs_oracle": rep["relative_recall"]["mean"],
               "overlap_with_oracle": rep["overlap"]["mean"]}
        for pattern, r in zip(data.patterns, reports[name].by_group().tolist()):
            row[f"recall[{pattern}]"] = r
        rows.append(row)

    _write_csv(rows, out_dir / "coverage.csv")
    config = dict(seq_len=seq_len, num_heads=num_heads, num_kv_heads=num_kv_heads,
                  head_dim=head_dim, block_size=block_size, top_k=top_k, seed=seed,
                  device=str(device), patterns=list(data.patterns))
    env = gpu_environment(device_name=torch.cuda.get_device_name(q.device) if q.is_cuda
                          else platform.processor() or "cpu")
    (out_dir / "summary.json").write_text(json.dumps(
        dict(config=config, environment=env, seconds=round(time.perf_counter() - started, 1),
             rows=rows), indent=2, default=float) + "\n")
    group_of_needle = data.patterns.index("needle") if "needle" in data.patterns else 0
    figs = [
        recall_by_position_figure(reports),
        recall_distribution_figure(reports),
        recall_by_distance_figure(reports),
        selection_map_figure(selections["msa"], head=group_of_needle, oracle=selections["oracle"],
                             title=f"MSA selection, group {group_of_needle} "
                                   f"({data.patterns[group_of_needle]}); x = oracle block never chosen"),
        selection_map_figure(selections["oracle"], head=group_of_needle,
                             title=f"Oracle selection, group {group_of_needle}"),
    ]
    write_html(figs, out_dir / "demo.html",
               title=f"msa_lab demo: N={seq_len:,}, block {block_size}, top-{top_k}")
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict], fields=None) -> str:
    """Fixed-width text table of ``rows`` (numbers to three places)."""
    fields = fields or list(dict.fromkeys(key for row in rows for key in row))

    def cell(x):
        if x is None:  # not applicable (full attention has no selection to compare)
            return "-"
        if isinstance(x, float):
            return "-" if x != x else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3f}")
        return str(x)

    cells = [[cell(row.get(f, "")) for f in fields] for row in rows]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    lines = ["  ".join(f.rjust(w) for f, w in zip(fields, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
