"""The coverage explorer: widgets drive in-place figure updates; its numbers are coverage()'s."""

import pytest
import torch

import msa_lab as ml
from msa_lab.data import structured_qkv
from msa_lab.viz.explorer import CoverageExplorer, rows_block_map


@pytest.fixture(scope="module")
def explorer():
    return CoverageExplorer(seq_lens=(1000, 2048), block_sizes=(64, 128), num_heads=4, num_kv_heads=2,
                            head_dim=32, rows=200, top_k=4)


def test_widgets_update_the_figures_in_place(explorer):
    heat, hist, summary = explorer.map.data[0], explorer.hist.data[0], explorer.summary.value
    z0, x0 = heat.z, hist.x
    explorer.top_k.value = 2
    assert explorer.map.data[0] is heat and explorer.hist.data[0] is hist  # same traces, new data
    assert heat.z != z0 and hist.x != x0 and explorer.summary.value != summary
    for name, value in (("method", "moba"), ("head", 3), ("block_size", 64), ("seq_len", 2048),
                        ("pattern", "needle"), ("method", "window"), ("method", "oracle"), ("method", "random")):
        before = explorer.summary.value
        getattr(explorer, name).value = value
        assert explorer.summary.value != before, name
    explorer.method.value = "oracle"
    report = explorer.report()  # the oracle is its own best: same group recall, full overlap
    group = report.recall.unflatten(1, (2, 2)).sum(2)
    assert torch.allclose(group, report.oracle_recall.unflatten(1, (2, 2)).sum(2), atol=1e-6)
    assert "vs oracle 1.000" in explorer.summary.value


@pytest.mark.parametrize("method", ["msa", "moba", "window"])
def test_explorer_numbers_equal_coverage_on_the_same_rows(explorer, method):
    explorer.seq_len.value, explorer.pattern.value, explorer.block_size.value = 1000, "mixed", 64
    explorer.top_k.value, explorer.method.value = 3, method
    got = explorer.report()
    data = structured_qkv(seq_len=1000, num_heads=4, num_kv_heads=2, head_dim=32, patterns="mixed", seed=0)
    if method == "msa":
        sel = ml.select_msa(*ml.index_from_qk(data.q, data.k), block_size=64, top_k=3)
    elif method == "moba":
        sel = ml.select_moba(data.q, data.k, block_size=64, top_k=3)
    else:
        sel = ml.select_window(data.q, data.k, block_size=64, top_k=3)
    ref = ml.coverage(data.q, data.k, sel, rows=got.positions)
    assert torch.allclose(got.recall, ref.recall, atol=1e-5)
    assert torch.allclose(got.oracle_recall, ref.oracle_recall, atol=1e-5)
    assert torch.allclose(got.overlap, ref.overlap)


def test_rows_block_map_aggregates_long_selections():
    sel = ml.select_window(torch.randn(1, 5000, 2, 16), torch.randn(1, 5000, 1, 16), block_size=10, top_k=3)
    full = sel.block_map(max_elements=1 << 30)[0, 0]
    share, per_bin = rows_block_map(sel.indices[0, 0], torch.arange(5000), 10, 500, cells=500)
    assert per_bin == 1 and torch.allclose(share, full)
    coarse, per_bin = rows_block_map(sel.indices[0, 0], torch.arange(5000), 10, 500, cells=64)
    assert per_bin == 8 and coarse.shape == (63, 63) and coarse.max() <= 1
    assert torch.allclose(coarse.diagonal(), torch.ones(63))  # every row selects its own bin


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="patterns"):
        CoverageExplorer(patterns=("spiral",))
    with pytest.raises(ValueError, match="rows"):
        CoverageExplorer(rows=0)


def test_the_explorer_names_its_histograms_and_greys_future_blocks(explorer):
    explorer.method.value, explorer.seq_len.value, explorer.block_size.value = "moba", 1000, 64
    assert [(t.name, t.showlegend) for t in explorer.hist.data] == [("MoBA", True), ("oracle (best possible)", True)]
    share, future = explorer.map.data[0].z, explorer.map.data[2].z
    assert len(future) == len(share) == 16
    assert all((future[q][k] is None) == (k <= q) for q in range(16) for k in range(16))
    assert explorer.map.data[3].name == "future blocks (causally masked)"


@pytest.mark.parametrize("method,text,options", [("msa", "pooling=lse, sink_blocks=1", dict(pooling="lse", sink_blocks=1)),
                                                 ("window", "sink_blocks=2", dict(sink_blocks=2))])
def test_explorer_options_are_the_selectors_ablations(explorer, method, text, options):
    explorer.seq_len.value, explorer.pattern.value, explorer.block_size.value = 1000, "mixed", 64
    explorer.top_k.value, explorer.method.value = 4, method
    explorer.options.value = text
    try:
        got = explorer.report()
        assert f"({text})" in explorer.summary.value and f"({text})" in explorer.hist.data[0].name
    finally:
        explorer.options.value = ""
    data = structured_qkv(seq_len=1000, num_heads=4, num_kv_heads=2, head_dim=32, patterns="mixed", seed=0)
    sel = ml.select_msa(*ml.index_from_qk(data.q, data.k), block_size=64, top_k=4, **options) if method == "msa" \
        else ml.select_window(data.q, data.k, block_size=64, top_k=4, **options)
    ref = ml.coverage(data.q, data.k, sel, rows=got.positions)
    assert torch.allclose(got.recall, ref.recall, atol=1e-5)
    assert not torch.allclose(got.recall, explorer.report().recall)  # the defaults select otherwise


def test_bad_explorer_options_are_said_in_the_summary_not_raised(explorer):
    explorer.method.value = "msa"
    for text, said in (("pooling=softmax", "pooling must be"), ("poolng=lse", "did you mean 'pooling'"),
                       ("sink_blocks=one", "options.sink_blocks must be an int"), ("pooling", "name=value")):
        explorer.options.value = text
        assert said in explorer.summary.value, text
    explorer.options.value = ""
    assert "recall mean" in explorer.summary.value
