"""The benchmark protocol's pieces: what every row records, warm-up, same-process ratios,
the structured and tile-coherent selections of a prefill sweep, decode timed both ways."""

import torch

from msa_lab.bench import gpu_environment
from msa_lab.bench.analysis import with_speedups
from msa_lab.bench.config import parse_config
from msa_lab.bench.results import PROCESS_ID, package_hash
from msa_lab.bench.timing import WARMUP_CALLS, time_call
from msa_lab.bench.workloads import build_workload


def _config(methods, mode="prefill", **grid):
    base = dict(seq_len=300, batch=1, num_heads=4, num_kv_heads=2, head_dim=16, block_size=32, top_k=4,
                dtype="fp32")
    return parse_config(dict(name="t", mode=mode, device="cpu", grid=dict(base, **grid), methods=methods))


def test_rows_record_the_process_the_package_hash_and_cudnn():
    env = gpu_environment()
    assert env["process"] == PROCESS_ID and len(PROCESS_ID) == 12
    assert env["package_hash"] == package_hash() and len(env["package_hash"]) == 16
    assert "cudnn" in env


def test_package_hash_changes_with_the_code(tmp_path, monkeypatch):
    import msa_lab.environment as environment

    before = package_hash()
    fake = tmp_path / "msa_lab" / "bench"
    fake.mkdir(parents=True)
    (tmp_path / "msa_lab" / "a.py").write_text("x = 1\n")
    (fake / "b.py").write_text("y = 1\n")
    monkeypatch.setattr(environment, "__file__", str(tmp_path / "msa_lab" / "environment.py"))
    one = package_hash()
    (tmp_path / "msa_lab" / "a.py").write_text("x = 2\n")
    two = package_hash()
    assert two not in (one, before)
    (fake / "b.py").write_text("y = 2\n")  # a subpackage's files count too
    assert package_hash() not in (one, two, before)


def test_time_call_warms_up_three_times_before_timing():
    calls = []
    t = time_call(lambda: calls.append(1), "cpu", repeats=5, max_seconds=1.0)
    assert t["warmup"] == WARMUP_CALLS == 3
    assert len(calls) == WARMUP_CALLS + t["repeats"]


def _row(process, revision, method, ms):
    return dict(stage="total", status="ok", gpu="g", process=process, git_revision=revision, mode="prefill",
                batch=1, seq_len=1024, num_heads=4, num_kv_heads=2, head_dim=16, dtype="bf16", method=method,
                backend="sdpa_cudnn" if method == "full" else "triton", median_ms=ms)


def test_a_ratio_pairs_only_timings_of_one_process():
    rows = [_row("a", "r1", "full", 100.0), _row("a", "r1", "msa", 10.0), _row("b", "r1", "msa", 5.0)]
    speed = {r["process"]: r.get("speedup") for r in with_speedups(rows) if r["method"] == "msa"}
    assert speed == {"a": 10.0, "b": None}


def test_rows_without_a_process_pair_only_within_one_revision():
    rows = [_row(None, "r1", "full", 100.0), _row(None, "r1", "msa", 10.0), _row(None, "r2", "moba", 20.0)]
    speed = {r["method"]: r.get("speedup") for r in with_speedups(rows)}
    assert speed == {"full": 1.0, "msa": 10.0, "moba": None}


def test_tile_coherent_selection_is_shared_by_every_query_of_a_tile():
    (p,) = _config([{"method": "coherent", "backend": "reference"}]).points
    sel = build_workload(p, "cpu", seed=3).selection
    ids = sel.indices  # [B, Hs, N, K]
    for tile in range(0, 300, 32):
        rows = ids[:, :, tile:tile + 32]
        assert (rows == rows[:, :, :1]).all()
    own = torch.arange(300) // 32
    assert (ids[0, :, :, 0] == own).all()  # the own block in slot 0, as select_top_blocks puts it
    assert not (ids[:, :, 64:96] == ids[:, :, 96:128]).all()  # tiles draw their blocks apart


def test_structured_selection_is_msa_on_generated_data():
    import msa_lab as ml
    from msa_lab.data import structured_qkv

    (p,) = _config([{"method": "structured", "backend": "reference"}]).points
    sel = build_workload(p, "cpu", seed=5).selection
    data = structured_qkv(batch=1, seq_len=300, num_heads=4, num_kv_heads=2, head_dim=16, seed=5)
    expected = ml.select_msa(*ml.index_from_qk(data.q, data.k), block_size=32, top_k=4)
    assert sel.per == "group" and sel.equals(expected)


def test_decode_points_are_timed_per_call_and_with_graphs_as_separate_points():
    cfg = parse_config(dict(name="t", mode="decode", device="cuda", grid=dict(
        seq_len=1024, batch=2, num_heads=4, num_kv_heads=2, head_dim=16, block_size=32, top_k=4, dtype="bf16"),
        methods=[{"method": "msa", "backend": "triton", "cuda_graph": False},
                 {"method": "msa", "backend": "triton", "cuda_graph": True}]), check_device=False)
    a, b = cfg.points
    assert (a.cuda_graph, b.cuda_graph) == (False, True) and a.point_id != b.point_id
    assert a.params["per_call"] is True and "per_call" not in b.params  # graph points keep their old ids
