"""Sweep runner: config checks, resume, failures as rows, cost model, figures."""

import errno
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import msa_lab as ml
from msa_lab.bench import analysis, costs, sweep, timing
from msa_lab.bench.config import load_config, parse_config
from msa_lab.bench.store import ResultStore, load_results
from msa_lab.files import FolderLock, FolderLocked

ROOT = Path(__file__).parent.parent
TINY_GRID = dict(seq_len=[200, 333], batch=1, num_heads=4, num_kv_heads=2, head_dim=16, index_dim=8,
                 block_size=32, top_k=3, dtype="fp32")


def config(**changes):
    raw = dict(name="t", mode="prefill", device="cpu", repeats=2, max_seconds_per_point=0.2,
               grid=dict(TINY_GRID),
               methods=[{"method": "full", "backend": "sdpa"}, {"method": "msa", "backend": "reference"},
                        {"method": "moba", "backend": "reference"}, {"method": "random", "backend": "reference"}])
    raw.update(changes)
    return raw


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    monkeypatch.setattr(timing, "TARGET_SECONDS", 0.005)


@pytest.mark.parametrize("change, field", [
    (dict(repeat=3), "'repeat'; did you mean 'repeats'"),
    (dict(grid=dict(TINY_GRID, seqlen=[5])), "grid: unknown field 'seqlen'; did you mean 'seq_len'"),
    (dict(grid={k: v for k, v in TINY_GRID.items() if k != "top_k"}), "grid: missing field(s) top_k"),
    (dict(methods=[{"method": "nsa", "backend": "triton"}]), "methods[0].method"),
    (dict(methods=[{"method": "full", "backend": "flex"}]), "methods[0].backend (prefill full)"),
    (dict(methods=[{"method": "msa", "backend": "reference", "stage": True}]), "did you mean 'stages'"),
    (dict(mode="decode", methods=[{"method": "moba", "backend": "triton"}]), "methods[0].method"),
    (dict(grid=dict(TINY_GRID, num_kv_heads=3)), "not a multiple of num_kv_heads 3"),
    (dict(grid=dict(TINY_GRID, dtype="fp8")), "grid.dtype"),
    (dict(grid=dict(TINY_GRID, block_size=0)), "grid.block_size must be an int >= 1"),
    (dict(grid=dict(TINY_GRID, top_k=[])), "grid.top_k must not be an empty list"),
    (dict(cuda_graph=True), "cuda_graph"),
    (dict(methods=[{"method": "msa", "backend": "reference"}] * 2), "appears twice"),
    (dict(methods=[{"method": "oracle", "backend": "reference", "selection_backend": "triton"}]),
     "methods[0].selection_backend"),
    (dict(methods=[{"method": "moba", "backend": "reference", "per": "group"}]), "methods[0].per"),
    (dict(name="a b"), "name must be"),
    (dict(max_seconds_per_point=0), "max_seconds_per_point"),
    # impossible values are refused before any work (issue 14: block_size 100000 was accepted)
    (dict(grid=dict(TINY_GRID, block_size=100000)), "block_size 100000 is longer than seq_len 200"),
    (dict(grid=dict(TINY_GRID, top_k=8)), "top_k 8 is more than the 7 blocks of seq_len 200"),
    (dict(mode="coverage", grid=dict(TINY_GRID, rows=300), methods=[{"method": "msa", "backend": "reference"}]),
     "rows 300 (query rows measured) is more than seq_len 200"),
])
def test_bad_configs_fail_before_any_work_naming_the_field(change, field):
    with pytest.raises(ValueError) as err:
        parse_config(config(**change))
    assert field in str(err.value)


