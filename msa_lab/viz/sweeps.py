"""Figures of sweep results (rows from ``msa_lab.bench.load_results``): latency, speedup
over dense, TFLOP/s, stage breakdown and roofline. Each is a function of the rows alone.

A series is one (method, backend) plus whatever other parameter varies in the rows
(block size, top_k, GQA ratio, ...), so a grid sweep draws one line per grid cell.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..bench.analysis import PUBLISHED, totals, with_speedups
from ..bench.store import load_results
from ..files import path_inside
from .coverage_sweeps import coverage_figures
from ..select.registry import SELECTORS
from .export import save_figure, static_export_session
from .theme import TEMPLATE, method_color, tokens_label

#: A timed selector by its label; a given selection (a control or a benchmark workload, not
#: timed) as "<label> selection (attention only)".
METHOD_NAMES = {"full": "full", **{s.name: s.label if s.timed else f"{s.label} selection (attention only)"
                                   for s in SELECTORS.values()}}
BACKEND_NAMES = {"sdpa_cudnn": "SDPA cuDNN", "sdpa_flash": "SDPA FlashAttention", "sdpa": "SDPA",
                 "triton_q_outer": "Triton Q-outer", "flex": "FlexAttention", "reference": "reference"}
#: Parameters that may vary between series (seq_len is the x axis).
SERIES_PARAMS = ("batch", "num_heads", "num_kv_heads", "head_dim", "index_dim", "block_size", "top_k",
                 "dtype", "per", "selection_backend", "options", "gpu")
SHORT = {"batch": "B", "num_heads": "Hq", "num_kv_heads": "Hkv", "head_dim": "D", "index_dim": "Di",
         "block_size": "bs", "top_k": "k", "selection_backend": "sel", "per": "per", "dtype": "", "options": "", "gpu": ""}
STAGE_COLORS = {"selection": "#0072B2", "metadata": "#E69F00", "attention": "#009E73", "merge": "#CC79A7"}
STAGE_SYMBOLS = {"total": "circle", "selection": "square", "metadata": "diamond", "attention": "triangle-up",
                 "merge": "x"}


def backend_name(method: str, backend: str) -> str:
    if backend == "triton":
        return "Triton flash" if method == "full" else "Triton KV-outer"
    return BACKEND_NAMES.get(backend, backend)


def _dash(method: str, backend: str) -> str:
    if method == "full":
        return {"sdpa_cudnn": "solid", "sdpa": "solid", "sdpa_flash": "dash", "triton": "dot"}.get(backend, "dashdot")
    return {"triton": "solid", "triton_q_outer": "dash", "flex": "dot"}.get(backend, "dashdot")


def _varying(rows) -> list[str]:
    """Parameters that take several values within one (method, backend)."""
    values: dict[tuple, set] = defaultdict(set)
    for r in rows:
        for c in SERIES_PARAMS:
            values[(r["method"], r["backend"], c)].add(r.get(c))
    return [c for c in SERIES_PARAMS if any(len(v) > 1 for (_, _, col), v in values.items() if col == c)]


def _series(rows, stage: str = "total", x: str = "seq_len") -> dict[tuple, list[dict]]:
    """Rows of one stage grouped by (method, backend, varying params other than ``x``),
    sorted by ``x``."""
    rows = [r for r in rows if r.get("stage") == stage and r.get("status") == "ok"]
    vary = [c for c in _varying(rows) if c != x]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["backend"], *(r.get(c) for c in vary))].append(r)
    for group in groups.values():
        group.sort(key=lambda r: r[x])
    return {key: groups[key] for key in sorted(groups, key=lambda k: (k[0] != "full", *map(str, k)))}


def _label(key: tuple, rows, x: str = "seq_len") -> str:
    method, backend, *rest = key
    vary = [c for c in _varying([r for r in rows if r.get("status") == "ok"]) if c != x]
    extra = " ".join(f"{SHORT[c]}={v}" if SHORT[c] else str(v) for c, v in zip(vary, rest))
    return f"{METHOD_NAMES.get(method, method)} · {backend_name(method, backend)}" + (f" · {extra}" if extra else "")


def _mode_rows(rows, mode: str):
    found = [r for r in rows if r.get("mode") == mode]
    if not found:
        raise ValueError(f"no rows of mode {mode!r} in these results")
    return found


def _length_axis(mode: str, rows) -> dict:
    title = "context length (tokens)" if mode == "decode" else "sequence length N (tokens)"
    lengths = sorted({r["seq_len"] for r in rows})
    return dict(type="log", title=title, tickvals=lengths, ticktext=[tokens_label(n) for n in lengths])


def _gpu(rows) -> str:
    gpus = sorted({r.get("gpu") for r in rows if r.get("gpu")})
    return ", ".join(g if g != "none" else "CPU" for g in gpus)


def _ceilings(rows) -> tuple[dict, float]:
    """Matmul peak per dtype and copy bandwidth: each run measures its own, and the best of
    them is the tightest limit shown."""
    peaks: dict[str, float] = defaultdict(float)
    for r in rows:
        for dtype, peak in (r.get("peak_tflops") or {}).items():
            peaks[dtype] = max(peaks[dtype], peak)
    return dict(peaks), max((r.get("copy_tb_per_s") or 0.0 for r in rows), default=0.0)


def latency_figure(rows, mode: str = "prefill", show_bound: bool = True) -> go.Figure:
    """Median time of the whole operator against length (log-log), one line per series;
    dotted: the roofline bound of the cost model (``show_bound``). Hover shows spread."""
    rows = _mode_rows(rows, mode)
    fig = go.Figure()
    for key, group in _series(rows).items():
        method, backend = key[:2]
        label = _label(key, rows)
        color = method_color(method)
        fig.add_scatter(
            x=[r["seq_len"] for r in group], y=[r["median_ms"] for r in group], name=label,
            legendgroup=label, mode="lines+markers", line=dict(color=color, dash=_dash(method, backend)),
            error_y=dict(type="data", symmetric=False, array=[r["p75_ms"] - r["median_ms"] for r in group],
                         arrayminus=[r["median_ms"] - r["p25_ms"] for r in group], thickness=1),
            customdata=[[r["repeats"], r["spread_pct"]] for r in group],
            hovertemplate="N=%{x:,}<br>%{y:.4g} ms (median of %{customdata[0]}, IQR %{customdata[1]:.1f} %)"
                          "<extra>" + label + "</extra>")
        if show_bound and all(r.get("bound_ms") for r in group):
            fig.add_scatter(x=[r["seq_len"] for r in group], y=[r["bound_ms"] for r in group],
                            name=f"bound: {label}", legendgroup=label, showlegend=False, mode="lines",
                            line=dict(color=color, dash="dot", width=1), opacity=0.6,
                            hovertemplate="roofline bound %{y:.4g} ms<extra>" + label + "</extra>")
    what = "Decode step latency" if mode == "decode" else "Prefill latency"
    fig.update_layout(template=TEMPLATE, title=f"{what} ({_gpu(rows)})", xaxis=_length_axis(mode, rows),
                      yaxis=dict(type="log", title="median time (ms)"),
                      legend=dict(title="solid/dashed: measured · dotted: roofline bound" if show_bound else None))
    return fig


def speedup_figure(rows, mode: str = "prefill", published: bool = True) -> go.Figure:
    """Speedup of every operator over the fastest dense SDPA backend at the same length,
    with the published numbers (SPEC) as reference marks: stars for wall-clock speedups, an
    open diamond for a compute (FLOP) ratio."""
    rows = _mode_rows(rows, mode)
    sped = [r for r in with_speedups(rows) if "speedup" in r]
    if not sped:
        raise ValueError("no dense SDPA baseline in these results: add method full with an sdpa backend")
    fig = go.Figure()
    for key, group in _series(sped).items():
        method, backend = key[:2]
        if method == "full" and backend != "triton":
            continue
        label = _label(key, sped)
        fig.add_scatter(x=[r["seq_len"] for r in group], y=[r["speedup"] for r in group], name=label,
                        mode="lines+markers", line=dict(color=method_color(method), dash=_dash(method, backend)),
                        customdata=[[r["median_ms"], r["dense_ms"], r["dense_backend"]] for r in group],
                        hovertemplate="N=%{x:,}<br>%{y:.2f}x: %{customdata[0]:.4g} ms vs dense "
                                      "%{customdata[1]:.4g} ms (%{customdata[2]})<extra>" + label + "</extra>")
    fig.add_hline(y=1, line=dict(color="#888", width=1, dash="dash"))
    if published:
        lengths = [r["seq_len"] for r in sped]
        for mark in (m for m in PUBLISHED if m["mode"] == mode and min(lengths) <= m["seq_len"] <= max(lengths)):
            # A FLOP ratio is no timing: an open diamond, apart from the wall-clock stars.
            flop = mark["measure"] == "flop"
            fig.add_scatter(x=[mark["seq_len"]], y=[mark["speedup"]], mode="markers", name=mark["label"],
                            marker=dict(symbol="diamond-open" if flop else "star", size=11 if flop else 13,
                                        color=method_color(mark["method"]),
                                        line=dict(color=method_color(mark["method"]) if flop else "white",
                                                  width=2 if flop else 1)),
                            hovertemplate=mark["label"] + "<extra>published</extra>")
    fig.update_layout(template=TEMPLATE, title=f"Speedup over dense attention (fastest SDPA backend, {_gpu(rows)})",
                      xaxis=_length_axis(mode, rows), yaxis=dict(type="log", title="speedup (dense time / time)"))
    return fig


def throughput_figure(rows, mode: str = "prefill") -> go.Figure:
    """Useful TFLOP/s (the FLOPs on the selected tokens plus the selection's own) and
    dense-equivalent TFLOP/s (the FLOPs dense causal attention would spend), side by side;
    dashed: the matmul peak measured in the run."""
    rows = _mode_rows(rows, mode)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("useful TFLOP/s", "dense-equivalent TFLOP/s"),
                        horizontal_spacing=0.1)
    for key, group in _series(rows).items():
        method, backend = key[:2]
        label = _label(key, rows)
        style = dict(color=method_color(method), dash=_dash(method, backend))
        for col, field in ((1, "tflops_useful"), (2, "tflops_dense_equiv")):
            fig.add_scatter(x=[r["seq_len"] for r in group], y=[r[field] for r in group], name=label,
                            legendgroup=label, showlegend=col == 1, mode="lines+markers", line=style,
                            hovertemplate="N=%{x:,}<br>%{y:.1f} TFLOP/s<extra>" + label + "</extra>", row=1, col=col)
    for dtype, peak in _ceilings(rows)[0].items():
        if peak:
            fig.add_hline(y=peak, line=dict(color="#888", dash="dash", width=1), row=1, col=1,
                          annotation_text=f"{dtype} matmul peak {peak:.0f}", annotation_position="bottom right")
    fig.update_xaxes(**_length_axis(mode, rows))
    fig.update_yaxes(type="log", title_text="TFLOP/s", col=1)
    fig.update_yaxes(type="log", col=2)
    fig.update_layout(template=TEMPLATE, title=f"Throughput ({_gpu(rows)})")
    return fig


def stage_figure(rows, method: str = "msa", backend: str = "triton", mode: str = "prefill",
                 x: str = "seq_len") -> go.Figure:
    """Where the time goes: each stage's share of the summed stage times, stacked, per
    length (or per value of another grid parameter ``x``; hover: milliseconds)."""
    rows = [r for r in _mode_rows(rows, mode) if r["method"] == method and r["backend"] == backend
            and r.get("status") == "ok"]
    stages = [s for s in ("selection", "metadata", "attention", "merge") if any(r.get("stage") == s for r in rows)]
    if not stages:
        raise ValueError(f"no stage timings for {method}/{backend} ({mode}); set stages: true in the config")
    values = sorted({r[x] for r in rows if r.get("stage") in stages})
    text = tokens_label if x == "seq_len" else str
    fig = go.Figure()
    for stage in stages:
        at = {r[x]: r["median_ms"] for r in rows if r.get("stage") == stage}
        fig.add_bar(x=[text(v) for v in values], y=[at.get(v, 0.0) for v in values], name=stage,
                    marker_color=STAGE_COLORS[stage], customdata=[at.get(v, 0.0) for v in values],
                    hovertemplate="%{customdata:.4g} ms (%{y:.1f} %)<extra>" + stage + "</extra>")
    axis_title = _length_axis(mode, rows)["title"] if x == "seq_len" else GRID_AXES[x]
    fig.update_layout(template=TEMPLATE, barmode="stack", barnorm="percent", legend_traceorder="reversed",
                      title=f"Stage breakdown: {METHOD_NAMES.get(method, method)} · {backend_name(method, backend)} "
                            f"({_gpu(rows)})",
                      xaxis=dict(title=axis_title, type="category"),
                      yaxis=dict(title="share of the stage times (%)", range=[0, 100]))
    return fig


def roofline_figure(rows, mode: str = "prefill") -> go.Figure:
    """Roofline: achieved TFLOP/s against arithmetic intensity (useful FLOPs per minimal
    byte of the cost model), one marker per (series, stage, length); the lines are the
    matmul peak and the copy bandwidth measured in the run. A point on the line runs at
    the bound of its design; the gap below it is what a better kernel could win."""
    rows = [r for r in _mode_rows(rows, mode) if r.get("status") == "ok" and r.get("min_bytes") and r.get("useful_flop")]
    if not rows:
        raise ValueError("no rows with a cost model in these results")
    fig = go.Figure()
    for stage in STAGE_SYMBOLS:
        for key, group in _series(rows, stage).items():
            method, backend = key[:2]
            label = _label(key, rows)
            fig.add_scatter(
                x=[r["useful_flop"] / r["min_bytes"] for r in group], y=[r["tflops_useful"] for r in group],
                mode="markers", name=f"{label} · {stage}", legendgroup=label,
                marker=dict(symbol=STAGE_SYMBOLS[stage], color=method_color(method), size=8,
                            line=dict(width=1, color="white")),
                customdata=[[r["seq_len"], r["pct_of_bound"]] for r in group],
                hovertemplate="N=%{customdata[0]:,}<br>%{y:.1f} TFLOP/s at %{x:.1f} FLOP/B<br>"
                              "%{customdata[1]:.0f} % of its bound<extra>" + f"{label} · {stage}</extra>")
    intensities = [r["useful_flop"] / r["min_bytes"] for r in rows]
    lo, hi = min(intensities) / 2, max(intensities) * 2
    peaks, bandwidth = _ceilings(rows)
    for dtype, peak in sorted(peaks.items()):
        ridge = peak / bandwidth
        xs = [lo, ridge, hi] if lo < ridge < hi else [lo, hi]
        fig.add_scatter(x=xs, y=[min(peak, x * bandwidth) for x in xs], mode="lines",
                        name=f"roof: {dtype} matmul {peak:.0f} TFLOP/s, copy {bandwidth:.2f} TB/s",
                        line=dict(color="#444", width=1.5), hoverinfo="skip")
    fig.update_layout(template=TEMPLATE, title=f"Roofline ({_gpu(rows)}; stages with FLOPs)",
                      xaxis=dict(type="log", title="arithmetic intensity (useful FLOP per minimal byte)"),
                      yaxis=dict(type="log", title="achieved useful TFLOP/s"))
    return fig


GRID_AXES = {"block_size": "block size (tokens)", "top_k": "top_k (blocks per query)",
             "num_kv_heads": "KV heads Hkv (GQA group size = Hq / Hkv)", "head_dim": "head dim",
             "batch": "batch", "num_heads": "query heads", "index_dim": "index dim"}


def grid_figure(rows, x: str, mode: str = "prefill") -> go.Figure:
    """Median time of the whole operator against one grid parameter (block size, top_k,
    KV heads, ...), one line per (method, backend, other varying parameters)."""
    if x not in GRID_AXES:
        raise ValueError(f"x must be one of {', '.join(GRID_AXES)}; got {x!r}")
    rows = [r for r in _mode_rows(rows, mode) if r.get(x) is not None]
    fig = go.Figure()
    for key, group in _series(rows, x=x).items():
        method, backend = key[:2]
        label = _label(key, rows, x)
        fig.add_scatter(x=[r[x] for r in group], y=[r["median_ms"] for r in group], name=label,
                        mode="lines+markers", line=dict(color=method_color(method), dash=_dash(method, backend)),
                        customdata=[[r["seq_len"], r["num_heads"] // r["num_kv_heads"]] for r in group],
                        hovertemplate=x + "=%{x}<br>%{y:.4g} ms (N=%{customdata[0]:,}, G=%{customdata[1]})"
                                      "<extra>" + label + "</extra>")
    values = sorted({r[x] for r in rows})
    lengths = ", ".join(tokens_label(n) for n in sorted({r["seq_len"] for r in rows}))
    fig.update_layout(template=TEMPLATE, title=f"Time against {x} (N = {lengths}, {_gpu(rows)})",
                      xaxis=dict(type="log", title=GRID_AXES[x], tickvals=values, ticktext=[str(v) for v in values]),
                      yaxis=dict(type="log", title="median time (ms)"))
    return fig


def write_sweep_figures(results, out_dir, formats=("html",), prefix: str = "") -> list[Path]:
    """Every figure that the results support, written to ``out_dir`` in each format
    (html opens offline; png/svg/pdf for papers), file names starting with ``prefix``.
    Returns the files written."""
    paths = list(results) if isinstance(results, (list, tuple)) else [results]
    rows = load_results(*paths)
    if not totals(rows):
        raise ValueError("no finished points in these results")
    out = Path(out_dir)
    figures = {}
    for mode in sorted({r["mode"] for r in rows}):
        if mode == "coverage":  # nothing timed: the coverage figures instead
            figures.update(coverage_figures(rows))
            continue
        tag = f"{mode}_"
        mode_rows = [r for r in rows if r["mode"] == mode]
        if len({r["seq_len"] for r in mode_rows}) > 1:  # a length sweep
            figures[tag + "latency"] = latency_figure(rows, mode)
            if any("speedup" in r for r in with_speedups(mode_rows)):
                figures[tag + "speedup"] = speedup_figure(rows, mode)
            figures[tag + "throughput"] = throughput_figure(rows, mode)
        for x in (c for c in _varying([r for r in mode_rows if r.get("status") == "ok"]) if c in GRID_AXES):
            figures[f"{tag}grid_{x}"] = grid_figure(rows, x, mode)
        figures[tag + "roofline"] = roofline_figure(rows, mode)
        staged = defaultdict(set)  # a breakdown needs two stages or more
        for r in rows:
            if r["mode"] == mode and r.get("stage") not in ("total", "stages") and r.get("status") == "ok":
                staged[(r["method"], r["backend"])].add(r["stage"])
        grid_x = [c for c in _varying(mode_rows) if c in GRID_AXES]
        x = "seq_len" if len({r["seq_len"] for r in mode_rows}) > 1 or not grid_x else grid_x[0]
        for method, backend in sorted(k for k, v in staged.items() if len(v) > 1):
            figures[f"{tag}stages_{method}_{backend}"] = stage_figure(rows, method, backend, mode, x)
    written = []
    with static_export_session(formats):
        for name, fig in figures.items():  # names hold values read from the rows: made safe
            written += save_figure(fig, path_inside(out, f"{prefix}{name}"), formats)
    return written
