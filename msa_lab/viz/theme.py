"""The house style: one Plotly template and a fixed colour per method.

Colours are the Okabe-Ito palette (colour-blind safe); a method keeps its colour in
every figure so readers can match curves across a paper.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

TEMPLATE = "msa_lab"

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

METHOD_COLORS = {
    "full": "#000000",
    "msa": "#0072B2",
    "moba": "#D55E00",
    "oracle": "#009E73",
    "window": "#CC79A7",
    "random": "#E69F00",
}


def method_color(name: str) -> str:
    """The method's colour; unknown names get a stable palette colour."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return OKABE_ITO[sum(map(ord, name)) % len(OKABE_ITO)]


def _register() -> None:
    axis = dict(showline=True, linecolor="#444", ticks="outside", gridcolor="#e6e6e6",
                zeroline=False, mirror=False)
    pio.templates[TEMPLATE] = go.layout.Template(
        layout=dict(
            font=dict(family="Helvetica, Arial, sans-serif", size=13, color="#222"),
            colorway=list(OKABE_ITO),
            plot_bgcolor="white",
            paper_bgcolor="white",
            xaxis=axis,
            yaxis=axis,
            legend=dict(bgcolor="rgba(255,255,255,0.8)", borderwidth=0),
            margin=dict(l=60, r=20, t=50, b=50),
            colorscale=dict(sequential="Viridis"),
        )
    )


_register()
