"""Plotly figures in the msa_lab house style, and their export (HTML, PNG, SVG, PDF)."""

from .export import save_figure, static_export_session
from .figures import recall_by_position_figure, recall_distribution_figure, selection_map_figure, write_html
from .sweeps import (
    grid_figure,
    latency_figure,
    roofline_figure,
    speedup_figure,
    stage_figure,
    throughput_figure,
    write_sweep_figures,
)
from .theme import METHOD_COLORS, TEMPLATE, method_color

__all__ = [
    "METHOD_COLORS",
    "TEMPLATE",
    "grid_figure",
    "latency_figure",
    "method_color",
    "recall_by_position_figure",
    "recall_distribution_figure",
    "roofline_figure",
    "save_figure",
    "selection_map_figure",
    "speedup_figure",
    "stage_figure",
    "static_export_session",
    "throughput_figure",
    "write_html",
    "write_sweep_figures",
]
