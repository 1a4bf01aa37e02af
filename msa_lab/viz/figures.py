"""Figures are functions of results: they never run an experiment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import plotly.graph_objects as go
import torch

from ..coverage import CoverageReport
from ..selection import BlockSelection
from .theme import FUTURE_COLOR, TEMPLATE, method_color


def recall_by_position_figure(reports: Mapping[str, CoverageReport], num_bins: int = 32) -> go.Figure:
    """Mean attention recall against query position, one line per method."""
    fig = go.Figure()
    for name, rep in reports.items():
        x, y = rep.by_position(num_bins)
        fig.add_scatter(x=x.tolist(), y=y.tolist(), name=name, mode="lines+markers",
                        line=dict(color=method_color(name)), marker=dict(size=5))
    fig.update_layout(template=TEMPLATE, title="Attention recall by query position",
                      xaxis_title="query position", yaxis_title="mean recall",
                      yaxis_range=[0, 1.02])
    return fig


def recall_distribution_figure(reports: Mapping[str, CoverageReport], points: int = 201) -> go.Figure:
    """Cumulative distribution of per-row recall: the share of (batch, head, query) rows
    whose recall is at most x, one curve per method (lower-right is better)."""
    fig = go.Figure()
    share = torch.linspace(0, 1, points)
    for name, rep in reports.items():
        ordered = rep.recall.flatten().double().sort().values
        at = (share * (ordered.numel() - 1)).round().long()
        fig.add_scatter(x=ordered[at].tolist(), y=share.tolist(), name=name, mode="lines",
                        line=dict(color=method_color(name), width=2))
    fig.update_layout(template=TEMPLATE, title="Distribution of per-row attention recall",
                      xaxis_title="recall (share of full-attention mass kept)",
                      yaxis_title="share of rows with recall ≤ x",
                      xaxis_range=[0, 1.01], yaxis_range=[0, 1.01])
    return fig


def distance_figure(series: Mapping[str, tuple], title: str = "Recall by distance of the key block",
                    colors: Mapping[str, str] | None = None) -> go.Figure:
    """Bars of recall per block-distance octave, one bar per method; a grey line gives the
    share of all true mass at that distance (right axis). ``series``: name ->
    ``(octave labels, recall, mass share)`` as ``CoverageReport.by_distance()`` returns;
    ``colors``: name -> colour (default: the method colour of the name)."""
    fig = go.Figure()
    shares = None
    for name, (labels, recall, share) in series.items():
        fig.add_bar(x=list(labels), y=list(map(float, recall)), name=name,
                    marker_color=(colors or {}).get(name, method_color(name)),
                    hovertemplate="distance %{x} blocks<br>recall %{y:.3f}<extra>" + name + "</extra>")
        shares = shares or (list(labels), list(map(float, share)))
    if shares is not None:
        fig.add_scatter(x=shares[0], y=shares[1], name="true mass share", yaxis="y2", mode="lines+markers",
                        line=dict(color="#888", width=1.5, dash="dot"), marker=dict(size=5))
    fig.update_layout(template=TEMPLATE, title=title, barmode="group",
                      xaxis=dict(title="distance behind the query's block (blocks)", type="category", tickangle=0),
                      yaxis=dict(title="recall at that distance", range=[0, 1.02]),
                      yaxis2=dict(title="true mass share", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero", tickformat=".0%"),
                      legend=dict(x=1.08, xanchor="left"))
    return fig


def recall_by_distance_figure(reports: Mapping[str, CoverageReport]) -> go.Figure:
    """Recall against the distance of the key blocks, one bar colour per method: does a
    selector lose near or far context?"""
    return distance_figure({name: rep.by_distance() for name, rep in reports.items()})


def future_cells(num_query_cells: int, num_key_cells: int) -> list[list[float | None]]:
    """A heat map layer ``[query cell][key cell]`` that is 1 where the key cell lies after
    the query cell (no query there may select it) and None (not drawn) elsewhere."""
    return [[1.0 if k > q else None for k in range(num_key_cells)] for q in range(num_query_cells)]


def add_future_layer(fig, num_query_cells: int, num_key_cells: int, **where) -> None:
    """Grey the causally masked cells of a selection map (``where``: the subplot) and give
    them a legend entry of their own: they are not "not chosen", they cannot be chosen."""
    fig.add_heatmap(z=future_cells(num_query_cells, num_key_cells), colorscale=[[0, FUTURE_COLOR], [1, FUTURE_COLOR]],
                    showscale=False, showlegend=False, hoverinfo="skip", **where)
    fig.add_scatter(x=[None], y=[None], mode="markers", name="future blocks (causally masked)",
                    marker=dict(symbol="square", size=10, color=FUTURE_COLOR), **where)


def selection_map_figure(selection: BlockSelection, *, batch: int = 0, head: int = 0,
                         oracle: BlockSelection | None = None, title: str | None = None) -> go.Figure:
    """Query block x key block heat map: the share of each query block's queries that
    selected each key block; key blocks after the query's own, which causality rules out,
    are grey. With ``oracle``, blocks the oracle chose but the selection never did are
    marked with x."""
    share = selection.block_map()[batch, head].cpu()
    nb = share.shape[0]
    fig = go.Figure(go.Heatmap(z=share.tolist(), colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title="share"), name="share of queries",
                               hovertemplate="query block %{y}<br>key block %{x}<br>share %{z:.2f}<extra></extra>"))
    add_future_layer(fig, nb, share.shape[1])
    if oracle is not None:
        missed = (oracle.block_map()[batch, head].cpu() > 0) & (share == 0)
        qb, kb = torch.nonzero(missed, as_tuple=True)
        fig.add_scatter(x=kb.tolist(), y=qb.tolist(), mode="markers", name="oracle miss",
                        marker=dict(symbol="x-thin", size=max(3, 300 // nb), line=dict(width=1, color="#D55E00")))
    label = "group" if selection.per == "group" else "head"
    fig.update_layout(template=TEMPLATE,
                      title=title or f"Selected blocks ({label} {head}, batch {batch})",
                      xaxis_title="key block", yaxis_title="query block",
                      yaxis_autorange="reversed", xaxis_constrain="domain",
                      yaxis_scaleanchor="x", plot_bgcolor="white", xaxis_showgrid=False, yaxis_showgrid=False)
    return fig


def write_html(figures, path, *, title: str = "msa_lab") -> Path:
    """Write figures into one self-contained HTML page (plotly.js inlined once, so it
    opens offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = "\n".join(f"<div class='fig'>{p}</div>" for p in parts)
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body style='font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:auto'>"
        f"<h1>{title}</h1>{body}</body></html>",
        encoding="utf-8",
    )
    return path
