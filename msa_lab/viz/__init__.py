"""Plotly figures in the msa_lab house style, and their export (HTML, PNG, SVG, PDF)."""

from .export import export_figure, paper_figure, save_figure, static_export_session
from .figures import (
    recall_by_distance_figure,
    recall_by_position_figure,
    recall_distribution_figure,
    selection_map_figure,
    write_html,
)
from .sweeps import (
    grid_figure,
    latency_figure,
    roofline_figure,
    speedup_figure,
    stage_figure,
    throughput_figure,
    write_sweep_figures,
)
from .theme import COLUMN_WIDTHS, METHOD_COLORS, PAPER_TEMPLATE, TEMPLATE, method_color

__all__ = [
    "COLUMN_WIDTHS",
    "METHOD_COLORS",
    "PAPER_TEMPLATE",
    "TEMPLATE",
    "export_figure",
    "grid_figure",
    "latency_figure",
    "method_color",
    "paper_figure",
    "recall_by_distance_figure",
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
