"""Figure export and the paper figures' content: a second export of an unchanged figure
leaves its files alone; labels are readable names, not run folder names."""

import os

import plotly.graph_objects as go
import pytest

from msa_lab.viz import save_figure, static_export_session
from msa_lab.viz.export import static_export_available
from msa_lab.viz.paper import write_paper_figures

needs_browser = pytest.mark.skipif(not static_export_available(), reason="static export needs kaleido and Chromium")


def _figure(y) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=y, name="a"))
    fig.update_layout(title="t", legend_title_text="legend")
    return fig


@needs_browser
def test_a_second_export_of_the_same_figure_leaves_its_files_alone(tmp_path):
    formats = ("html", "png", "svg", "pdf")
    with static_export_session(formats):
        files = save_figure(_figure([3, 1, 2]), tmp_path / "f", formats)
        for f in files:
            os.utime(f, (1_000_000_000, 1_000_000_000))
        before = {f: f.read_bytes() for f in files}
        assert save_figure(_figure([3, 1, 2]), tmp_path / "f", formats) == files  # new random ids, new dates
        for f in files:
            assert f.read_bytes() == before[f] and f.stat().st_mtime == 1_000_000_000, f.name
        save_figure(_figure([3, 1, 4]), tmp_path / "f", formats)  # a changed figure is written
        for f in files:
            assert f.read_bytes() != before[f] and f.stat().st_mtime != 1_000_000_000, f.name


@needs_browser
def test_rebuilding_a_paper_figure_leaves_its_files_and_the_index_alone(tmp_path):
    files = write_paper_figures(tmp_path, only=["coverage_by_position"], progress=False)
    for f in files:
        os.utime(f, (1_000_000_000, 1_000_000_000))
    before = {f: f.read_bytes() for f in files}
    write_paper_figures(tmp_path, only=["coverage_by_position"], progress=False)
    assert {f.name for f in files} == {"coverage_by_position.png", "coverage_by_position.svg",
                                       "coverage_by_position.pdf", "figures.md"}
    for f in files:
        assert f.read_bytes() == before[f] and f.stat().st_mtime == 1_000_000_000, f.name
