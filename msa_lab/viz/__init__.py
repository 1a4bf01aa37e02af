"""Plotly figures in the msa_lab house style."""

from .figures import recall_by_position_figure, recall_distribution_figure, selection_map_figure, write_html
from .theme import METHOD_COLORS, TEMPLATE, method_color

__all__ = [
    "METHOD_COLORS",
    "TEMPLATE",
    "method_color",
    "recall_by_position_figure",
    "recall_distribution_figure",
    "selection_map_figure",
    "write_html",
]
