"""Figures of training runs (folders written by ``msa_lab.train``): loss curves, accuracy by
context length, evaluation loss by position, the needle-in-a-haystack heat map (passkey
accuracy by length and depth), and the coverage of a trained index branch. Each is a
function of the run folders alone.

Runs trained over several seeds (``<run>_seed<k>`` folders, ``msa-lab ablate`` with
``seeds``) are drawn as one run: the mean over the seeds, with their range (loss) or their
standard deviation (accuracy, recall) around it.
"""

from __future__ import annotations

import statistics
from collections import Counter

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..runs import find_runs, finished, group_seeds, mean_sd, seed_range
from ..validation import check_choice
from .theme import TEMPLATE, method_color

METRICS = ("token_accuracy", "exact_match")


def run_label(config: dict) -> str:
    """A readable name for a training run, from its config: "full attention", "MoBA, block 16
    x top-4", "MSA, block 32 x top-2, from scratch", "MSA, block 16 x top-4, 800 warm-up
    steps" (dense steps that train the index before it selects), ", all layers sparse" where
    no layer keeps full attention."""
    model, train = config.get("model", {}), config.get("train", {})
    method = model.get("method", "?")
    if method == "full":
        return "full attention"
    parts = [{"msa": "MSA", "moba": "MoBA"}.get(method, method), f"block {model.get('block_size')} x top-{model.get('top_k')}"]
    if method == "msa":
        warmup = train.get("index_warmup", 0)
        parts.append(f"{warmup} warm-up steps" if warmup else "from scratch")
    if not model.get("full_layers"):
        parts.append("all layers sparse")
    return ", ".join(parts)


def _groups(paths) -> dict[str, list[dict]]:
    return group_seeds(find_runs(paths))


def _labels(groups: dict[str, list[dict]]) -> dict[str, str]:
    """Each run's readable name (``run_label``), with its folder name added where two runs
    would get the same one."""
    labels = {name: run_label(runs[0]["config"]) for name, runs in groups.items()}
    taken = Counter(labels.values())
    return {name: label if taken[label] == 1 else f"{label} ({name})" for name, label in labels.items()}


def _seeds_note(groups: dict[str, list[dict]]) -> str:
    counts = {len(runs) for runs in groups.values()}
    return "" if counts == {1} else f" (mean of {'/'.join(map(str, sorted(counts)))} seeds)"


