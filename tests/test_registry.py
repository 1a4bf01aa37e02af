"""The selector registry: every row runs through the uniform call and each consumer that
iterates the table, and what a sweep config may say about a selector is what its row says."""

import pytest
import torch

import msa_lab as ml
from msa_lab.bench.config import BACKENDS, parse_config
from msa_lab.bench.workloads import build_workload
from msa_lab.select.registry import SELECTORS, get_selector, selectors
from msa_lab.viz.theme import METHOD_COLORS


def _qkv(N=96, Hq=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, N, h, D, generator=g) for h in (Hq, Hkv, Hkv))


@pytest.mark.parametrize("name", list(SELECTORS))
def test_each_selector_gives_a_valid_selection_that_attention_and_coverage_take(name):
    q, k, v = _qkv()
    s = get_selector(name)
    sel = s.select(q, k, block_size=16, top_k=3, seed=1)
    ml.BlockSelection(sel.indices, sel.block_size, sel.per)  # validates ids, causality, no repeats
    assert sel.per == s.default_per() and sel.top_k == 3
    out = ml.block_sparse_attention(q, k, v, sel)
    assert torch.isfinite(out).all()
    if not s.synthetic:
        report = ml.coverage(q, k, sel)
        assert 0 <= report.summary()["recall"]["mean"] <= 1 + 1e-6


def test_the_table_feeds_configs_colours_and_layers():
    for s in selectors(synthetic=None):
        assert s.name in BACKENDS["prefill"] and s.name in METHOD_COLORS
        assert (s.name in BACKENDS["coverage"]) == (not s.synthetic)
        assert s.per in ("group", "head", "either") and s.inputs in ("qk", "index")
        assert (s.scoring is not None) == s.timed  # the cost model prices every timed selection
    from msa_lab.nn.attention import METHODS

    assert set(METHODS) == {"full", *(s.name for s in selectors())}


def test_selector_call_checks_names_options_per_and_backend():
    q, k, _ = _qkv()
    with pytest.raises(ValueError, match="unknown selector 'mosa'; registered: msa, moba"):
        get_selector("mosa")
    with pytest.raises(ValueError, match=r"takes no option\(s\) pooling \(its options: force_local\)"):
        SELECTORS["oracle"].select(q, k, block_size=16, top_k=2, pooling="max")
    with pytest.raises(ValueError, match="selects per head; got per='group'"):
        SELECTORS["moba"].select(q, k, block_size=16, top_k=2, per="group")
    with pytest.raises(ValueError, match="has backends 'reference'"):
        SELECTORS["window"].select(q, k, block_size=16, top_k=2, backend="triton")


def test_registry_calls_match_the_public_functions():
    q, k, _ = _qkv(seed=3)
    kw = dict(block_size=16, top_k=3)
    assert SELECTORS["msa"].select(q, k, **kw).equals(ml.select_msa(*ml.index_from_qk(q, k), **kw))
    assert SELECTORS["moba"].select(q, k, **kw).equals(ml.select_moba(q, k, **kw))
    assert SELECTORS["oracle"].select(q, k, **kw).equals(ml.select_oracle(q, k, **kw, force_local=True))
    assert SELECTORS["oracle"].select(q, k, **kw, force_local=False).equals(ml.select_oracle(q, k, **kw))
    assert SELECTORS["random"].select(q, k, **kw, per="head", seed=5).equals(
        ml.select_random(q, k, **kw, per="head", seed=5))
    assert SELECTORS["quest"].select(q, k, **kw).equals(ml.select_quest(q, k, **kw))
    assert SELECTORS["window"].select(q, k, **kw, sink_blocks=1).equals(ml.select_window(q, k, **kw, sink_blocks=1))


@pytest.mark.parametrize("per", ["group", "head"])
def test_msa_ablations_through_the_registry(per):
    q, k, _ = _qkv(seed=4)
    kw = dict(block_size=16, top_k=3)
    got = SELECTORS["msa"].select(q, k, **kw, per=per, pooling="lse", sink_blocks=1)
    want = ml.select_msa(*ml.index_from_qk(q, k, per), **kw, pooling="lse", per=per, sink_blocks=1)
    assert got.equals(want) and got.per == per
    assert not got.equals(SELECTORS["msa"].select(q, k, **kw, per=per))  # the options reached select_msa


