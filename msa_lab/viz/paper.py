"""The paper figures: each drawn from committed results (sweeps under
``experiments/results/sweeps``, training ablations under ``experiments/results/train``) in
the paper theme at a column width, so ``msa-lab figures`` rebuilds all of them into one
folder, with a ``figures.md`` that lists each figure's caption and source.

The selection map is the one figure not read from a results file: it is recomputed from
the seeded generator of ``msa_lab.data`` (a few seconds on a CPU), which makes it just as
reproducible.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import plotly.graph_objects as go
from tqdm.auto import tqdm

from ..bench.store import checkout_path, load_results
from ..runs import sparse_from_step_0
from .coverage_sweeps import budget_figure, coverage_distance_figure, head_figure, position_figure, recall_figure
from .export import STATIC_FORMATS, check_formats, export_figure, save_figure, static_export_session, write_if_changed
from .figures import selection_map_figure
from .sweeps import grid_figure, latency_figure, speedup_figure, stage_figure
from .training import accuracy_figure, loss_by_position_figure, needle_grid_figure


#: Shape fields a caption may name as ``{field}``: filled from the figure's rows, so a caption
#: never states a head count or block size that the data do not have.
CAPTION_FIELDS = ("batch", "num_heads", "num_kv_heads", "head_dim", "block_size", "top_k", "dtype")


def caption_fields(rows) -> dict[str, str]:
    """``{field: value}`` of the finished rows for each of ``CAPTION_FIELDS`` (several values
    joined with "/"; a field no row has is left out)."""
    fields = {}
    for field in CAPTION_FIELDS:
        values = sorted({r[field] for r in rows if r.get("status") == "ok" and r.get(field) is not None}, key=str)
        if values:
            fields[field] = "/".join(map(str, values))
    return fields


@dataclass(frozen=True)
class PaperFigure:
    name: str
    # a sweep folder under the results directory, or several drawn together; None: runs, or
    # generated data
    results: str | tuple[str, ...] | None
    draw: Callable  # the sweep's rows (or, with runs, the training folders) -> the figure
    caption: str  # may name CAPTION_FIELDS as {field}: filled from the rows
    width: str = "single"
    height: float | None = None  # inches; None: the paper theme's default for the width
    runs: tuple[str, ...] = ()  # training ablation folders under experiments/results/train


def selection_map_example(rows=None, *, seq_len: int = 8192, block_size: int = 128, top_k: int = 8,
                          group: int = 2) -> go.Figure:
    """MSA's selection (index = main Q/K) for one KV group of generated mixed data, with the
    oracle's blocks that it missed marked."""
    from ..data import structured_qkv
    from ..select import index_from_qk, select_msa, select_oracle

    data = structured_qkv(seq_len=seq_len, num_heads=8, num_kv_heads=4, head_dim=64, patterns="mixed", seed=0)
    msa = select_msa(*index_from_qk(data.q, data.k), block_size=block_size, top_k=top_k)
    oracle = select_oracle(data.q, data.k, block_size=block_size, top_k=top_k, force_local=True)
    return selection_map_figure(msa, head=group, oracle=oracle,
                                title=f"MSA selection, group {group} ({data.patterns[group]}), x = oracle miss")


