"""Figure export and the paper figures' content: a second export of an unchanged figure
leaves its files alone; captions take their numbers from the rows; labels are readable
names, not run folder names; published FLOP ratios are not drawn as timings; no panel holds
a single point; a selection map tells masked blocks from unchosen ones."""

import os

import plotly.graph_objects as go
import pytest
import torch

import msa_lab as ml

from msa_lab.viz import save_figure, selection_map_figure, static_export_session
from msa_lab.bench import checkout_path, load_results
from msa_lab.viz.export import static_export_available
from msa_lab.viz.paper import caption_fields, draw_paper_figures, write_paper_figures
from msa_lab.viz.theme import FUTURE_COLOR

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


def _paper(name):
    (spec, fig, _source), = draw_paper_figures(only=[name], progress=False)
    return spec, fig


def test_the_speedup_caption_takes_its_shape_from_the_rows():
    spec, _ = _paper("prefill_speedup")
    rows = load_results(checkout_path("experiments", "results", "sweeps", "prefill_1m_h200"))
    heads = {(r["num_heads"], r["num_kv_heads"]) for r in rows}
    assert heads == {(64, 4)} and "64 query / 4 KV heads" in spec.caption and "{" not in spec.caption
    assert caption_fields([dict(status="ok", num_heads=32), dict(status="ok", num_heads=64),
                           dict(status="error", num_heads=8)]) == {"num_heads": "32/64"}


def test_a_published_flop_ratio_is_marked_apart_from_wall_clock_speedups():
    _, fig = _paper("prefill_speedup")
    marks = {t.name: t.marker.symbol for t in fig.data if "published" in (t.hovertemplate or "")}
    assert marks == {"MSA paper: wall-clock 14.2x prefill at 1M (H800)": "star",
                     "MSA paper: compute (FLOP) ratio 28.4x at 1M": "diamond-open",
                     "MoBA report: wall-clock 6.5x prefill at 1M": "star"}


def test_training_legends_use_readable_names_not_run_folders():
    _, fig = _paper("training_accuracy_by_length")
    names = [t.name for t in fig.data]
    assert "MSA, block 32 x top-2, from scratch" in names and "full attention" in names
    assert not [n for n in names if "_" in n]
    _, grid = _paper("training_needle_grid")
    assert not [a.text for a in grid.layout.annotations if "_" in a.text]


def test_recall_against_length_draws_no_single_point_panel_and_short_ticks():
    _, fig = _paper("coverage_recall_vs_length")
    assert [a.text for a in fig.layout.annotations] == ["mixed"]  # the other patterns have one length each
    assert all(len(t.x) > 1 for t in fig.data)
    assert list(fig.layout.xaxis.ticktext) == ["4K", "16K", "32K"] and fig.layout.xaxis.tickangle == 0
    assert "one seq_len only, not shown" in fig.layout.title.text


def test_the_selection_map_colours_future_blocks_apart_from_not_chosen():
    # A sliding window of 2 blocks: every block further back is allowed and never chosen, on any draw.
    q, k = torch.randn(1, 256, 2, 16), torch.randn(1, 256, 1, 16)
    fig = selection_map_figure(ml.select_window(q, k, block_size=32, top_k=2), head=0)
    share, future, legend = fig.data[0], fig.data[1], fig.data[2]
    nb = len(share.z)
    assert nb == 8 and min(min(row[: i + 1]) for i, row in enumerate(share.z)) == 0  # allowed, not chosen
    assert future.type == "heatmap" and future.colorscale[0][1] == FUTURE_COLOR
    assert all((future.z[q][k] == 1) == (k > q) and (future.z[q][k] is None) == (k <= q)
               for q in range(nb) for k in range(nb))
    assert legend.name == "future blocks (causally masked)" and legend.marker.color == FUTURE_COLOR


def test_a_static_export_that_meets_a_page_still_loading_is_retried(tmp_path, monkeypatch):
    from msa_lab.viz import export

    calls = []

    def flaky(self, **kwargs):
        calls.append(kwargs["format"])
        if len(calls) == 1:  # what kaleido raises when its page script has not loaded yet
            raise RuntimeError("ReferenceError: kaleido_scopes is not defined")
        return b"\x89PNG fake"

    monkeypatch.setattr(export, "_kaleido", lambda: None)
    monkeypatch.setattr(go.Figure, "to_image", flaky)
    (png,) = export.save_figure(go.Figure(), tmp_path / "f", ("png",))
    assert png.read_bytes() == b"\x89PNG fake" and calls == ["png", "png"]

    def broken(self, **kwargs):
        raise RuntimeError("some other export failure")

    monkeypatch.setattr(go.Figure, "to_image", broken)
    with pytest.raises(RuntimeError, match="other export failure"):
        export.save_figure(go.Figure(), tmp_path / "g", ("png",))