#: A method's runs share its colour; its variants (warm-up, block x top_k) differ by dash and
#: marker. Dotted stays free: it marks MSA's index warm-up in the loss curves.
DASHES = ("solid", "dash", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")


def _styles(groups: dict[str, list[dict]]) -> dict[str, dict]:
    seen: dict[str, int] = {}
    styles = {}
    for name, runs in groups.items():
        method = runs[0]["method"]
        i = seen[method] = seen.get(method, -1) + 1
        styles[name] = dict(color=method_color(method), dash=DASHES[i % len(DASHES)], symbol=SYMBOLS[i % len(SYMBOLS)])
    return styles


def loss_figure(paths) -> go.Figure:
    """Training loss against step, a line per run (a run folder, or an ablation folder of runs),
    the mean over its seeds with their range shaded; the MSA index warm-up steps are dotted."""
    fig = go.Figure()
    groups = _groups(paths)
    styles, labels = _styles(groups), _labels(groups)
    for name, runs in groups.items():
        by_step: dict[int, list[dict]] = {}
        for run in runs:
            for r in run["rows"]:
                if r.get("kind") == "train":
                    by_step.setdefault(r["step"], []).append(r)
        steps = sorted(by_step)
        mean = [statistics.mean(r["loss"] for r in by_step[s]) for s in steps]
        warm = [i for i, s in enumerate(steps) if by_step[s][0]["phase"].startswith("index warm-up")]
        color, dash = styles[name]["color"], styles[name]["dash"]
        if len(runs) > 1:
            low = [min(r["loss"] for r in by_step[s]) for s in steps]
            high = [max(r["loss"] for r in by_step[s]) for s in steps]
            fig.add_scatter(x=steps + steps[::-1], y=high + low[::-1], fill="toself", fillcolor=color, opacity=0.15,
                            line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=name)
        if warm:
            cut = warm[-1] + 2  # the dotted part ends at the first sparse point
            fig.add_scatter(x=steps[:cut], y=mean[:cut], mode="lines", line=dict(color=color, dash="dot"),
                            name=f"{labels[name]} (warm-up)", legendgroup=name, showlegend=False)
        first = warm[-1] + 1 if warm else 0
        fig.add_scatter(x=steps[first:], y=mean[first:], mode="lines", name=labels[name], line=dict(color=color, dash=dash),
                        legendgroup=name)
    fig.update_layout(template=TEMPLATE, title="Training loss" + _seeds_note(groups) +
                      " (dotted: MSA's index warm-up under full attention)",
                      xaxis_title="step", yaxis_title="cross-entropy on the scored tokens")
    return fig


def accuracy_figure(paths, metric: str = "token_accuracy") -> go.Figure:
    """Final accuracy (``token_accuracy`` or ``exact_match``) against evaluated context length,
    a line per finished run: the mean over its seeds (passkey: over the needle depths too),
    with bars from the lowest to the highest seed (``runs.seed_range``)."""
    check_choice(metric, "metric", METRICS)
    fig = go.Figure()
    groups = finished(_groups(paths))
    styles, labels = _styles(groups), _labels(groups)
    lengths_seen: set[int] = set()
    for name, runs in groups.items():
        lengths = sorted({e["seq_len"] for r in runs for e in r["summary"]["eval"]})
        stats = [seed_range([statistics.mean(e[metric] for e in r["summary"]["eval"] if e["seq_len"] == n)
                             for r in runs if any(e["seq_len"] == n for e in r["summary"]["eval"])]) for n in lengths]
        fig.add_scatter(x=lengths, y=[m for m, _, _ in stats], mode="lines+markers", name=labels[name],
                        error_y=_range_bars(stats, visible=len(runs) > 1),
                        line=dict(color=styles[name]["color"], dash=styles[name]["dash"]),
                        marker=dict(symbol=styles[name]["symbol"]))
        lengths_seen.update(lengths)
    fig.update_layout(template=TEMPLATE, title=f"{metric.replace('_', ' ')} by context length" + _seeds_note(groups),
                      xaxis=dict(type="log", title="context length (tokens)", tickvals=sorted(lengths_seen)),
                      yaxis=dict(title=metric.replace("_", " "), range=[0, 1.02]))
    return fig


def _range_bars(stats: list[tuple[float, float, float]], visible: bool) -> dict:
    """Asymmetric error bars from ``(mean, min, max)`` triples: the range over the seeds."""
    return dict(type="data", symmetric=False, array=[hi - m for m, _, hi in stats],
                arrayminus=[m - lo for m, lo, _ in stats], visible=visible)


def _mean_bins(rows: list[list], where: str) -> list[float | None]:
    """Bin-wise mean of ``loss_by_position`` rows, skipping empty bins. Results written before
    empty bins were recorded as None hold 0.0 there; a mean cross-entropy of exactly 0 cannot
    be told from those, so 0.0 counts as empty too."""
    if len({len(row) for row in rows}) != 1:
        raise ValueError(f"{where}: loss_by_position rows with different numbers of bins")
    means = []
    for i in range(len(rows[0])):
        values = [row[i] for row in rows if row[i]]
        means.append(statistics.mean(values) if values else None)
    return means


def loss_by_position_figure(paths) -> go.Figure:
    """Evaluation loss per scored token against position in the sequence, a panel per evaluated
    context length and a line per finished run: the mean over its seeds (and passkey depths),
    ± one standard deviation over the seeds. A sparse layer that loses distant tokens shows as
    a curve that stops falling where full attention's keeps falling."""
    groups = finished(_groups(paths))
    if not groups:
        raise ValueError(f"{paths}: no finished run")
    styles, labels = _styles(groups), _labels(groups)
    lengths = sorted({e["seq_len"] for runs in groups.values() for r in runs for e in r["summary"]["eval"]})
    fig = make_subplots(rows=1, cols=len(lengths), subplot_titles=[f"{n} tokens" for n in lengths],
                        shared_yaxes=True, horizontal_spacing=0.03)
    in_legend: set[str] = set()
    for col, n in enumerate(lengths, 1):
        for name, runs in groups.items():
            per_seed = [_mean_bins(rows, f"{name} at {n} tokens") for r in runs
                        if (rows := [e["loss_by_position"] for e in r["summary"]["eval"] if e["seq_len"] == n])]
            if len({len(seed) for seed in per_seed}) > 1:
                raise ValueError(f"{name} at {n} tokens: seeds with different numbers of loss_by_position bins")
            x, mean, sd = [], [], []
            for i in range(len(per_seed[0]) if per_seed else 0):
                values = [seed[i] for seed in per_seed if seed[i] is not None]
                if values:
                    m, s = mean_sd(values)
                    x.append((i + 0.5) * n / len(per_seed[0]))
                    mean.append(m)
                    sd.append(s)
            if not x:
                continue
            fig.add_scatter(x=x, y=mean, mode="lines+markers", name=labels[name], legendgroup=name,
                            showlegend=name not in in_legend,
                            error_y=dict(type="data", array=sd, visible=len(per_seed) > 1),
                            line=dict(color=styles[name]["color"], dash=styles[name]["dash"]),
                            marker=dict(symbol=styles[name]["symbol"], size=5), row=1, col=col)
            in_legend.add(name)
        fig.update_xaxes(title_text="position (tokens)", row=1, col=col)
    fig.update_yaxes(title_text="loss per scored token (eval)", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title="Evaluation loss by position" + _seeds_note(groups))
    return fig


def _needle_grid(runs: list[dict], metric: str, where) -> tuple[list[int], list[float], list[list[float]]]:
    check_choice(metric, "metric", METRICS)
    ev = [e for r in runs for e in r["summary"]["eval"] if "depth" in e]
    if not ev:
        raise ValueError(f"{where}: no passkey evaluation by depth (set task.name: passkey and eval.depths)")
    lengths = sorted({e["seq_len"] for e in ev})
    depths = sorted({e["depth"] for e in ev})
    z = [[statistics.mean(e[metric] for e in ev if e["seq_len"] == n and e["depth"] == d) for n in lengths]
         for d in depths]
    return lengths, depths, z


def needle_heatmap_figure(path, metric: str = "token_accuracy", run: str | None = None) -> go.Figure:
    """Passkey retrieval: accuracy (``token_accuracy`` or ``exact_match``) by context length (x)
    and needle depth (y) of one run, the mean over its seeds. ``path``: the run's folder (or
    its seeds' folders), or an ablation folder with ``run`` naming the run."""
    groups = finished(_groups(path))
    if run is None and len(groups) != 1:
        raise ValueError(f"run: name one of {', '.join(groups)} (these folders hold several runs)")
    name = run if run is not None else next(iter(groups))
    if name not in groups:
        raise ValueError(f"run: no finished run named {name!r}; there are {', '.join(groups) or 'none'}")
    lengths, depths, z = _needle_grid(groups[name], metric, path)
    fig = go.Figure(go.Heatmap(z=z, x=[str(n) for n in lengths], y=[f"{d:.0%}" for d in depths], zmin=0, zmax=1,
                               colorscale="Viridis", colorbar=dict(title=metric.replace("_", " "))))
    fig.update_layout(template=TEMPLATE, title=f"Needle in a haystack: {_labels(groups)[name]}" +
                      _seeds_note({name: groups[name]}),
                      xaxis=dict(type="category", title="context length (tokens)"),
                      yaxis=dict(type="category", title="needle depth"))
    return fig


def _short_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels without the settings every sparse run shares ("block 16 x top-4", said once in
    a caption), for titles of narrow panels: "MoBA", "MSA<br>from scratch" (two lines)."""
    sparse = [label.split(", ") for label in labels.values() if label != "full attention"]
    shared = set.intersection(*(set(parts[1:]) for parts in sparse)) if len(sparse) > 1 else set()
    short = {name: [part for part in label.split(", ") if part not in shared] for name, label in labels.items()}
    return {name: "<br>".join([parts[0], ", ".join(parts[1:])] if len(parts) > 1 else parts)
            for name, parts in short.items()}


def needle_grid_figure(paths, metric: str = "token_accuracy") -> go.Figure:
    """The needle-in-a-haystack heat maps of every finished passkey run side by side, on one
    colour scale (each the mean over its seeds); panel titles leave out the settings all
    sparse runs share."""
    groups = {name: runs for name, runs in finished(_groups(paths)).items()
              if any("depth" in e for r in runs for e in r["summary"]["eval"])}
    if not groups:
        raise ValueError(f"{paths}: no finished run with a passkey evaluation by depth")
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=list(_short_labels(_labels(groups)).values()),
                        shared_yaxes=True, horizontal_spacing=0.02)
    for i, (name, runs) in enumerate(groups.items(), 1):
        lengths, depths, z = _needle_grid(runs, metric, paths)
        fig.add_heatmap(z=z, x=[str(n) for n in lengths], y=[f"{d:.0%}" for d in depths], zmin=0, zmax=1,
                        colorscale="Viridis", showscale=i == 1, colorbar=dict(title=metric.replace("_", " ")),
                        row=1, col=i)
        fig.update_xaxes(title_text="tokens", type="category", row=1, col=i)
        fig.update_yaxes(type="category", row=1, col=i)
    fig.update_yaxes(title_text="needle depth", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title="Needle in a haystack" + _seeds_note(groups))
    return fig


def index_coverage_figure(paths) -> go.Figure:
    """Mean recall of the trained index branch, MoBA's gate and the oracle on each MSA run's
    own attention (per layer; the mean over seeds, bars from the lowest to the highest seed).
    A diverged run's layers, whose coverage is recorded empty, are left out."""
    fig = go.Figure()
    bars: dict[str, dict[str, list[float]]] = {}
    groups = finished(_groups(paths))
    labels = _labels(groups)
    for name, runs in groups.items():
        for run in runs:
            for r in run["summary"].get("coverage", []):
                if r["recall_mean"] is None:
                    continue
                bars.setdefault(r["selector"], {}).setdefault(f"{labels[name]}, layer {r['layer']}", []).append(
                    r["recall_mean"])
    if not bars:
        raise ValueError("no coverage rows: no finished MSA run with eval.coverage")
    colors = {"msa (trained index)": method_color("msa"), "moba": method_color("moba"), "oracle": method_color("oracle")}
    for selector, by_run in bars.items():
        stats = [seed_range(v) for v in by_run.values()]
        fig.add_bar(x=list(by_run), y=[m for m, _, _ in stats], name=selector,
                    error_y=_range_bars(stats, visible=any(hi > lo for _, lo, hi in stats)),
                    marker_color=colors.get(selector, method_color(selector)))
    fig.update_layout(template=TEMPLATE, barmode="group", title="Recall on the trained model's own attention" +
                      _seeds_note(groups), xaxis_title="run and layer", yaxis=dict(title="mean recall", range=[0, 1.02]))
    return fig