PAPER_FIGURES = (
    PaperFigure("prefill_speedup_headline", ("headline_prefill_128k_h200", "headline_prefill_1m_h200"),
                lambda rows: speedup_figure(rows, "prefill"),
                "Prefill speedup over dense SDPA cuDNN at 128K and 1M tokens, each ratio of two timings of one "
                "process (H200, {dtype}, {num_heads} query / {num_kv_heads} KV heads, D = {head_dim}, block "
                "{block_size}, top-k {top_k}; 3 warm-up calls); stars: published wall-clock speedups at 1M (MSA "
                "paper, on an H800; MoBA report), not re-measured; open diamond: the MSA paper's compute (FLOP) "
                "ratio at 1M, not a timing.", "double", 3.6),
    PaperFigure("prefill_speedup", "prefill_1m_h200", lambda rows: speedup_figure(rows, "prefill"),
                "Prefill speedup over the fastest dense SDPA backend against sequence length, the earlier 4K-1M "
                "sweep (H200, {dtype}, {num_heads} query / {num_kv_heads} KV heads, D = {head_dim}, block "
                "{block_size}, top-k {top_k}); the sparse rows at 256K-1M were re-measured by a later process, so "
                "they form no ratio with this sweep's dense rows and are not drawn; stars: published wall-clock "
                "speedups at 1M (MSA paper, on an H800; MoBA report), not re-measured; open diamond: the MSA "
                "paper's compute (FLOP) ratio at 1M, not a timing.", "double", 3.6),
    PaperFigure("prefill_latency", "prefill_1m_h200", lambda rows: latency_figure(rows, "prefill"),
                "Prefill latency (median, IQR bars) with the roofline bound of the cost model dotted.", "double", 3.6),
    PaperFigure("prefill_stages_msa", "prefill_1m_h200", lambda rows: stage_figure(rows, "msa", "triton", "prefill"),
                "Where MSA's prefill time goes: index selection, query lists, KV-outer attention, LSE merge."),
    PaperFigure("decode_speedup", "decode_1m_h200", lambda rows: speedup_figure(rows, "decode"),
                "Decode step speedup over dense attention against context length (H200, batch {batch}, "
                "{num_heads} query / {num_kv_heads} KV heads, CUDA graphs; the earlier sweep, whose Triton "
                "flash-decoding rows were re-measured by a later process and so form no ratio with its cuDNN "
                "rows); star: the MSA paper's published wall-clock decode speedup at 1M (H800), not re-measured."),
    PaperFigure("gqa_kv_outer_vs_q_outer", "gqa_grid_h200", lambda rows: grid_figure(rows, "num_kv_heads", "prefill"),
                "KV-outer against Q-outer block-sparse attention as the GQA ratio changes (128K tokens, H200)."),
    PaperFigure("coverage_recall_vs_top_k", "coverage_cpu", lambda rows: recall_figure(rows, "top_k"),
                "Mean attention recall of each selector against top-k, one panel per data pattern "
                "(16K tokens, block 128); MSA's index is the main Q/K.", "double"),
    PaperFigure("coverage_p5_vs_top_k", "coverage_cpu", lambda rows: recall_figure(rows, "top_k", "recall_p5"),
                "Worst-case rows: 5th-percentile recall against top-k.", "double"),
    PaperFigure("coverage_error_vs_top_k", "coverage_cpu", lambda rows: recall_figure(rows, "top_k", "output_error"),
                "Relative output error of sparse against full attention, against top-k.", "double"),
    PaperFigure("coverage_recall_vs_length", "coverage_cpu", lambda rows: recall_figure(rows, "seq_len"),
                "Mean recall against context length at top-k 8 (mixed patterns)."),
    PaperFigure("coverage_equal_budget", "coverage_cpu", lambda rows: budget_figure(rows),
                "Granularity at an equal budget of 512 tokens per query: finer blocks, more of them."),
    PaperFigure("coverage_by_distance", "coverage_cpu", lambda rows: coverage_distance_figure(rows),
                "Recall of the true mass at each distance (in blocks) behind the query's block; "
                "dotted: how the true mass is spread over distance.", "double", 2.4),
    PaperFigure("coverage_by_head", "coverage_cpu", lambda rows: head_figure(rows), "Mean recall per query head; "
                "each KV group carries one planted pattern.", "double"),
    PaperFigure("coverage_by_position", "coverage_cpu", lambda rows: position_figure(rows),
                "Mean recall against query position."),
    PaperFigure("training_needle_grid", None, needle_grid_figure,
                "Passkey token accuracy by context length and needle depth after training at 512 tokens "
                "(2-layer model, first layer full; block 16 x top-4 = 1/8 of the context; mean of 3 seeds; H200).",
                "double", 2.0, runs=("ablation_gpu_h200",)),
    PaperFigure("training_accuracy_by_length", None, lambda paths: accuracy_figure(sparse_from_step_0(paths)),
                "Passkey token accuracy (mean over depths and 3 seeds; bars from the lowest to the highest seed) against context length; "
                "64 tokens per query in blocks of 8 x 8, 16 x 4 and 32 x 2, MoBA and MSA sparse from step 0.",
                "double", runs=("ablation_gpu_h200", "block_topk_gpu_h200")),
    PaperFigure("training_text_loss_by_position", None, loss_by_position_figure,
                "Held-out next-byte loss against position after training at 512 bytes of Python source "
                "(2-layer model, first layer full or both sparse; MoBA and MSA at block 32 x top-4 = 1/4 of "
                "the context; mean ± s.d. of 3 seeds; H200); right: evaluated at twice the training length.",
                "double", 2.2, runs=("text_gpu_h200",)),
    PaperFigure("selection_map", None, selection_map_example,
                "Query block x key block map of MSA's selection for one group (8K tokens, block 128, top-k 8); "
                "x: blocks the oracle picked that MSA never did."),
)


