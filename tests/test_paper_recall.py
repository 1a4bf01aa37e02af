"""The MSA paper's block recall and score recall (Sec. 5.2) in ``ml.coverage`` against an
independent brute force: a dense float64 causal softmax, block masses by summing columns,
``I*`` by an exhaustive sort (mass descending, ties to the lower block id, no block forced)
and set intersections in Python."""

import math
import sys

import pytest
import torch

import msa_lab as ml
from msa_lab.bench.config import parse_config
from msa_lab.bench.workloads import measure_coverage
from msa_lab.coverage import CoverageReport
from conftest import causal_mask


def dense_block_mass(q, k, block_size):
    """``[B, Hq, N, nb]`` float64: the dense causal softmax, summed over each block's columns."""
    G = q.shape[2] // k.shape[2]
    s = torch.einsum("bthd,bjhd->bhtj", q.double(), k.double().repeat_interleave(G, 2)) * q.shape[-1] ** -0.5
    p = s.masked_fill(~causal_mask(q.shape[1]), float("-inf")).softmax(-1)
    N = q.shape[1]
    return torch.stack([p[..., b:b + block_size].sum(-1) for b in range(0, N, block_size)], -1)


def brute_force_recalls(mass, sel, group_size):
    """``(block recall, score recall)`` ``[B, Hq, N]`` float64, one row at a time."""
    B, Hq, N, nb = mass.shape
    bs, top_k = sel.block_size, sel.top_k
    block = torch.empty(B, Hq, N, dtype=torch.float64)
    score = torch.empty(B, Hq, N, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            row_head = h // group_size if sel.per == "group" else h
            for t in range(N):
                P = mass[b, h, t].tolist()
                visible = range(t // bs + 1)
                best = set(sorted(visible, key=lambda j: (-P[j], j))[:top_k])
                chosen = {int(i) for i in sel.indices[b, row_head, t].tolist() if i >= 0}
                both = best & chosen
                block[b, h, t] = len(both) / len(best)
                score[b, h, t] = sum(P[j] for j in both) / sum(P[j] for j in best)
    return block, score


def selections(q, k, bs, top_k):
    budget = dict(block_size=bs, top_k=top_k)
    msa = ml.select_msa(*ml.index_from_qk(q, k), **budget)
    G = q.shape[2] // k.shape[2]
    return {
        "msa": msa,
        # MSA's group rows given to each head of the group: the same sets, per head
        "msa_per_head": ml.BlockSelection(msa.indices.repeat_interleave(G, 1), bs, per="head"),
        "moba": ml.select_moba(q, k, **budget),
        "random_group": ml.select_random(q, k, **budget, seed=3),
        "random_head": ml.select_random(q, k, **budget, per="head", seed=4),
        "window": ml.select_window(q, k, **budget),
        "oracle_group": ml.select_oracle(q, k, **budget),
        "oracle_head": ml.select_oracle(q, k, **budget, per="head"),
        "oracle_head_local": ml.select_oracle(q, k, **budget, per="head", force_local=True),
    }


@pytest.mark.parametrize("Hq, Hkv", [(2, 2), (4, 2), (4, 1), (16, 1)])
def test_block_and_score_recall_match_a_brute_force(Hq, Hkv):
    N, bs, top_k = 37, 8, 3  # 5 blocks, the last one partial; rows of blocks 0-1 see < top_k blocks
    q, k = torch.randn(1, N, Hq, 8, dtype=torch.float64), torch.randn(1, N, Hkv, 8, dtype=torch.float64)
    sels = selections(q, k, bs, top_k)
    reports = ml.coverage(q, k, sels)
    mass = dense_block_mass(q, k, bs)
    for name, sel in sels.items():
        block, score = brute_force_recalls(mass, sel, Hq // Hkv)
        rep = reports[name]
        assert rep.block_recall.shape == rep.score_recall.shape == (1, Hq, N), name
        assert torch.equal(rep.block_recall.double(), block.float().double()), name
        assert torch.allclose(rep.score_recall.double(), score, atol=1e-6, rtol=0), name
    # the group's row counts for every head of the group, exactly as the same sets per head
    assert torch.equal(reports["msa"].block_recall, reports["msa_per_head"].block_recall)
    assert torch.equal(reports["msa"].score_recall, reports["msa_per_head"].score_recall)


def test_the_per_head_mass_oracle_scores_exactly_one_and_few_block_rows_are_whole():
    N, bs, top_k = 45, 8, 4
    q, k = torch.randn(2, N, 8, 16), torch.randn(2, N, 2, 16)
    sels = selections(q, k, bs, top_k)
    reports = ml.coverage(q, k, sels)
    oracle = reports["oracle_head"]
    assert bool((oracle.block_recall == 1).all()) and bool((oracle.score_recall == 1).all())
    s = oracle.summary()
    for metric in ("block_recall", "score_recall"):
        assert s[metric]["mean"] == s[metric]["min"] == s[metric]["p5"] == 1.0
        assert s[metric]["share_below_0.9"] == 0.0
    # rows with at most top_k visible blocks: every selector takes them all, so I* is inside
    few = torch.arange(N) < top_k * bs
    for name, rep in reports.items():
        assert bool((rep.block_recall[..., few] == 1).all()), name
        assert bool((rep.score_recall[..., few] == 1).all()), name
    # I* is by mass alone: forcing the local block can only lose it, and does on some rows
    forced = reports["oracle_head_local"]
    assert bool((forced.block_recall <= 1).all()) and float(forced.block_recall.min()) < 1
    # the group oracle maximises the group's mass, not each head's: not the paper's I*
    assert float(reports["oracle_group"].block_recall.min()) < 1


def test_ties_go_to_the_lower_block_id_and_no_block_is_forced():
    """q = 0: every visible key weighs the same, so the full earlier blocks tie exactly."""
    N, bs, top_k = 40, 8, 2
    q, k = torch.zeros(1, N, 2, 4), torch.randn(1, N, 1, 4)
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=bs, top_k=top_k))
    own = torch.arange(N) // bs
    # I* = {0, 1} for rows of block >= 1 (a full own block ties with them and loses to the
    # lower ids); the window holds {own, own - 1}: both of I* in block 1, one in block 2, none after
    expected = torch.where(own <= 1, 1.0, torch.where(own == 2, 0.5, 0.0))
    assert torch.equal(rep.block_recall[0, 0], expected)
    assert torch.equal(rep.block_recall[0, 1], expected)


def test_sampled_rows_and_query_chunks_give_the_same_recalls(monkeypatch):
    q, k = torch.randn(1, 300, 4, 16), torch.randn(1, 300, 2, 16)
    sel = ml.select_moba(q, k, block_size=32, top_k=3)
    full = ml.coverage(q, k, sel)
    sampled = ml.coverage(q, k, sel, rows=40, seed=5)
    assert torch.equal(sampled.block_recall, full.block_recall[..., sampled.positions])
    assert torch.allclose(sampled.score_recall, full.score_recall[..., sampled.positions], atol=1e-6)
    monkeypatch.setattr(sys.modules["msa_lab.coverage"], "query_chunk_size", lambda *_: 7)  # many chunks, concatenated
    chunked = ml.coverage(q, k, sel)
    assert torch.equal(chunked.block_recall, full.block_recall)
    assert torch.allclose(chunked.score_recall, full.score_recall, atol=1e-6)


def test_summaries_and_breakdowns_take_the_paper_metrics():
    q, k = torch.randn(2, 128, 8, 8), torch.randn(2, 128, 2, 8)
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=16, top_k=2))
    s = rep.summary()
    for metric in ("block_recall", "score_recall"):
        m = s[metric]
        assert 0 <= m["min"] <= m["p5"] <= m["p50"] <= m["p95"] <= 1
        assert m["mean"] == pytest.approx(float(getattr(rep, metric).double().mean()))
        assert "share_below_0.9" in m
        assert torch.allclose(rep.by_head(metric), getattr(rep, metric).mean(dim=(0, 2)))
        assert torch.allclose(rep.by_group(metric), rep.by_head(metric).view(2, 4).mean(1))
        centres, means = rep.by_position(4, metric)
        assert centres.shape == means.shape == (4,) and means[0] > means[-1]
    assert torch.equal(rep.by_head(), rep.by_head("recall"))  # the default is unchanged
    assert "block recall mean" in repr(rep) and "score recall mean" in repr(rep)
    with pytest.raises(ValueError, match="metric must be 'recall' or .*'score_recall', got 'overlap'"):
        rep.by_head("overlap")