def test_device_checks(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda'"):
            parse_config(config(device="cuda"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"methods\[msa/triton\].*TRITON_INTERPRET=1"):
        parse_config(config(methods=[{"method": "msa", "backend": "triton"}]))
    with pytest.raises(ValueError, match="CUDA kernel"):
        parse_config(config(methods=[{"method": "full", "backend": "sdpa_cudnn"}]))
    # A GPU config can still be read (and listed) on a laptop.
    assert len(load_config(ROOT / "experiments/configs/prefill_1m.yaml", check_device=False).points) == 72


def test_grid_expansion_and_ignored_fields():
    cfg = parse_config(config(grid=dict(TINY_GRID, block_size=[32, 64], top_k=[2, 3])))
    by_method = {m: [p for p in cfg.points if p.method == m] for m in ("full", "msa", "moba")}
    assert len(by_method["full"]) == 2  # block size and top_k do not make new dense points
    assert by_method["full"][0].block_size is None and by_method["moba"][0].index_dim is None
    assert len(by_method["msa"]) == 2 * 2 * 2
    assert by_method["moba"][0].per == "head" and by_method["msa"][0].per == "group"
    assert len({p.point_id for p in cfg.points}) == len(cfg.points)


def test_every_shipped_config_is_valid():
    names = sorted(p.name for p in (ROOT / "experiments/configs").glob("*.yaml") if not p.name.startswith("train_"))
    assert {"tiny_cpu.yaml", "prefill_1m.yaml", "decode_1m.yaml", "block_topk_grid.yaml", "gqa_grid.yaml"} <= set(names)
    for name in names:
        assert load_config(ROOT / "experiments/configs" / name, check_device=False).points


REQUIRED = ("method", "backend", "batch", "seq_len", "num_heads", "num_kv_heads", "head_dim", "block_size",
            "top_k", "dtype", "gpu", "torch", "triton", "git_revision", "median_ms", "min_ms", "max_ms",
            "spread_pct", "repeats", "dense_equiv_flop", "useful_flop", "tflops_useful", "tflops_dense_equiv",
            "bound_ms", "pct_of_bound", "peak_mem_gb", "status", "stage")


def test_sweep_writes_tidy_rows_with_stages_and_resumes(tmp_path, fixed_ceilings):
    cfg = parse_config(config())
    path = sweep.run_sweep(cfg, tmp_path, progress=False)
    rows = load_results(path)
    totals = analysis.totals(rows)
    assert len(totals) == len(cfg.points) == 8
    for r in totals:
        assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["repeats"] >= 2
    stages = {(r["method"], r["stage"]) for r in rows if r["stage"] != "total"}
    assert {("msa", "selection"), ("msa", "attention"), ("moba", "selection"), ("random", "attention")} <= stages
    assert ("random", "selection") not in stages  # a given selection is not timed
    before = path.read_text()
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert path.read_text() == before  # nothing left to run
    sweep.run_sweep(cfg, tmp_path, progress=False, redo={"method": "msa", "seq_len": "200,999"})
    assert len(path.read_text().splitlines()) == len(before.splitlines()) + 3  # total + 2 stages
    assert len(analysis.totals(load_results(path))) == 8


def _interrupt_at_call(monkeypatch, n: int) -> list[str]:
    """Make ``sweep.run_point`` raise KeyboardInterrupt (Ctrl-C) on its ``n``-th call; returns
    the point ids it was called with."""
    real, calls = sweep.run_point, []

    def interrupted(p, *args):
        calls.append(p.point_id)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(p, *args)

    monkeypatch.setattr(sweep, "run_point", interrupted)
    return calls


def test_interrupted_sweep_keeps_finished_points(tmp_path, monkeypatch, fixed_ceilings):
    cfg = parse_config(config())
    real = sweep.run_point
    _interrupt_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path, progress=False)
    assert len(analysis.totals(load_results(tmp_path))) == 2
    monkeypatch.setattr(sweep, "run_point", real)
    sweep.run_sweep(cfg, tmp_path, progress=False)
    ids = [r["point_id"] for r in analysis.totals(load_results(tmp_path))]
    assert sorted(ids) == sorted(p.point_id for p in cfg.points)


def _triton_compile_error():
    import ast

    from triton.compiler.errors import CompilationError

    src = "def kernel(x):\n    tl.dot(x, x)\n"
    return CompilationError(src, ast.parse(src).body[0].body[0], "dot needs 2-D blocks")


def test_every_failure_of_a_point_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch, fixed_ceilings):
    # Issue 14: a Triton compile error, a MemoryError or a bug used to abort the sweep and every
    # resume at the same point, and a CPU out-of-memory was recorded as "error".
    from triton.runtime.errors import InterpreterError

    cfg = parse_config(config(grid=dict(TINY_GRID, seq_len=[200, 333, 400])))
    from msa_lab.bench.workloads import Workload

    def instant(p, device, seed):  # the points that do not fail: nothing to compute
        return Workload(lambda: None, lambda: {"attention": lambda: None})

    failures = {("msa", 333): torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 270.00 GiB"),
                ("moba", 200): ValueError("block_size must divide ..."),
                ("random", 200): KeyError("a bug"),
                ("msa", 200): MemoryError(),
                ("moba", 333): RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                            "allocate memory: you tried to allocate 2199023255552 bytes."),
                ("random", 333): _triton_compile_error(),
                ("moba", 400): InterpreterError("interpreted kernel raised IndexError")}

    def failing(p, device, seed):
        if (p.method, p.seq_len) in failures:
            raise failures[(p.method, p.seq_len)]
        return instant(p, device, seed)

    monkeypatch.setattr(sweep, "build_workload", failing)
    sweep.run_sweep(cfg, tmp_path, progress=False)
    rows = {(r["method"], r["seq_len"]): r for r in load_results(tmp_path) if r["stage"] == "total"}
    assert {key: rows[key]["status"] for key in failures} == {
        ("msa", 333): "oom", ("moba", 200): "unsupported", ("random", 200): "error", ("msa", 200): "oom",
        ("moba", 333): "oom", ("random", 333): "error", ("moba", 400): "error"}
    assert rows[("moba", 200)]["message"] == "ValueError: block_size must divide ..."
    assert rows[("random", 200)]["message"] == "KeyError: 'a bug'"
    assert rows[("random", 333)]["message"].startswith("CompilationError: at 2:4:")
    assert rows[("random", 333)]["message"].endswith("dot needs 2-D blocks")
    assert rows[("moba", 400)]["message"] == "InterpreterError: interpreted kernel raised IndexError"
    assert len(analysis.totals(load_results(tmp_path))) == len(cfg.points) - len(failures)
    sweep.run_sweep(cfg, tmp_path, progress=False)  # a resume does not retry them
    assert len(analysis.totals(load_results(tmp_path))) == len(cfg.points) - len(failures)
    monkeypatch.setattr(sweep, "build_workload", instant)
    sweep.run_sweep(cfg, tmp_path, progress=False, retry_failed=True)  # the failed points, again
    assert len(analysis.totals(load_results(tmp_path))) == len(cfg.points)


