"""The house style: one Plotly template and a fixed colour per method, and its paper
variant at a journal's column widths.

Colours are the Okabe-Ito palette (colour-blind safe); a method keeps its colour in
every figure so readers can match curves across a paper. Sizes of the paper variant are
in CSS pixels, 96 to the inch, which is how Chromium (and so kaleido) sizes a PDF page and
how LaTeX tools read an SVG: a 336 px figure is 3.5 in wide on the page.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from ..select.registry import SELECTORS

TEMPLATE = "msa_lab"
PAPER_TEMPLATE = "msa_lab_paper"
PX_PER_INCH = 96
#: Column widths in inches: one column of a two-column paper (ACL, ICML, IEEE: 3.25-3.5 in)
#: and the full text width (6.75-7 in; NeurIPS/ICLR single-column text is 5.5 in).
COLUMN_WIDTHS = {"single": 3.5, "double": 7.0, "neurips": 5.5}
#: Paper font sizes in points (body text of a figure, and its tick labels / legend).
PAPER_FONT_PT, PAPER_SMALL_PT = 9, 8

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

#: Full attention in black; each registered selector in its row's colour (the palette's
#: yellow is unreadable on white, so the tile-coherent workload is grey).
METHOD_COLORS = {"full": "#000000", **{s.name: s.color for s in SELECTORS.values()}}


#: Map cells a query cannot select (key blocks after its own, causally masked): a light grey,
#: apart from the colour scale's "share 0" (not chosen).
FUTURE_COLOR = "#d9d9d9"


def method_color(name: str) -> str:
    """The method's colour; unknown names get a stable palette colour."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return OKABE_ITO[sum(map(ord, name)) % len(OKABE_ITO)]


def tokens_label(n: int) -> str:
    """A token count for an axis tick: 4096 -> "4K", 1048576 -> "1M", 1000 -> "1000"."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def pt_to_px(points: float) -> float:
    return points * PX_PER_INCH / 72


def _register() -> None:
    axis = dict(showline=True, linecolor="#444", ticks="outside", gridcolor="#e6e6e6",
                zeroline=False, mirror=False)
    small = dict(size=pt_to_px(PAPER_SMALL_PT))
    paper_axis = dict(axis, ticklen=3, linewidth=0.75, gridwidth=0.5, tickfont=small,
                      title=dict(font=dict(size=pt_to_px(PAPER_FONT_PT)), standoff=4))
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
    pio.templates[PAPER_TEMPLATE] = go.layout.Template(
        layout=dict(
            pio.templates[TEMPLATE].layout.to_plotly_json(),
            font=dict(family="Helvetica, Arial, sans-serif", size=pt_to_px(PAPER_FONT_PT), color="#000"),
            xaxis=paper_axis,
            yaxis=paper_axis,
            legend=dict(font=small, bgcolor="rgba(255,255,255,0.8)", orientation="h", x=0, y=1.02,
                        xanchor="left", yanchor="bottom", tracegroupgap=2, itemwidth=30),
            margin=dict(l=44, r=8, t=30, b=36),
        ),
        data=dict(scatter=[go.Scatter(line=dict(width=1.5), marker=dict(size=4))]),
    )


_register()