def test_nan_rows_are_nan_and_counted_never_passed():
    B, Hq, Hkv, N, bs = 1, 4, 2, 16, 4
    q, k = torch.randn(B, N, Hq, 8), torch.randn(B, N, Hkv, 8)
    sel = ml.select_window(q, k, block_size=bs, top_k=2)
    pos = torch.arange(N)
    mass = torch.softmax(torch.randn(B, Hq, N, N // bs), -1)
    mass = mass * (torch.arange(N // bs) <= (pos // bs).view(-1, 1))  # no mass in future blocks
    mass[0, 1, 13, 0] = float("nan")  # a block the window does not select: recall stays finite
    rep = CoverageReport.from_block_mass(mass, sel.indices, pos, per="group", group_size=Hq // Hkv,
                                         block_size=bs, top_k=2)
    assert math.isfinite(float(rep.recall[0, 1, 13]))
    assert math.isnan(float(rep.block_recall[0, 1, 13])) and math.isnan(float(rep.score_recall[0, 1, 13]))
    assert int(torch.isnan(rep.block_recall).sum()) == int(torch.isnan(rep.score_recall).sum()) == 1
    s = rep.summary()
    assert s["nonfinite_rows"] == 1  # counted although recall and oracle recall are finite there
    for metric in ("block_recall", "score_recall"):
        m = s[metric]
        assert math.isnan(m["mean"]) and math.isnan(m["min"]) and math.isnan(m["p1"])
        finite = getattr(rep, metric)[torch.isfinite(getattr(rep, metric))]
        assert m["share_below_0.9"] == pytest.approx((int((finite < 0.9).sum()) + 1) / (Hq * N))
        assert math.isnan(float(rep.by_head(metric)[1])) and math.isfinite(float(rep.by_head(metric)[0]))
    assert "1 rows non-finite" in repr(rep)


def test_overflowing_logits_make_nan_rows_not_good_ones():
    """Finite q and k whose logits overflow: coverage accepts them, and the rows that see the
    overflow are NaN in the paper's metrics, never a finite recall."""
    q, k = torch.randn(1, 32, 2, 4), torch.randn(1, 32, 1, 4)
    q[0, 20:] *= 1e20
    k[0, 5] = 1e20
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=8, top_k=2))
    bad = ~torch.isfinite(rep.recall) | ~torch.isfinite(rep.oracle_recall)
    assert bool(bad.any())
    assert bool(torch.isnan(rep.block_recall[bad]).all()) and bool(torch.isnan(rep.score_recall[bad]).all())
    assert rep.summary()["nonfinite_rows"] >= int(bad.sum())


def test_head_oracle_ids_are_checked():
    q, k = torch.randn(1, 16, 2, 8), torch.randn(1, 16, 1, 8)
    sel = ml.select_window(q, k, block_size=4, top_k=2)
    mass = torch.softmax(torch.randn(1, 2, 16, 4), -1)
    with pytest.raises(ValueError, match=r"head_oracle_ids must be \[batch, selection heads, rows, top_k\]"):
        CoverageReport.from_block_mass(mass, sel.indices, torch.arange(16), per="group", group_size=2,
                                       block_size=4, top_k=2, head_oracle_ids=sel.indices)


def test_coverage_sweep_rows_carry_the_paper_metrics():
    cfg = parse_config(dict(name="cov", mode="coverage", device="cpu",
                            grid=dict(seq_len=256, batch=1, num_heads=4, num_kv_heads=2, head_dim=16,
                                      block_size=32, top_k=3, dtype="fp32", pattern="mixed", rows=24),
                            methods=[{"method": "msa", "backend": "reference"}]))
    row = measure_coverage(cfg.points[0], "cpu", 0)
    for key in ("block_recall_mean", "block_recall_p5", "score_recall_mean", "score_recall_p5"):
        assert 0 < row[key] <= 1, key
    assert row["block_recall_p5"] <= row["block_recall_mean"]
    assert len(row["block_recall_by_head"]) == len(row["score_recall_by_head"]) == 4