def test_a_stage_that_fails_makes_its_point_failed(tmp_path, monkeypatch, fixed_ceilings):
    cfg = parse_config(config(methods=[{"method": "msa", "backend": "reference"}], grid=dict(TINY_GRID, seq_len=200)))
    real = sweep.build_workload

    def out_of_memory():
        raise MemoryError

    def stages_fail(p, device, seed):
        workload = real(p, device, seed)
        workload.stages = out_of_memory
        return workload

    monkeypatch.setattr(sweep, "build_workload", stages_fail)
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert [(r["stage"], r["status"]) for r in load_results(tmp_path)] == [("total", "ok"), ("stages", "oom")]
    store = ResultStore(tmp_path / "results.jsonl")
    assert store.finished(retry_failed=True) == set()
    monkeypatch.setattr(sweep, "build_workload", real)
    sweep.run_sweep(cfg, tmp_path, progress=False, retry_failed=True)
    rows = load_results(tmp_path)
    stages = {r["stage"] for r in rows}
    assert stages >= {"total", "selection", "attention"} and "stages" not in stages
    assert all(r["status"] == "ok" for r in rows)


def test_max_seq_len_points_are_recorded_as_skipped(tmp_path, fixed_ceilings):
    cfg = parse_config(config(methods=[{"method": "full", "backend": "reference", "max_seq_len": 256}]))
    sweep.run_sweep(cfg, tmp_path, progress=False)
    rows = {r["seq_len"]: r for r in load_results(tmp_path)}
    assert rows[200]["status"] == "ok" and rows[333]["status"] == "skipped" and "max_seq_len" in rows[333]["message"]


