"""Figure export: interactive HTML (opens offline) and static PNG / SVG / PDF for papers.

Static formats go through kaleido (>= 1), which drives a Chrome or Chromium already on the
machine (on Debian: ``apt-get install chromium``; kaleido finds it on PATH or through
``BROWSER_PATH``). ``static_export_session`` keeps one browser running for a batch of
exports (about 0.2 s a figure instead of 3 s).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import plotly.graph_objects as go

STATIC_FORMATS = ("png", "svg", "pdf")
FORMATS = ("html", *STATIC_FORMATS)
#: Paper-friendly default size (pixels at scale 1); PNGs are written at 2x.
WIDTH, HEIGHT, PNG_SCALE = 900, 520, 2


def _check_formats(formats) -> tuple[str, ...]:
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


@contextlib.contextmanager
def static_export_session(formats=STATIC_FORMATS):
    """One browser for every static export inside the block (none when ``formats`` has no
    static format)."""
    if not set(_check_formats(formats)) & set(STATIC_FORMATS):
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


def save_figure(fig: go.Figure, path, formats=("html",), *, width: int = WIDTH, height: int = HEIGHT) -> list[Path]:
    """Write ``fig`` as ``path.<format>`` for each format; returns the files. HTML files
    share one ``plotly.min.js`` in their folder, so a folder of figures opens offline."""
    formats = _check_formats(formats)
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        if fmt == "html":
            fig.write_html(target, include_plotlyjs="directory", full_html=True)
        else:
            _kaleido()
            with warnings.catch_warnings():  # plotly notes that a running server ignores kopts
                warnings.filterwarnings("ignore", message="The kopts argument is ignored")
                fig.write_image(target, format=fmt, width=width, height=height,
                                scale=PNG_SCALE if fmt == "png" else 1)
        written.append(target)
    return written
