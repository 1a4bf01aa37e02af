"""Figure export: interactive HTML (opens offline) and static PNG / SVG / PDF for papers.

``export_figure(fig, "fig/recall", width="single")`` is the one call for a paper: the
figure in the paper theme at a column width, written as PNG (300 dpi), SVG and PDF.

Static formats go through kaleido (>= 1), which drives a Chrome or Chromium already on the
machine (on Debian: ``apt-get install chromium``; kaleido finds it on PATH or through
``BROWSER_PATH``). ``static_export_session`` keeps one browser running for a batch of
exports (about 0.2 s a figure instead of 3 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .theme import COLUMN_WIDTHS, PAPER_FONT_PT, PAPER_SMALL_PT, PAPER_TEMPLATE, PX_PER_INCH, pt_to_px

STATIC_FORMATS = ("png", "svg", "pdf")
FORMATS = ("html", *STATIC_FORMATS)
#: Paper-friendly default size (pixels at scale 1); PNGs are written at 2x.
WIDTH, HEIGHT, PNG_SCALE = 900, 520, 2


def check_formats(formats) -> tuple[str, ...]:
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"formats must be among {', '.join(FORMATS)}; got {fmt!r}")
    return formats


def _kaleido():
    try:
        import kaleido
    except ImportError:
        raise RuntimeError("static export (png/svg/pdf) needs kaleido>=1: pip install 'msa-lab[export]' "
                           "and a Chrome or Chromium (Debian: apt-get install chromium)") from None
    return kaleido


def static_export_available() -> bool:
    """Whether PNG/SVG/PDF export can run here: kaleido installed and a Chrome/Chromium found."""
    import shutil

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    browsers = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return bool(os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in browsers))


@contextlib.contextmanager
def static_export_session(formats=STATIC_FORMATS):
    """One browser for every static export inside the block (none when ``formats`` has no
    static format)."""
    if not set(check_formats(formats)) & set(STATIC_FORMATS):
        yield
        return
    kaleido = _kaleido()
    try:
        kaleido.start_sync_server(mathjax=False, silence_warnings=True)  # no CDN request for MathJax
    except Exception as err:  # noqa: BLE001 - kaleido raises its own types for a missing browser
        raise RuntimeError(f"could not start a browser for static export ({err}); install Chrome or "
                           "Chromium, or set BROWSER_PATH to one") from None
    try:
        yield
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


#: What differs between two exports of one figure: an SVG's random ids (plotly.js draws a
#: plot id, in its clip-path and defs ids, and an id per trace, in its class and its colour
#: bar's gradient id, for each render), a PDF's
#: creation and modification dates, an HTML div's random UUID.
_SVG_IDS = re.compile(rb'<defs id="defs-([0-9a-f]+)"|class="trace \w+ trace([0-9a-f]+)"|-cb([0-9a-f]+)"')
_PDF_DATES = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _comparable(content: bytes, fmt: str) -> bytes:
    """``content`` with what changes from one export of the same figure to the next masked."""
    if fmt == "svg":
        for n, uid in enumerate(dict.fromkeys(next(filter(None, m.groups())) for m in _SVG_IDS.finditer(content))):
            content = content.replace(uid, b"ID%d" % n)
        return content
    if fmt == "pdf":
        return _PDF_DATES.sub(rb"/\1 ()", content)
    if fmt == "html":
        return _UUID.sub(b"UUID", content)
    return content


def write_if_changed(target: Path, content: bytes, fmt: str) -> None:
    """Write ``content`` unless ``target`` holds the same figure already: a figure that did
    not change keeps its file, bytes and mtime (no spurious diffs in a checkout)."""
    if target.is_file() and _comparable(target.read_bytes(), fmt) == _comparable(content, fmt):
        return
    target.write_bytes(content)


def save_figure(fig: go.Figure, path, formats=("html",), *, width: int = WIDTH, height: int = HEIGHT,
                png_scale: float = PNG_SCALE) -> list[Path]:
    """Write ``fig`` as ``path.<format>`` for each format; returns the files. A file that
    holds the same figure already (differing only in dates or random ids) is left as it is.
    HTML files share one ``plotly.min.js`` in their folder, so a folder of figures opens
    offline. ``width``/``height`` in CSS pixels (96 per inch); PNGs at ``png_scale`` times that."""
    formats = check_formats(formats)
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        if fmt == "html":
            content = fig.to_html(include_plotlyjs="directory", full_html=True).encode("utf-8")
            bundle = target.parent / "plotly.min.js"
            if not bundle.exists():
                bundle.write_text(get_plotlyjs(), encoding="utf-8")
        else:
            content = _static_image(fig, fmt, width, height, png_scale if fmt == "png" else 1)
        write_if_changed(target, content, fmt)
        written.append(target)
    return written


#: Attempts at one static export. kaleido drives a browser tab whose page script can still be
#: loading when the first call lands on a busy machine ("ReferenceError: kaleido_scopes is not
#: defined", seen under CPU load with kaleido 1.5); a second call then finds it loaded.
STATIC_ATTEMPTS = 3


def _static_image(fig: go.Figure, fmt: str, width: int, height: int, scale: float) -> bytes:
    _kaleido()

    def export() -> bytes:
        with warnings.catch_warnings():  # plotly notes that a running server ignores kopts
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            return fig.to_image(format=fmt, width=width, height=height, scale=scale)

    for attempt in range(STATIC_ATTEMPTS - 1):
        try:
            return export()
        except Exception as err:  # noqa: BLE001 - kaleido's JavascriptError has no stable import path
            if "kaleido_scopes is not defined" not in str(err):
                raise
            time.sleep(0.5 * (attempt + 1))
    return export()


def _inches(width) -> float:
    if isinstance(width, str):
        if width not in COLUMN_WIDTHS:
            raise ValueError(f"width must be one of {', '.join(COLUMN_WIDTHS)} or a number of inches; got {width!r}")
        return COLUMN_WIDTHS[width]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 1 <= width <= 20:
        raise ValueError(f"width must be one of {', '.join(COLUMN_WIDTHS)} or inches in [1, 20]; got {width!r}")
    return float(width)


def _legend_rows(fig: go.Figure, width_px: float, font_px: float) -> int:
    """Rows a horizontal legend of ``fig`` takes at ``width_px`` (an estimate from name lengths)."""
    names = [t.name for t in fig.data if t.name and t.showlegend is not False]
    rows, used = (1 if names else 0), 0.0
    for name in names:
        item = 40 + 0.55 * font_px * len(name)
        if used and used + item > width_px:
            rows, used = rows + 1, 0.0
        used += item
    return rows


def paper_figure(fig: go.Figure, width="single", height: float | None = None, *, title: bool = False) -> go.Figure:
    """A copy of ``fig`` in the paper theme, sized for a column: ``width`` "single" (3.5 in),
    "double" (7 in), "neurips" (5.5 in) or inches; ``height`` in inches (default: 0.7 of a
    single column's width, 0.4 of wider ones). Titles are dropped unless ``title`` (a
    paper's caption says it); the legend goes above the plot."""
    w = _inches(width)
    h = height if height is not None else (0.7 if w <= 4 else 0.4) * w
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0.5 <= h <= 20:
        raise ValueError(f"height must be inches in [0.5, 20]; got {height!r}")
    out = go.Figure(fig)
    small = pt_to_px(PAPER_SMALL_PT)
    width_px = round(w * PX_PER_INCH)
    right_axis = any(k.startswith("yaxis") and out.layout[k].overlaying for k in out.layout.to_plotly_json())
    # The legend sits above the plot: leave room for its rows (and for subplot titles).
    titled = 14 * max((1 + (a.text or "").count("<br>") for a in out.layout.annotations), default=0)
    top = 6 + 13 * _legend_rows(out, width_px - 60, small) + titled
    height_px = round(h * PX_PER_INCH)
    out.update_layout(
        template=PAPER_TEMPLATE, width=width_px, height=height_px,
        font=dict(family="Helvetica, Arial, sans-serif", size=pt_to_px(PAPER_FONT_PT), color="#000"),
        legend=dict(orientation="h", x=0, y=1 + titled / max(height_px - top - 36, 1), xanchor="left",
                    yanchor="bottom", font_size=small, title_text=None, bgcolor="rgba(255,255,255,0)", entrywidth=0),
        margin=dict(l=48, r=48 if right_axis else 8, t=top, b=36))
    if not title:
        out.update_layout(title_text=None)
    out.update_annotations(font_size=small)  # subplot titles
    for trace in out.data:  # thinner lines and points; marker-only traces keep their symbols' size
        if trace.type == "scatter" and "lines" in (trace.mode or "lines"):
            trace.update(line_width=1.5, marker_size=4)
        elif trace.type == "scatter" and isinstance(trace.marker.size, (int, float)):
            trace.marker.size = min(trace.marker.size, 9)
    for axis in [*out.select_xaxes(), *out.select_yaxes()]:
        if axis.type == "log" and axis.tickvals is None:
            axis.dtick = 1  # powers of ten only: minor labels crowd a column-wide figure
    out.update_xaxes(title_font_size=pt_to_px(PAPER_FONT_PT), tickfont_size=small, title_standoff=4)
    out.update_yaxes(title_font_size=pt_to_px(PAPER_FONT_PT), tickfont_size=small, title_standoff=4)
    return out


def export_figure(fig: go.Figure, path, formats=STATIC_FORMATS, *, width="single", height: float | None = None,
                  title: bool = False, dpi: int = 300) -> list[Path]:
    """Export ``fig`` for a paper in one call: the paper theme at a column width (see
    ``paper_figure``), written as ``path.png`` (at ``dpi``), ``.svg`` and ``.pdf`` (vector,
    at true size) or the ``formats`` asked for. Returns the files."""
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 72 <= dpi <= 1200:
        raise ValueError(f"dpi must be an integer in [72, 1200]; got {dpi!r}")
    paper = paper_figure(fig, width, height, title=title)
    return save_figure(paper, path, formats, width=paper.layout.width, height=paper.layout.height,
                       png_scale=dpi / PX_PER_INCH)