def test_results_loader_skips_a_cut_line_and_keeps_the_latest_measurement(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.append(dict(point_id="a", stage="total", median_ms=2.0, status="ok"))
    store.append(dict(point_id="a", stage="attention", median_ms=1.0, status="ok"))
    store.append(dict(point_id="a", stage="total", median_ms=1.5, status="ok"))  # re-measured
    with store.path.open("a") as f:
        f.write('{"point_id": "b", "stage": "tot')  # interrupted write
    rows = load_results(tmp_path)
    assert rows == [dict(point_id="a", stage="total", median_ms=1.5, status="ok")]


def test_time_call_repeats(monkeypatch):
    fast = timing.time_call(lambda: None, "cpu", repeats=20, max_seconds=10)
    assert fast["repeats"] >= 20 and fast["timing"] == "wall clock"
    import time as _time

    slow = timing.time_call(lambda: _time.sleep(0.03), "cpu", repeats=20, max_seconds=0.05)
    assert slow["repeats"] == timing.MIN_REPEATS and slow["median_ms"] >= 30


@pytest.mark.parametrize("N, bs, K", [(333, 32, 3), (4096, 128, 16), (1000, 64, 1), (100, 128, 4)])
def test_cost_model_counts_the_tokens_selectors_really_select(N, bs, K):
    q, k = torch.randn(1, N, 4, 8), torch.randn(1, N, 2, 8)
    selections = [ml.select_moba(q, k, block_size=bs, top_k=K),
                  ml.select_msa(torch.randn(1, N, 2, 8), torch.randn(1, N, 1, 8), block_size=bs, top_k=K),
                  ml.select_random(q, k, block_size=bs, top_k=K), ml.select_window(q, k, block_size=bs, top_k=K),
                  ml.select_oracle(q, k, block_size=bs, top_k=K, force_local=True)]
    for sel in selections:
        rows = sel.indices.shape[0] * sel.indices.shape[1]
        assert sel.tokens_per_query().sum() == rows * costs.selected_tokens(N, bs, K)
        assert (sel.indices >= 0).sum() == rows * costs.selected_blocks(N, bs, K)


def test_cost_model_flops_follow_the_protocol():
    cfg = load_config(ROOT / "experiments/configs/prefill_1m.yaml", check_device=False)
    p = next(p for p in cfg.points if p.method == "msa" and p.backend == "triton" and p.seq_len == 1 << 20)
    full = next(p for p in cfg.points if p.method == "full" and p.seq_len == 1 << 20)
    N = 1 << 20
    assert costs.dense_equiv_flop(p) == 4 * 64 * 128 * N * N / 2
    stage = costs.stage_costs(p)
    index = 2 * 4 * 128 * N * N / 2
    assert stage["selection"].flop == index
    assert stage["attention"].flop == 4 * 64 * 128 * costs.selected_tokens(N, 128, 16)
    assert stage["total"].flop == index + stage["attention"].flop
    # the published compute ratio: dense / (attention + index) approaches 28.4x at 1M
    assert 27 < costs.dense_equiv_flop(full) / stage["total"].flop < 29
    ceilings = costs.Ceilings({"bf16": 700.0}, 4.0)
    bound, limit = ceilings.bound_ms(stage["merge"], "bf16")
    assert limit == "memory" and bound == pytest.approx(stage["merge"].bytes / 4e12 * 1e3)


def test_speedups_use_the_fastest_sdpa_backend():
    base = dict(gpu="g", mode="prefill", batch=1, seq_len=8, num_heads=4, num_kv_heads=2, head_dim=16,
                dtype="bf16", stage="total", status="ok")
    rows = [dict(base, method="full", backend="sdpa_cudnn", median_ms=10.0),
            dict(base, method="full", backend="sdpa_flash", median_ms=8.0),
            dict(base, method="full", backend="triton", median_ms=4.0),  # not a baseline
            dict(base, method="msa", backend="triton", median_ms=2.0),
            dict(base, method="msa", backend="triton", median_ms=1.0, seq_len=16)]  # no baseline there
    sped = {(r["backend"], r["seq_len"]): r for r in analysis.with_speedups(rows)}
    assert sped[("triton", 8)]["speedup"] == 4.0 and sped[("triton", 8)]["dense_backend"] == "sdpa_flash"
    assert "speedup" not in sped[("triton", 16)]


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = parse_config(config(methods=config()["methods"] + [{"method": "oracle", "backend": "reference"}]))
    timing.TARGET_SECONDS, saved = 0.005, timing.TARGET_SECONDS
    try:
        return sweep.run_sweep(cfg, out, progress=False)
    finally:
        timing.TARGET_SECONDS = saved


def test_figures_from_results(tiny_results, tmp_path):
    from msa_lab.viz import sweeps as figs

    rows = load_results(tiny_results)
    for fig in (figs.latency_figure(rows), figs.speedup_figure(rows), figs.throughput_figure(rows),
                figs.stage_figure(rows, "msa", "reference"), figs.roofline_figure(rows)):
        assert fig.data and fig.layout.template.layout.font.family  # the house style is applied
    assert {t.name for t in figs.latency_figure(rows).data} >= {"MSA · reference", "full · SDPA"}
    with pytest.raises(ValueError, match="no rows of mode 'decode'"):
        figs.latency_figure(rows, mode="decode")
    with pytest.raises(ValueError, match="no dense SDPA baseline"):
        figs.speedup_figure([r for r in rows if r["method"] != "full"])
    written = figs.write_sweep_figures(tiny_results, tmp_path / "figs")
    names = {p.name for p in written}
    assert {"prefill_latency.html", "prefill_speedup.html", "prefill_stages_msa_reference.html"} <= names
    assert (tmp_path / "figs" / "plotly.min.js").is_file()


def test_static_export(tiny_results, tmp_path):
    from msa_lab.viz.export import static_export_available
    from msa_lab.viz.sweeps import write_sweep_figures

    if not static_export_available():
        pytest.skip("needs kaleido and Chrome/Chromium")

    written = write_sweep_figures(tiny_results, tmp_path, formats=("png", "svg"))
    png = next(p for p in written if p.name == "prefill_latency.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert b"<svg" in next(p for p in written if p.suffix == ".svg").read_bytes()[:400]


def test_cli_sweep_dry_run_and_errors(tmp_path):
    cli = [sys.executable, "-m", "msa_lab.cli"]
    done = subprocess.run(cli + ["sweep", str(ROOT / "experiments/configs/tiny_cpu.yaml"), "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "14 points; the config is valid" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "experiments/configs/tiny_cpu.yaml").read_text().replace("top_k:", "topk:"))
    done = subprocess.run(cli + ["sweep", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown field 'topk'; did you mean 'top_k'" in done.stderr
    done = subprocess.run(cli + ["sweep", str(ROOT / "experiments/configs/tiny_cpu.yaml"), "--redo", "method"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr


# Edges that hold (issue 14): resume, redo, locking and writability. ``fake_points`` stands in
# for the measurement so that these tests check the bookkeeping alone, fast.

@pytest.fixture
def fixed_ceilings(monkeypatch):
    """Roofline ceilings given, not measured, and no garbage collection after each point:
    each takes seconds on a busy CPU."""
    ceilings = costs.Ceilings({"fp32": 1.0}, 1.0)
    monkeypatch.setattr(sweep, "measure_ceilings", lambda device, dtypes: ceilings)
    monkeypatch.setattr(sweep, "_free", lambda device: None)
    return ceilings


@pytest.fixture
def fake_points(monkeypatch, fixed_ceilings):
    """run_point without measuring (a total row, and an attention row for a sparse point);
    returns the ids of the points it was asked for."""
    calls = []
    timed = dict(median_ms=2.0, min_ms=1.0, max_ms=3.0, p25_ms=1.5, p75_ms=2.5, spread_pct=50.0, repeats=3,
                 timing="wall clock")

    def fake(p, config, base, _ceilings):
        calls.append(p.point_id)
        base = dict(base, point_id=p.point_id, **p.params)
        stages = ("total", "attention") if p.sparse else ("total",)
        return [sweep._row(base, p, stage, timed, fixed_ceilings, None) for stage in stages]

    monkeypatch.setattr(sweep, "run_point", fake)
    return calls


def test_a_cut_last_line_is_repaired_and_a_point_missing_rows_runs_again(tmp_path, fake_points, capsys):
    cfg = parse_config(config())
    path = sweep.run_sweep(cfg, tmp_path, progress=False)
    ids = sorted(p.point_id for p in cfg.points)
    lines = path.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])["point_id"]
    assert json.loads(lines[-2])["point_id"] == last  # its total row, then its stage row
    path.write_text("".join(lines[:-1]) + lines[-1][:40])  # killed in the middle of a write
    fake_points.clear()
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert fake_points == [last]  # the point with a row missing, and only it
    assert "cut a partial last line" in capsys.readouterr().out
    assert all(json.loads(line) for line in path.read_text().splitlines())  # nothing glued to a cut line
    assert sorted(r["point_id"] for r in analysis.totals(load_results(path))) == ids
    assert len(load_results(path)) == len(lines)
    # A point whose total row is on disk but not its stage row is not finished either.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    fake_points.clear()
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert fake_points == [last]


def test_an_interrupted_redo_resumes_with_the_points_it_has_not_redone(tmp_path, fake_points, monkeypatch, capsys):
    cfg = parse_config(config())
    sweep.run_sweep(cfg, tmp_path, progress=False)
    redone = sorted(p.point_id for p in cfg.points if p.method in ("msa", "moba"))
    redo = {"method": "msa,moba"}
    fake_points.clear()
    for _ in redone:  # a time limit that lets each call measure one point
        sweep.run_sweep(cfg, tmp_path, progress=False, redo=redo, max_minutes=1e-9)
    assert sorted(fake_points) == redone  # each call a new point, none twice
    out = capsys.readouterr().out
    assert out.count("run the same command again to resume") == len(redone) - 1
    assert "resuming the redo method=msa,moba: 1 of 4 matching points" in out
    assert not (tmp_path / "redo_pending.json").exists()  # finished: the next redo starts over
    assert len(analysis.totals(load_results(tmp_path))) == len(cfg.points)

    # Interrupted (Ctrl-C) after the first point of a new redo: the re-run does the other three.
    fake = sweep.run_point
    calls = _interrupt_at_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path, progress=False, redo=redo)
    monkeypatch.setattr(sweep, "run_point", fake)
    fake_points.clear()
    sweep.run_sweep(cfg, tmp_path, progress=False, redo=redo)
    assert sorted(fake_points + calls[:1]) == redone
    with pytest.raises(ValueError, match="redo: no point of the config matches seq_len=7"):
        sweep.run_sweep(cfg, tmp_path, progress=False, redo={"seq_len": 7})


def test_resume_counts_only_the_rows_of_this_gpu_device_and_seed(tmp_path, fake_points):
    cfg = parse_config(config())
    path = sweep.run_sweep(cfg, tmp_path, progress=False)
    fake_points.clear()
    sweep.run_sweep(parse_config(config(seed=1)), tmp_path, progress=False)
    assert len(fake_points) == len(cfg.points)  # another seed's rows are not this sweep's
    assert sorted(r["seed"] for r in analysis.totals(load_results(path))) == [0] * 8 + [1] * 8
    path.write_text(path.read_text().replace('"gpu": "none"', '"gpu": "NVIDIA H200"'))
    fake_points.clear()
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert len(fake_points) == len(cfg.points)  # nor another GPU's
    # Rows from before the seed, cuda_graph and attempt were recorded still count (as seed 0).
    old = "".join(json.dumps({k: v for k, v in json.loads(line).items()
                              if k not in ("seed", "cuda_graph", "attempt", "point_rows")}) + "\n"
                  for line in path.read_text().splitlines() if '"gpu": "none"' in line and '"seed": 0' in line)
    path.write_text(old)
    fake_points.clear()
    sweep.run_sweep(cfg, tmp_path, progress=False)
    assert fake_points == []


def test_committed_results_load_with_every_row_and_resume_as_finished():
    # Rows written before seed, cuda_graph and attempt were recorded: every row still loads,
    # and a resume of the committed folder on its GPU would find every point of its config done.
    for path in sorted((ROOT / "experiments/results/sweeps").glob("*/results.jsonl")):
        keys = {(r["gpu"], r["point_id"], r["stage"]) for r in map(json.loads, path.read_text().splitlines())}
        rows = load_results(path)
        assert sorted((r["gpu"], r["point_id"], r["stage"]) for r in rows) == sorted(keys), path
        cfg = load_config(path.parent / "config.yaml", check_device=False)
        done = ResultStore(path).finished(gpu=rows[0]["gpu"], device=cfg.device, seed=cfg.seed)
        assert done == {p.point_id for p in cfg.points}, path


def test_a_second_sweep_on_a_folder_in_use_fails_before_any_work(tmp_path, fake_points):
    with FolderLock(tmp_path, "a test"):
        with pytest.raises(FolderLocked, match="in use by another process"):
            sweep.run_sweep(parse_config(config()), tmp_path, progress=False)
    assert fake_points == []
    sweep.run_sweep(parse_config(config()), tmp_path, progress=False)  # free again once released
    assert len(fake_points) == 8


def test_a_read_only_results_file_fails_before_any_work(tmp_path, fake_points, monkeypatch):
    # The tests may run as root, which a chmod does not stop: the refusal is simulated.
    (tmp_path / "results.jsonl").write_text("")
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith("results.jsonl") and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError, match="cannot write to .*results.jsonl"):
        sweep.run_sweep(parse_config(config()), tmp_path, progress=False)
    assert fake_points == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_fails_before_any_work(tmp_path, fake_points):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot write to"):
            sweep.run_sweep(parse_config(config()), out, progress=False)
    finally:
        out.chmod(0o755)
    assert fake_points == []


def test_figure_names_from_crafted_rows_stay_inside_out(tiny_results, tmp_path):
    # Issue 14 (security): method/backend values of results.jsonl became file names, so
    # "x/../../ESCAPED" wrote outside --out.
    from msa_lab.viz.sweeps import write_sweep_figures

    crafted = tmp_path / "crafted" / "results.jsonl"
    crafted.parent.mkdir()
    rows = [json.loads(line) for line in tiny_results.read_text().splitlines()]
    for r in rows:
        if r["method"] == "msa":
            r.update(method="x/../../ESCAPED", backend="../../../BACK")
    crafted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "a" / "b" / "out"
    written = write_sweep_figures(crafted, out)
    everything = [p for p in tmp_path.rglob("*") if p.is_file() and "crafted" not in p.parts]
    assert everything and all(p.resolve().is_relative_to(out.resolve()) for p in everything)
    assert set(written) <= set(everything)
    assert out / "prefill_stages_x_______ESCAPED__________BACK.html" in written


def test_cli_sweep_hint_runs_and_errors_are_one_line(tmp_path, capsys, fake_points):
    from msa_lab.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text((ROOT / "experiments/configs/tiny_cpu.yaml").read_text())
    out = tmp_path / "my sweeps" / "tiny"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("draw them with: "))
    command = shlex.split(hint.removeprefix("draw them with: ").split(" (writes ")[0])
    assert command[:2] == ["msa-lab", "figures"]
    assert main(command[1:]) == 0  # the printed hint works as printed
    assert (out / "figures" / "prefill_latency.html").is_file()
    with FolderLock(out, "a test"), pytest.raises(SystemExit) as err:
        main(["sweep", str(cfg), "--out", str(out), "--quiet"])
    assert err.value.code == 2 and "is in use by another process" in capsys.readouterr().err
    for args, message in [(["figures", str(out), str(out)], "--out: give a folder for the figures of several"),
                          (["figures", str(tmp_path / "nowhere")], "no results file at"),
                          (["sweep", str(cfg), "--out", str(out), "--max-minutes", "nan"], "max_minutes must be"),
                          (["sweep", str(cfg), "--out", str(out / "results.jsonl")], "results.jsonl")]:
        with pytest.raises(SystemExit) as err:
            main(args)
        text = capsys.readouterr().err
        assert err.value.code == 2 and message in text and text.count("\n") == 1, (args, text)