def _chosen(only) -> tuple[PaperFigure, ...]:
    if not only:
        return PAPER_FIGURES
    names = {f.name for f in PAPER_FIGURES}
    unknown = sorted(set(only) - names)
    if unknown:
        raise ValueError(f"only: unknown figure(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return tuple(f for f in PAPER_FIGURES if f.name in set(only))


def draw_paper_figures(results_dir=None, only=None, progress: bool = True) -> Iterator[tuple[PaperFigure, go.Figure, str]]:
    """``(spec, figure in the house style, source)`` for every paper figure (or those named
    in ``only``), drawn from the results under ``results_dir`` (default: the checkout's
    ``experiments/results/sweeps``); ``source`` names the results and their GPU, and the
    spec's caption has its ``{field}``s filled from the rows."""
    chosen = _chosen(only)
    root = Path(results_dir) if results_dir is not None else checkout_path("experiments", "results", "sweeps")
    cache: dict[str, list[dict]] = {}
    for spec in tqdm(chosen, desc="paper figures", unit="figure", disable=not progress):
        if spec.runs:
            # training results are always the checkout's: results_dir holds sweeps only
            paths = [checkout_path("experiments", "results", "train", name) for name in spec.runs]
            gpus = {json.loads(f.read_text()).get("gpu", "?") for p in paths for f in p.glob("*/summary.json")}
            yield spec, spec.draw(paths), _source(", ".join(f"`train/{name}`" for name in spec.runs), gpus)
            continue
        rows = None
        folders = (spec.results,) if isinstance(spec.results, str) else spec.results or ()
        if folders:
            if folders not in cache:
                cache[folders] = load_results(*(root / name for name in folders))
            rows = cache[folders]
        source = (_source(", ".join(f"`{name}`" for name in folders), {r.get("gpu") for r in rows if r.get("gpu")})
                  if folders else "generated data (`msa_lab.data`, seed 0)")
        if rows is not None:
            spec = replace(spec, caption=spec.caption.format(**caption_fields(rows)))
        yield spec, spec.draw(rows), source


def _source(results: str, gpus) -> str:
    """``results (GPU, ...)``; results measured on a CPU record their GPU as ``none``."""
    return f"{results} ({', '.join(sorted(g if g != 'none' else 'CPU' for g in gpus))})"


def write_paper_figures(out_dir, formats=STATIC_FORMATS, *, results_dir=None, only=None,
                        progress: bool = True) -> list[Path]:
    """Draw every paper figure (or those named in ``only``) into ``out_dir``: PNG/SVG/PDF in
    the paper theme at the figure's column width (``html``: the interactive figure), and
    ``figures.md`` with captions and sources. Returns the files written."""
    formats = check_formats(formats)
    _chosen(only)  # a typo fails before any browser starts
    out = Path(out_dir)
    index = out / "figures.md"
    # With ``only``, the rows of the figures not redrawn stay as they were.
    rows = {m.group(1): line for line in (index.read_text(encoding="utf-8").splitlines() if index.is_file() else [])
            if (m := re.match(r"\| `([^`]+)` \|", line))}
    written = []
    static = tuple(f for f in formats if f != "html")
    with static_export_session(formats):
        for spec, fig, source in draw_paper_figures(results_dir, only, progress):
            if static:
                written += export_figure(fig, out / spec.name, static, width=spec.width, height=spec.height)
            if "html" in formats:
                written += save_figure(fig, out / spec.name, ("html",))
            rows[spec.name] = f"| `{spec.name}` | {spec.width} | {source} | {spec.caption} |"
    lines = ["# Paper figures", "", "Rebuilt by `msa-lab figures` from committed results.", "",
             "| figure | width | source | caption |", "| --- | --- | --- | --- |",
             *(rows[f.name] for f in PAPER_FIGURES if f.name in rows)]
    write_if_changed(index, ("\n".join(lines) + "\n").encode("utf-8"), "md")
    return [*written, index]
