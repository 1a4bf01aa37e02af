"""Figures of coverage sweep results (``mode: coverage`` rows from ``load_results``):
recall against top_k, context length or block size, the equal-budget block-size ablation,
recall per head, per query position and per distance. Each is a function of the rows alone.

A figure fixes the parameters it does not plot at their most common value in the rows
(e.g. recall against top_k at the sweep's usual block size and length), and says which.
"""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import PATTERNS
from ..select.registry import selectors
from .figures import distance_figure
from .theme import TEMPLATE, method_color, tokens_label

#: The oracle first, then the registered selectors of real inputs. MSA's index branch here is
#: the main Q/K (``index_from_qk``): the mechanism, untrained.
METHODS = ("oracle", *(s.name for s in selectors() if s.name != "oracle"))
METHOD_LABELS = {s.name: s.label for s in selectors()}
METRICS = {
    "recall_mean": "mean recall",
    "recall_p5": "5th-percentile recall",
    "recall_p50": "median recall",
    "rows_below_0_9": "share of rows with recall < 0.9",
    "recall_vs_oracle_mean": "recall / oracle recall",
    "overlap_mean": "block overlap with the oracle",
    "block_recall_mean": "block recall (MSA paper)",
    "score_recall_mean": "score recall (MSA paper)",
    "output_error": "output error ‖o − o_full‖ / ‖o_full‖",
}
AXES = {"top_k": "top_k (blocks per query)", "seq_len": "sequence length N (tokens)",
        "block_size": "block size (tokens)"}
PARAMS = ("seq_len", "block_size", "top_k", "pattern")


def coverage_rows(rows) -> list[dict]:
    """The finished coverage rows; an error if there are none."""
    found = [r for r in rows if r.get("mode") == "coverage" and r.get("status") == "ok"]
    if not found:
        raise ValueError("no finished coverage rows in these results (run a mode: coverage sweep)")
    return found


def _fix(rows, keep: tuple[str, ...]) -> tuple[list[dict], dict]:
    """Rows whose parameters other than ``keep`` take their most common value."""
    fixed = {}
    for param in PARAMS:
        if param not in keep:
            fixed[param] = Counter(r[param] for r in rows).most_common(1)[0][0]
    return [r for r in rows if all(r[p] == v for p, v in fixed.items())], fixed


def _method_order(method: str) -> tuple:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def _ordered(methods) -> list[str]:
    return sorted(methods, key=_method_order)


def _by_method(rows) -> list[dict]:
    return sorted(rows, key=lambda r: _method_order(r["method"]))


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _readable(value) -> str:
    """A pattern (or other parameter value) as a panel title: "heavy_hitter" -> "heavy hitter"."""
    return str(value).replace("_", " ")


def _subtitle(fixed: dict) -> str:
    parts = [f"N={r:,}" if p == "seq_len" else f"{p}={r}" for p, r in fixed.items()]
    return ", ".join(parts)


def _panels(rows, x: str, metric: str, split: str, title: str) -> go.Figure:
    """One panel per value of ``split`` (or one panel), a line per method: ``metric``
    against ``x``. A panel with a single ``x`` value has no line to show and is left out
    (a sweep of lengths for the mixed pattern only, say); the title says which were."""
    order = ("mixed", *PATTERNS)
    panels = sorted({r[split] for r in rows}, key=lambda v: (order.index(v) if v in order else len(order), str(v))) \
        if split else [None]
    if split:
        lines = [p for p in panels if len({r[x] for r in rows if r[split] == p}) > 1]
        if lines and len(lines) < len(panels):
            title += f"; {', '.join(_readable(p) for p in panels if p not in lines)}: one {x} only, not shown"
            panels, rows = lines, [r for r in rows if r[split] in lines]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[_readable(p) for p in panels] if split else None)
    for col, panel in enumerate(panels, start=1):
        panel_rows = [r for r in rows if split is None or r[split] == panel]
        for method in _ordered({r["method"] for r in panel_rows}):
            line = sorted((r for r in panel_rows if r["method"] == method), key=lambda r: r[x])
            fig.add_scatter(x=[r[x] for r in line], y=[r[metric] for r in line], mode="lines+markers",
                            name=_label(method), legendgroup=method, showlegend=col == 1,
                            line=dict(color=method_color(method)), marker=dict(size=6),
                            customdata=[[r["tokens_per_query"], r["rows_measured"]] for r in line],
                            hovertemplate=f"{x}=%{{x}}<br>{metric}=%{{y:.3f}}<br>%{{customdata[0]:.0f}} tokens "
                                          "per query, %{customdata[1]} rows<extra>" + method + "</extra>",
                            row=1, col=col)
        values = sorted({r[x] for r in rows})
        middle = col == (len(panels) + 1) // 2  # one axis title for the row of panels
        fig.update_xaxes(type="log", tickvals=values, tickangle=0,
                         ticktext=[tokens_label(v) if x == "seq_len" else str(v) for v in values],
                         title_text=AXES[x] if middle else None, row=1, col=col)
    bounded = metric != "output_error"
    fig.update_yaxes(title_text=METRICS.get(metric, metric), row=1, col=1)
    if bounded:
        fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(template=TEMPLATE, title=title, width=max(520, 300 * len(panels)))
    return fig