GRID = dict(seq_len=128, batch=1, num_heads=4, num_kv_heads=2, head_dim=16, block_size=32, top_k=2, dtype="fp32")


def test_sweep_options_reach_the_selector_and_keep_old_point_ids():
    raw = dict(name="t", mode="prefill", device="cpu", grid=GRID, methods=[
        dict(method="oracle", backend="reference"),
        dict(method="oracle", backend="reference", options=dict(force_local=True)),  # the default: same point
        dict(method="oracle", backend="reference", options=dict(force_local=False))])
    with pytest.raises(ValueError, match="appears twice"):
        parse_config(raw)
    raw["methods"].pop(1)
    plain, unforced = parse_config(raw).points
    assert "options" not in plain.params and unforced.params["options"] == "force_local=False"
    forced, free = (build_workload(p, "cpu", 0).selection for p in (plain, unforced))
    own = torch.arange(128) // 32
    assert (forced.indices[0, :, :, 0] == own).all()  # the local-block rule: slot 0 is the own block
    assert not free.equals(forced)  # the option reached the selector


@pytest.mark.parametrize("options, message", [
    (dict(force_lokal=True), "unknown field 'force_lokal'; did you mean 'force_local'"),
    (dict(force_local=1), "must be a bool like its default True, got 1"),
    ([], "must be a mapping of the selector's options"),
])
def test_bad_sweep_options_are_refused_before_any_work(options, message):
    raw = dict(name="t", mode="prefill", device="cpu", grid=GRID,
               methods=[dict(method="oracle", backend="reference", options=options)])
    with pytest.raises(ValueError, match=message):
        parse_config(raw)
    with pytest.raises(ValueError, match="full attention takes no options"):
        parse_config(dict(raw, methods=[dict(method="full", backend="reference", options=dict(x=1))]))


@pytest.mark.parametrize("backend", ["flex", "triton", "triton_q_outer"])
@pytest.mark.parametrize("name", [s.name for s in selectors()])
def test_each_selector_runs_through_every_attention_backend(name, backend):
    """The fast attention paths agree with the reference on every registered selector's selection
    (fp32, the Triton kernels interpreted on the CPU; N not a multiple of the block)."""
    q, k, v = _qkv(N=77, seed=7)
    sel = SELECTORS[name].select(q, k, block_size=16, top_k=3, seed=2)
    ref = ml.block_sparse_attention(q, k, v, sel)
    out = ml.block_sparse_attention(q, k, v, sel, backend=backend)
    assert torch.isfinite(out).all() and ml.output_error(out, ref) < 1e-4


@pytest.mark.parametrize("method", ["quest", "window"])
def test_the_training_runner_trains_a_registered_selector(method, tmp_path):
    from msa_lab.train import run_training

    raw = dict(name="tiny", device="cpu", seed=3,
               model=dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, method=method,
                          full_layers=[0], block_size=16, top_k=2, backend="reference"),
               task=dict(name="mqar", seq_len=64, options=dict(num_pairs=4)),
               train=dict(steps=3, batch=2, lr=3e-3, lr_warmup=1, log_every=1, checkpoint_every=3, eval_every=3),
               eval=dict(seq_lens=[64], batches=1))
    import json

    summary = json.loads((run_training(raw, tmp_path, progress=False) / "summary.json").read_text())
    assert summary["method"] == method and summary["final_loss"] == summary["final_loss"]  # trained, no NaN


def test_sweep_options_are_checked_at_each_grid_cells_top_k():
    raw = dict(name="t", mode="prefill", device="cpu", grid=dict(GRID, top_k=[2, 4]),
               methods=[dict(method="window", backend="reference", options=dict(sink_blocks=3))])
    with pytest.raises(ValueError, match=r"methods\[0\].options: sink_blocks must be an int in \[0, top_k - 1\] = \[0, 1\]"):
        parse_config(raw)
    raw["grid"]["top_k"] = [4]
    assert len(parse_config(raw).points) == 1
    # a value valid only past the checker's default top_k of 64
    raw["grid"] = dict(GRID, seq_len=4096, block_size=16, top_k=128)
    raw["methods"][0]["options"] = dict(sink_blocks=100)
    assert parse_config(raw).points[0].params["options"] == "sink_blocks=100"
