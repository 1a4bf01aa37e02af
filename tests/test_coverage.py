import itertools
import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import msa_lab as ml
import msa_lab.reference as reference
from conftest import causal_mask, make_qkv, rel_err, token_mask_from_blocks


def dense_probs(q, k):
    G = q.shape[2] // k.shape[2]
    s = torch.einsum("bthd,bjhd->bhtj", q.double(), k.double().repeat_interleave(G, 2)) * q.shape[-1] ** -0.5
    return s.masked_fill(~causal_mask(q.shape[1]), float("-inf")).softmax(-1)


@pytest.mark.parametrize("per", ["group", "head"])
def test_recall_equals_dense_probability_mass_on_selected_tokens(per):
    B, N, Hq, Hkv, bs = 2, 150, 8, 2, 16
    q, k, _ = make_qkv(B, N, Hq, Hkv, 16)
    sel = ml.select_random(q, k, block_size=bs, top_k=4, per=per)
    rep = ml.coverage(q, k, sel)
    allowed = token_mask_from_blocks(sel.dense_mask(), bs, N, Hq // Hkv if per == "group" else 1)
    expected = (dense_probs(q, k) * allowed).sum(-1)
    assert rep.recall.shape == (B, Hq, N)
    assert rel_err(rep.recall, expected) < 1e-5


def test_oracle_is_optimal_by_exhaustive_search():
    N, bs, topk = 60, 10, 2  # 6 blocks: every pair can be tried
    q, k, _ = make_qkv(1, N, 4, 2, 8)
    probs = dense_probs(q, k)  # [1, 4, N, N]
    mass = torch.nn.functional.pad(probs, (0, 0)).view(1, 4, N, 6, bs).sum(-1)
    group_mass = mass.view(1, 2, 2, N, 6).sum(2)  # [1, Hkv, N, nb]
    best = torch.zeros(1, 2, N, dtype=torch.float64)
    for pair in itertools.combinations(range(6), topk):
        best = torch.maximum(best, group_mass[..., list(pair)].sum(-1))
    oracle = ml.select_oracle(q, k, block_size=bs, top_k=topk, per="group")
    got = ml.coverage(q, k, oracle).recall.view(1, 2, 2, N).sum(2)
    assert rel_err(got, best) < 1e-5


def test_oracle_bounds_every_selector_and_relative_recall():
    q, k, _ = make_qkv(1, 200, 8, 2, 16)
    budget = dict(block_size=16, top_k=3)
    sels = {"msa": ml.select_msa(*ml.index_from_qk(q, k), **budget),
            "window": ml.select_window(q, k, **budget),
            "oracle": ml.select_oracle(q, k, **budget)}
    reps = ml.coverage(q, k, sels)
    oracle_group = reps["oracle"].recall.view(1, 2, 4, 200).sum(2)
    for name, rep in reps.items():
        group = rep.recall.view(1, 2, 4, 200).sum(2)
        assert bool((group <= oracle_group + 1e-5).all()), name
        assert torch.allclose(rep.oracle_recall, reps["oracle"].recall)
    assert reps["oracle"].summary()["relative_recall"]["mean"] == pytest.approx(1.0)
    oracle_ids = sels["oracle"].indices
    assert torch.allclose(reps["oracle"].overlap, (oracle_ids >= 0).sum(-1).float() / 3)
    assert reps["window"].summary()["relative_recall"]["mean"] < 1.0


def test_covering_selection_has_recall_one():
    q, k, _ = make_qkv(1, 100, 4, 4, 8)
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=10, top_k=10))
    assert torch.allclose(rep.recall, torch.ones(()), atol=1e-5)
    assert rep.summary()["recall"]["share_below_0.9"] == 0.0


def test_overlap_counts_shared_blocks():
    q, k, _ = make_qkv(1, 80, 2, 1, 8)
    window = ml.select_window(q, k, block_size=10, top_k=3)
    oracle = ml.select_oracle(q, k, block_size=10, top_k=3)
    rep = ml.coverage(q, k, window)
    w, o = window.dense_mask(), oracle.dense_mask()
    expected = (w & o).sum(-1) / 3
    assert torch.allclose(rep.overlap, expected.float())


