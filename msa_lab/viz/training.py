"""Figures of training runs (folders written by ``msa_lab.train``): loss curves, accuracy by
context length, the needle-in-a-haystack heat map (passkey accuracy by length and depth),
and the coverage of a trained index branch. Each is a function of the run folders alone."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from .theme import TEMPLATE, method_color


def load_run(path) -> dict:
    """``{"name", "method", "rows": metrics rows, "summary": summary or None}`` of a run folder."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"no metrics.jsonl in {path} (not a training run folder)")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    method = (summary or {}).get("method") or config.get("model", {}).get("method", "?")
    return dict(name=path.name, method=method, rows=rows, summary=summary)


def _runs(paths) -> list[dict]:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    runs = []
    for p in paths:
        p = Path(p)
        runs += [load_run(d) for d in sorted(p.iterdir()) if (d / "metrics.jsonl").is_file()] \
            if not (p / "metrics.jsonl").is_file() else [load_run(p)]
    if not runs:
        raise ValueError("no training runs found")
    return runs


def _color(run: dict) -> str:
    return method_color(run["method"]) if run["name"] in ("full", "moba", "msa") else method_color(run["name"])


def loss_figure(paths) -> go.Figure:
    """Training loss against step, a line per run (a run folder, or an ablation folder of runs);
    the MSA index warm-up steps are drawn dotted."""
    fig = go.Figure()
    for run in _runs(paths):
        train = [r for r in run["rows"] if r.get("kind") == "train"]
        warm = [r for r in train if r["phase"].startswith("index warm-up")]
        rest = [r for r in train if not r["phase"].startswith("index warm-up")]
        color = _color(run)
        if warm:
            fig.add_scatter(x=[r["step"] for r in warm + rest[:1]], y=[r["loss"] for r in warm + rest[:1]],
                            mode="lines", line=dict(color=color, dash="dot"), name=f"{run['name']} (warm-up)",
                            legendgroup=run["name"], showlegend=False)
        fig.add_scatter(x=[r["step"] for r in rest], y=[r["loss"] for r in rest], mode="lines", name=run["name"],
                        line=dict(color=color), legendgroup=run["name"])
    fig.update_layout(template=TEMPLATE, title="Training loss (dotted: MSA's index warm-up under full attention)",
                      xaxis_title="step", yaxis_title="cross-entropy on the scored tokens")
    return fig


def accuracy_figure(paths, metric: str = "token_accuracy") -> go.Figure:
    """Final accuracy (``token_accuracy`` or ``exact_match``) against evaluated context length,
    a line per finished run."""
    if metric not in ("token_accuracy", "exact_match"):
        raise ValueError(f"metric must be 'token_accuracy' or 'exact_match'; got {metric!r}")
    fig = go.Figure()
    for run in _runs(paths):
        if run["summary"] is None:
            continue
        ev = sorted((e for e in run["summary"]["eval"] if "depth" not in e), key=lambda e: e["seq_len"])
        fig.add_scatter(x=[e["seq_len"] for e in ev], y=[e[metric] for e in ev], mode="lines+markers",
                        name=run["name"], line=dict(color=_color(run)))
    fig.update_layout(template=TEMPLATE, title=f"{metric.replace('_', ' ')} by context length",
                      xaxis=dict(type="log", title="context length (tokens)"),
                      yaxis=dict(title=metric.replace("_", " "), range=[0, 1.02]))
    return fig


def needle_heatmap_figure(path, metric: str = "exact_match") -> go.Figure:
    """Passkey retrieval: accuracy by context length (x) and needle depth (y) of one run."""
    run = load_run(path)
    ev = [e for e in (run["summary"] or {}).get("eval", []) if "depth" in e]
    if not ev:
        raise ValueError(f"{path}: no passkey evaluation by depth (set task.name: passkey and eval.depths)")
    lengths = sorted({e["seq_len"] for e in ev})
    depths = sorted({e["depth"] for e in ev})
    z = [[next((e[metric] for e in ev if e["seq_len"] == n and e["depth"] == d), None) for n in lengths]
         for d in depths]
    fig = go.Figure(go.Heatmap(z=z, x=[str(n) for n in lengths], y=[f"{d:.0%}" for d in depths], zmin=0, zmax=1,
                               colorscale="Viridis", colorbar=dict(title=metric.replace("_", " "))))
    fig.update_layout(template=TEMPLATE, title=f"Needle in a haystack: {run['name']}",
                      xaxis_title="context length (tokens)", yaxis_title="needle depth")
    return fig


def index_coverage_figure(paths) -> go.Figure:
    """Mean recall of the trained index branch, MoBA's gate and the oracle on each MSA run's
    own attention (per layer)."""
    fig = go.Figure()
    bars: dict[str, tuple[list, list]] = {}
    for run in _runs(paths):
        for r in (run["summary"] or {}).get("coverage", []):
            xs, ys = bars.setdefault(r["selector"], ([], []))
            xs.append(f"{run['name']} L{r['layer']}")
            ys.append(r["recall_mean"])
    if not bars:
        raise ValueError("no coverage rows: no finished MSA run with eval.coverage")
    colors = {"msa (trained index)": method_color("msa"), "moba": method_color("moba"), "oracle": method_color("oracle")}
    for name, (xs, ys) in bars.items():
        fig.add_bar(x=xs, y=ys, name=name, marker_color=colors.get(name, method_color(name)))
    fig.update_layout(template=TEMPLATE, barmode="group", title="Recall on the trained model's own attention",
                      xaxis_title="run and layer", yaxis=dict(title="mean recall", range=[0, 1.02]))
    return fig
