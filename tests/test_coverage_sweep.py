"""Coverage sweeps (mode: coverage), their figures, the paper theme and the paper figures."""

import shutil
import subprocess
import sys

import pytest

from msa_lab.bench import sweep
from msa_lab.bench.config import parse_config
from msa_lab.bench.store import load_results
from msa_lab.viz import coverage_sweeps as cov
from msa_lab.viz.export import export_figure, paper_figure, static_export_available

GRID = dict(seq_len=[384, 512], batch=1, num_heads=4, num_kv_heads=2, head_dim=16, block_size=32,
            top_k=[2, 4], dtype="fp32", pattern=["mixed", "needle"], rows=48)
METHODS = [{"method": m, "backend": "reference"} for m in ("msa", "moba", "oracle", "window", "random")]
BUDGET = [{"method": "msa", "backend": "reference", "grid": {"block_size": bs, "top_k": k, "seq_len": 512,
                                                              "pattern": "mixed"}}
          for bs, k in ((16, 8), (64, 2))]


def config(**changes):
    raw = dict(name="cov", mode="coverage", device="cpu", grid=dict(GRID), methods=METHODS + BUDGET)
    raw.update(changes)
    return raw


@pytest.mark.parametrize("change, field", [
    (dict(grid=dict(GRID, pattern="needles")), "grid.pattern"),
    (dict(grid=dict(GRID, rows=0)), "grid.rows"),
    (dict(methods=[{"method": "full", "backend": "reference"}]), "methods[0].method"),
    (dict(methods=[{"method": "msa", "backend": "triton"}]), "methods[0].backend"),
    (dict(methods=[{"method": "msa", "backend": "reference", "selection_backend": "triton"}]),
     "methods[0].selection_backend"),
    (dict(mode="prefill", methods=[{"method": "msa", "backend": "reference"}]), "only apply to mode: coverage"),
])
def test_bad_coverage_configs_name_the_field(change, field):
    with pytest.raises(ValueError) as err:
        parse_config(config(**change))
    assert field in str(err.value)


def test_coverage_points_carry_pattern_and_rows_and_msa_reads_no_index_dim():
    cfg = parse_config(config())
    assert len(cfg.points) == 5 * 2 * 2 * 2 + 2
    p = next(p for p in cfg.points if p.method == "msa")
    assert p.params["pattern"] in ("mixed", "needle") and p.params["rows"] == 48 and p.index_dim is None
    timed = parse_config(dict(config(mode="prefill", methods=METHODS[:1]),
                              grid={k: v for k, v in GRID.items() if k not in ("pattern", "rows")}))
    assert "pattern" not in timed.points[0].params  # ids of timing points do not change


@pytest.fixture(scope="module")
def coverage_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("coverage")
    sweep.run_sweep(parse_config(config()), out, progress=False)
    return out


def test_coverage_sweep_rows_are_bounded_and_ordered_and_resume(coverage_results):
    rows = load_results(coverage_results)
    assert len(rows) == 42 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 0 < r["recall_mean"] <= 1 + 1e-6 and r["rows_measured"] == 48
        # coverage's oracle is the best selection of the same budget: nothing beats it
        assert r["recall_vs_oracle_mean"] <= 1 + 1e-5
        assert len(r["recall_by_head"]) == 4 and len(r["recall_by_group"]) == 2
        labels, recall, share = r["recall_by_distance"]
        assert len(labels) == len(recall) == len(share) and abs(sum(share) - 1) < 1e-6
    cell = {r["method"]: r for r in rows if (r["seq_len"], r["top_k"], r["pattern"], r["block_size"])
            == (512, 4, "needle", 32)}
    assert cell["oracle"]["recall_mean"] > cell["random"]["recall_mean"]
    assert cell["window"]["recall_by_distance"][1][:3] == [1.0, 1.0, 1.0]  # distances 0-3 kept
    again = sweep.run_sweep(parse_config(config()), coverage_results, progress=False)
    assert len(load_results(again)) == 42  # nothing re-measured