def test_sampled_rows_use_exact_normalisers():
    q, k, _ = make_qkv(1, 300, 4, 2, 16)
    sel = ml.select_moba(q, k, block_size=32, top_k=3)
    full = ml.coverage(q, k, sel)
    sampled = ml.coverage(q, k, sel, rows=40, seed=5)
    pos = sampled.positions
    assert pos.numel() == 40 and torch.equal(pos, pos.sort().values)
    assert torch.allclose(sampled.recall, full.recall[..., pos], atol=1e-6)
    assert torch.allclose(sampled.overlap, full.overlap[..., pos])
    given = ml.coverage(q, k, sel, rows=torch.tensor([299, 3]))
    assert torch.allclose(given.recall, full.recall[..., [299, 3]], atol=1e-6)


def test_summary_views():
    q, k, _ = make_qkv(2, 128, 8, 2, 8)
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=16, top_k=2))
    s = rep.summary()
    assert s["rows"] == 2 * 8 * 128
    r = s["recall"]
    assert r["min"] <= r["p1"] <= r["p5"] <= r["p25"] <= r["p50"] <= r["p75"] <= r["p95"] <= 1 + 1e-6
    assert rep.by_head().shape == (8,) and rep.by_group().shape == (2,)
    assert torch.allclose(rep.by_group(), rep.by_head().view(2, 4).mean(1))
    centres, means = rep.by_position(8)
    assert centres.shape == means.shape == (8,)
    assert means[0] > means[-1]  # early rows see few blocks, so a window covers them
    assert "recall mean" in repr(rep)


def test_output_error():
    ref = torch.randn(2, 10, 4, 8)
    assert ml.output_error(ref, ref) == 0.0
    assert ml.output_error(ref * 1.1, ref) == pytest.approx(0.1)
    per_head = ml.output_error(ref * 1.1, ref, per_head=True)
    assert per_head.shape == (4,) and torch.allclose(per_head, torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="shape"):
        ml.output_error(ref[:, :5], ref)


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_references_never_build_n_by_n(monkeypatch):
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 1 << 16)
    N, Hq, Hkv, bs = 2048, 2, 1, 64
    q, k, v = make_qkv(1, N, Hq, Hkv, 8)
    iq, ik = ml.index_from_qk(q, k)
    with LargestTensor() as probe:
        sel = ml.select_msa(iq, ik, block_size=bs, top_k=4)
        ml.select_moba(q, k, block_size=bs, top_k=4)
        oracle = ml.select_oracle(q, k, block_size=bs, top_k=4)
        ml.block_sparse_attention(q, k, v, sel)
        ml.full_attention(q, k, v)
        ml.coverage(q, k, {"msa": sel, "oracle": oracle})
    assert probe.largest < N * N // 8, probe.largest


def test_recall_by_distance_of_a_window_is_one_inside_and_zero_outside():
    q, k, _ = make_qkv(1, 640, 4, 2, 16)
    rep = ml.coverage(q, k, ml.select_window(q, k, block_size=10, top_k=4))
    labels, recall, share = rep.by_distance()
    assert labels[:4] == ["0", "1", "2-3", "4-7"]
    assert torch.allclose(recall[:3], torch.ones(3, dtype=torch.float64))  # distances 0-3: all kept
    assert torch.all(recall[3:] == 0)  # distance 4 and more: nothing kept
    assert math.isclose(float(share.sum()), 1.0, rel_tol=1e-9)


def test_recall_by_distance_adds_up_to_the_mean_recall():
    q, k, _ = make_qkv(2, 300, 6, 3, 8)
    rep = ml.coverage(q, k, ml.select_moba(q, k, block_size=16, top_k=4), rows=77, seed=3)
    # sum over distances of (kept mass) / (all mass) = mean recall, each row's mass summing to 1
    assert math.isclose(float(rep.kept_by_distance.sum() / rep.mass_by_distance.sum()),
                        float(rep.recall.double().mean()), rel_tol=1e-5)


def test_report_of_query_chunks_concatenates(monkeypatch):
    q, k, _ = make_qkv(1, 260, 4, 2, 8)
    sel = ml.select_msa(*ml.index_from_qk(q, k), block_size=16, top_k=3)
    whole = ml.coverage(q, k, sel)
    monkeypatch.setattr(sys.modules["msa_lab.coverage"], "query_chunk_size", lambda *a: 37)  # 8 chunks
    chunked = ml.coverage(q, k, sel)
    for field in ("recall", "oracle_recall", "overlap", "positions"):
        assert torch.allclose(getattr(chunked, field).double(), getattr(whole, field).double(), atol=1e-6)
    assert torch.allclose(chunked.kept_by_distance, whole.kept_by_distance, rtol=1e-6)