def recall_figure(rows, x: str = "top_k", metric: str = "recall_mean") -> go.Figure:
    """``metric`` against ``x`` (top_k, seq_len or block_size), one panel per data pattern
    and a line per selector; the other parameters at their most common value."""
    if x not in AXES:
        raise ValueError(f"x must be one of {', '.join(AXES)}; got {x!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    rows, fixed = _fix(coverage_rows(rows), (x, "pattern"))
    what = METRICS[metric][0].upper() + METRICS[metric][1:]
    return _panels(rows, x, metric, "pattern", f"{what} against {x} ({_subtitle(fixed)})")


def budget_figure(rows, metric: str = "recall_mean", budget: int | None = None) -> go.Figure:
    """The granularity ablation: ``metric`` against block size at an equal token budget
    (block_size x top_k tokens per query), a line per selector. ``budget``: defaults to
    the budget measured at the most block sizes."""
    rows = coverage_rows(rows)
    sizes: dict[int, set] = {}
    for r in rows:
        sizes.setdefault(r["block_size"] * r["top_k"], set()).add(r["block_size"])
    if budget is None:
        budget = max(sizes, key=lambda b: (len(sizes[b]), b))
    if len(sizes.get(budget, ())) < 2:
        raise ValueError(f"budget: no two block sizes measured at {budget} tokens per query "
                         f"(budgets with several: {sorted(b for b, s in sizes.items() if len(s) > 1)})")
    rows = [r for r in rows if r["block_size"] * r["top_k"] == budget]
    rows, fixed = _fix(rows, ("block_size", "top_k"))
    sizes_of = Counter(r["method"] for r in rows)
    rows = [r for r in rows if sizes_of[r["method"]] > 1]  # selectors measured at one block size only
    title = f"{METRICS[metric][0].upper() + METRICS[metric][1:]} at {budget} tokens per query ({_subtitle(fixed)})"
    fig = _panels(rows, "block_size", metric, None, title)
    fig.update_xaxes(title_text=f"block size (top_k = {budget} / block size)")
    return fig


def _cell(rows, pattern: str | None):
    rows = coverage_rows(rows)
    if pattern is not None:
        rows = [r for r in rows if r["pattern"] == pattern]
        if not rows:
            raise ValueError(f"pattern: no rows with pattern {pattern!r}")
    return _fix(rows, ("method",))


def head_figure(rows, pattern: str | None = "mixed") -> go.Figure:
    """Mean recall per query head, a bar per selector, at one grid cell (``pattern``; the
    rest at the most common value). With ``mixed`` data each KV group carries one pattern,
    named under its heads."""
    rows, fixed = _cell(rows, pattern)
    fig = go.Figure()
    for r in _by_method(rows):
        heads = r["recall_by_head"]
        group = len(heads) // len(r["patterns"])
        labels = [f"head {h}<br>{_readable(r['patterns'][h // group])}" for h in range(len(heads))]
        fig.add_bar(x=labels, y=heads, name=_label(r["method"]),
                    marker_color=method_color(r["method"]))
    fig.update_layout(template=TEMPLATE, barmode="group", title=f"Mean recall per head ({_subtitle(fixed)})",
                      yaxis=dict(title="mean recall", range=[0, 1.02]))
    return fig


def position_figure(rows, pattern: str | None = "mixed") -> go.Figure:
    """Mean recall against query position, a line per selector, at one grid cell."""
    rows, fixed = _cell(rows, pattern)
    fig = go.Figure()
    for r in _by_method(rows):
        centres, recall = r["recall_by_position"]
        fig.add_scatter(x=centres, y=recall, mode="lines+markers", name=_label(r["method"]),
                        line=dict(color=method_color(r["method"])), marker=dict(size=5))
    fig.update_layout(template=TEMPLATE, title=f"Mean recall by query position ({_subtitle(fixed)})",
                      xaxis_title="query position", yaxis=dict(title="mean recall", range=[0, 1.02]))
    return fig


def coverage_distance_figure(rows, pattern: str | None = "mixed") -> go.Figure:
    """Recall against the distance of the key blocks, a bar per selector, at one grid cell."""
    rows, fixed = _cell(rows, pattern)
    series = {_label(r["method"]): r["recall_by_distance"] for r in _by_method(rows)}
    colors = {_label(r["method"]): method_color(r["method"]) for r in rows}
    return distance_figure(series, title=f"Recall by distance of the key block ({_subtitle(fixed)})", colors=colors)


def coverage_figures(rows) -> dict[str, go.Figure]:
    """Every coverage figure the rows support, by file name."""
    rows = coverage_rows(rows)
    figures = {}
    for x in ("top_k", "seq_len"):
        if len({r[x] for r in _fix(rows, (x, "pattern"))[0]}) > 1:
            for metric in ("recall_mean", "recall_p5", "recall_vs_oracle_mean", "output_error"):
                figures[f"coverage_{metric}_vs_{x}"] = recall_figure(rows, x, metric)
    budgets = Counter(r["block_size"] * r["top_k"] for r in rows)
    if any(len({r["block_size"] for r in rows if r["block_size"] * r["top_k"] == b}) > 1 for b in budgets):
        figures["coverage_budget_recall_mean"] = budget_figure(rows)
        figures["coverage_budget_recall_p5"] = budget_figure(rows, "recall_p5")
    pattern = "mixed" if any(r["pattern"] == "mixed" for r in rows) else None
    figures["coverage_by_head"] = head_figure(rows, pattern)
    figures["coverage_by_position"] = position_figure(rows, pattern)
    figures["coverage_by_distance"] = coverage_distance_figure(rows, pattern)
    return figures