def test_coverage_figures(coverage_results, tmp_path):
    rows = load_results(coverage_results)
    fig = cov.recall_figure(rows, "top_k")
    assert len({t.xaxis for t in fig.data}) == 2  # a panel per pattern
    assert {t.name for t in fig.data} == {"oracle", "MSA", "MoBA", "sliding window", "random"}
    budget = cov.budget_figure(rows)
    assert "128 tokens per query" in budget.layout.title.text
    assert list(next(t for t in budget.data if t.name == "MSA").x) == [16, 32, 64]
    with pytest.raises(ValueError, match="budget: no two block sizes"):
        cov.budget_figure(rows, budget=96)
    with pytest.raises(ValueError, match="x must be one of"):
        cov.recall_figure(rows, "blocks")
    assert cov.coverage_distance_figure(rows).layout.xaxis.type == "category"
    with pytest.raises(ValueError, match="no finished coverage rows"):
        cov.head_figure([])
    from msa_lab.viz.sweeps import write_sweep_figures

    names = {p.name for p in write_sweep_figures(coverage_results, tmp_path)}
    assert {"coverage_recall_mean_vs_top_k.html", "coverage_budget_recall_mean.html",
            "coverage_by_distance.html", "coverage_by_head.html"} <= names


def test_paper_theme_sizes_and_errors(coverage_results):
    fig = cov.recall_figure(load_results(coverage_results), "top_k")
    single, double = paper_figure(fig), paper_figure(fig, "double", 2.5)
    assert (single.layout.width, single.layout.height) == (336, round(0.7 * 3.5 * 96))
    assert (double.layout.width, double.layout.height) == (672, 240)
    assert single.layout.title.text is None and single.layout.font.size == 12  # 9 pt
    assert fig.layout.title.text  # the original is untouched
    with pytest.raises(ValueError, match="width must be one of"):
        paper_figure(fig, "wide")
    with pytest.raises(ValueError, match="height must be inches"):
        paper_figure(fig, height=40)
    with pytest.raises(ValueError, match="dpi must be"):
        export_figure(fig, "x", dpi=10)


@pytest.mark.skipif(not static_export_available(), reason="needs kaleido and Chrome/Chromium")
def test_export_figure_writes_png_svg_pdf_at_column_size(coverage_results, tmp_path):
    fig = cov.budget_figure(load_results(coverage_results))
    png, svg, pdf = export_figure(fig, tmp_path / "budget", width="single", dpi=192)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png.read_bytes()[16:20], "big")
    assert width == 336 * 2  # 3.5 in at 192 dpi
    assert b'width="336"' in svg.read_bytes()[:300]
    assert b"/MediaBox [0 0 252" in pdf.read_bytes()  # 3.5 in = 252 pt


def test_paper_figures_cli_rebuilds_from_results(coverage_results, tmp_path):
    """The paper figures read the results folder given; the coverage ones only need a
    coverage sweep, so a tiny one stands in for the committed results."""
    root = tmp_path / "sweeps"
    root.mkdir()
    shutil.copytree(coverage_results, root / "coverage_cpu")
    out = tmp_path / "paper"
    cli = [sys.executable, "-m", "msa_lab.cli", "figures", "--out", str(out), "--results-dir", str(root),
           "--format", "html", "--quiet", "--only", "coverage_recall_vs_top_k", "coverage_equal_budget"]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "coverage_equal_budget.html").is_file() and (out / "coverage_recall_vs_top_k.html").is_file()
    index = (out / "figures.md").read_text()
    assert "`coverage_cpu` (CPU)" in index and "equal budget" in index
    # redrawing one figure keeps the other rows of figures.md
    done = subprocess.run(cli[:-1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "figures.md").read_text() == index
    done = subprocess.run(cli[:-2] + ["coverage_recal"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown figure(s) coverage_recal" in done.stderr
    done = subprocess.run(cli[:4] + [str(coverage_results), "--only", "x"], capture_output=True, text=True)
    assert done.returncode == 2 and "--only and --results-dir are for the paper figures" in done.stderr


def test_every_paper_figure_draws_from_the_committed_results():
    from msa_lab.viz.paper import PAPER_FIGURES, draw_paper_figures

    drawn = {spec.name: (fig, source) for spec, fig, source in draw_paper_figures(progress=False)}
    assert set(drawn) == {f.name for f in PAPER_FIGURES}
    for name, (fig, source) in drawn.items():
        assert fig.data, name
        assert "NVIDIA H200" in source or "CPU" in source or "generated" in source, source
