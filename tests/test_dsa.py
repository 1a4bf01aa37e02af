"""DSA (DeepSeek-V3.2-Exp) against an independent brute force: the lightning indexer's score of
every (query, key) pair from a Python loop over index heads in float64, the selection from a Python
sort of each row's visible keys (score descending, then lower position; NaN last), the attention
from a dense token mask. Odd sizes, GQA ratios 1 to 16, few index heads (so ReLU's exact zeros
tie often) and negative weights (whose ``-0.0`` must tie with ``+0.0``)."""

import math

import pytest
import torch

import msa_lab as ml
from conftest import causal_mask, dense_masked_attention, make_qkv, rel_err
from msa_lab.select.dsa import dsa_token_scores


def dsa_scores64(index_q, index_k, weights):
    """``I [B, N, N]`` in float64, ``-inf`` after the diagonal: one index head at a time."""
    B, N, H, _ = index_q.shape
    total = torch.zeros(B, N, N, dtype=torch.float64)
    for j in range(H):
        dots = index_q[:, :, j].double() @ index_k[:, :, 0].double().transpose(1, 2)  # [B, t, s]
        total += weights[:, :, j].double().unsqueeze(-1) * dots.clamp_min(0)
    return total.masked_fill(~causal_mask(N), float("-inf"))


def brute_tokens(scores, top_k):
    """``bool [B, N, N]``: each row's ``top_k`` visible keys by a Python sort."""
    B, N, _ = scores.shape
    mask = torch.zeros(B, N, N, dtype=torch.bool)
    rows = scores.tolist()
    for b in range(B):
        for t in range(N):
            key = sorted((-s if s == s else math.inf, j) for j, s in enumerate(rows[b][t][:t + 1]))
            for _, j in key[:top_k]:
                mask[b, t, j] = True
    return mask


def no_near_token_ties(scores, top_k, rel_gap=1e-5):
    """Every row's worst kept and best dropped visible key differ by more than ``rel_gap`` times the
    largest score, or are exactly equal (the tie rule then decides, in float32 as in float64)."""
    ranked = scores.sort(-1, descending=True).values
    if top_k >= scores.shape[-1]:
        return True
    kept, dropped = ranked[..., top_k - 1], ranked[..., top_k]
    finite = torch.isfinite(dropped)
    gap = (kept - dropped)[finite]
    return bool(((gap == 0) | (gap > rel_gap * scores[torch.isfinite(scores)].abs().max())).all())


def draw_index(B, N, H, Di, top_k, dtype=torch.float32, negative_weights=False, tries=100):
    for _ in range(tries):
        iq, ik = torch.randn(B, N, H, Di).to(dtype), torch.randn(B, N, 1, Di).to(dtype)
        w = torch.randn(B, N, H).to(dtype) if negative_weights else torch.rand(B, N, H).to(dtype) + 0.1
        if no_near_token_ties(dsa_scores64(iq, ik, w), top_k):
            return iq, ik, w
    raise RuntimeError(f"no draw without near-ties in {tries} tries")


def as_mask(selection):
    return selection.dense_mask()[:, 0]


@pytest.mark.parametrize("B,N,H,Di,top_k,negative", [
    (1, 37, 1, 7, 5, False), (2, 29, 3, 16, 1, True), (1, 41, 4, 5, 64, False), (1, 50, 2, 8, 17, True),
    (2, 23, 5, 3, 23, True)])
def test_selection_matches_brute_force(B, N, H, Di, top_k, negative):
    iq, ik, w = draw_index(B, N, H, Di, top_k, negative_weights=negative)
    sel = ml.select_dsa(iq, ik, w, top_k=top_k)
    assert isinstance(sel, ml.TokenSelection) and sel.indices.shape == (B, 1, N, top_k)
    sel.validate()
    want = brute_tokens(dsa_scores64(iq, ik, w), top_k)
    assert torch.equal(as_mask(sel), want)
    # a row with <= top_k visible keys takes them all; the others take exactly top_k
    assert torch.equal(sel.tokens_per_query()[:, 0], torch.clamp(torch.arange(N) + 1, max=top_k).expand(B, N))


def test_exact_ties_go_to_the_lower_position_and_negative_zero_ties_with_zero():
    """One index head pointing away from every key: all scores are exactly 0 (``-0.0`` with a
    negative weight), so every row takes its first ``top_k`` positions."""
    N, top_k = 20, 6
    ik = torch.randn(1, N, 1, 4).abs()
    iq = -torch.rand(1, N, 2, 4) - 0.1  # every dot < 0
    w = torch.tensor([1.0, -1.0]).expand(1, N, 2).contiguous()
    scores = dsa_token_scores(iq, ik, w, torch.arange(N))
    assert not torch.signbit(scores[torch.isfinite(scores)]).any()  # -0.0 canonicalised
    sel = ml.select_dsa(iq, ik, w, top_k=top_k).canonical()
    want = torch.arange(top_k).expand(N, top_k)
    want = torch.where(want <= torch.arange(N).view(-1, 1), want, -1)
    assert torch.equal(sel.indices[0, 0], want.int())


def test_nan_scores_rank_last():
    N = 12
    iq, ik, w = torch.randn(1, N, 2, 4), torch.randn(1, N, 1, 4), torch.rand(1, N, 2) + 0.1
    ik[0, 3] = float("nan")
    sel = ml.select_dsa(iq, ik, w, top_k=N - 1)
    mask = as_mask(sel)[0]
    assert not mask[N - 1, 3] and int(mask[N - 1].sum()) == N - 1  # the one row that drops a key drops 3
    assert torch.equal(mask, brute_tokens(dsa_scores64(iq, ik, w), N - 1)[0])


@pytest.mark.parametrize("Hq,Hkv", [(1, 1), (4, 2), (6, 3), (16, 1)])
def test_attention_matches_dense_mask(Hq, Hkv):
    B, N, D, top_k = 2, 33, 8, 7
    q, k, v = make_qkv(B, N, Hq, Hkv, D, torch.float64)
    iq, ik, w = draw_index(B, N, 3, 6, top_k, torch.float64)
    out, lse, sel = ml.dsa_attention(q, k, v, iq, ik, w, top_k=top_k, return_lse=True, return_selection=True)
    allowed = as_mask(sel).unsqueeze(1).expand(B, Hq, N, N)
    want, want_lse = dense_masked_attention(q, k, v, allowed)
    assert rel_err(out, want) < 1e-12 and rel_err(lse, want_lse) < 1e-12
    assert torch.equal(as_mask(sel), brute_tokens(dsa_scores64(iq, ik, w), top_k))


def test_attention_gradients_match_dense_mask():
    B, N, Hq, Hkv, D, top_k = 1, 26, 4, 2, 8, 5
    q, k, v = (x.requires_grad_() for x in make_qkv(B, N, Hq, Hkv, D, torch.float64))
    iq, ik, w = draw_index(B, N, 2, 4, top_k, torch.float64)
    out, sel = ml.dsa_attention(q, k, v, iq, ik, w, top_k=top_k, return_selection=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want, _ = dense_masked_attention(q, k, v, as_mask(sel).unsqueeze(1).expand(B, Hq, N, N))
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    for got, ref in zip(grads, want_grads):
        assert rel_err(got, ref) < 1e-12


def test_block_sparse_attention_takes_a_token_selection():
    B, N, Hq, Hkv, D = 1, 19, 4, 1, 8
    q, k, v = make_qkv(B, N, Hq, Hkv, D, torch.float64)
    iq, ik, w = ml.dsa_index_from_qk(q, k)
    sel = ml.select_dsa(iq, ik, w, top_k=4)
    got = ml.block_sparse_attention(q, k, v, sel)
    assert torch.equal(got, ml.dsa_attention(q, k, v, iq, ik, w, top_k=4))
    with pytest.raises(ValueError, match="backend must be one of 'reference', 'triton'"):
        ml.block_sparse_attention(q, k, v, sel, backend="flex")
    with pytest.raises(ValueError, match="plan is a KV-outer plan"):
        ml.block_sparse_attention(q, k, v, sel, plan=object())


def test_stand_in_scores_relu_of_the_logits_under_mqa():
    q, k, _ = make_qkv(1, 15, 4, 1, 8, torch.float64)
    scores = dsa_token_scores(*ml.dsa_index_from_qk(q, k), torch.arange(15))
    logits = torch.einsum("bthd,bsd->bhts", q, k[:, :, 0]).clamp_min(0).sum(1) * (4 * 8) ** -0.5
    assert rel_err(scores[torch.isfinite(scores)], logits.masked_select(causal_mask(15))) < 1e-14


def test_token_selection_checks():
    with pytest.raises(ValueError, match=r"one row per query, shared by every head"):
        ml.TokenSelection(torch.zeros(1, 2, 4, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="selects token 2 after its own token 1"):
        ml.TokenSelection(torch.tensor([[[[0], [2], [1]]]], dtype=torch.int32))
    with pytest.raises(ValueError, match="repeats a token"):
        ml.TokenSelection(torch.tensor([[[[0, -1], [1, 1]]]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"ids must lie in \[-1, 1\] for seq_len 2"):
        ml.TokenSelection(torch.tensor([[[[0, -2], [1, 0]]]], dtype=torch.int32))
    sel = ml.TokenSelection(torch.tensor([[[[0, -1], [1, 0], [2, -1]]]], dtype=torch.int32))
    sel.indices[0, 0, 2, 1] = 3  # an in-place edit is validated again before attention uses it
    q, k, v = make_qkv(1, 3, 2, 1, 4)
    with pytest.raises(ValueError, match="ids must lie in"):
        ml.block_sparse_attention(q, k, v, sel)


def test_token_selection_views():
    sel = ml.TokenSelection(torch.tensor([[[[0, -1], [1, 0], [2, 0]]]], dtype=torch.int32))
    assert sel.tokens_per_query().tolist() == [[[1, 2, 2]]]
    assert sel.density() == pytest.approx(5 / 6)
    assert torch.equal(sel.blocks_touched(2)[0, 0], torch.tensor([[True, False], [True, False], [True, True]]))
    # tile (query block 1, key block 0): query 2 took 1 of key block 0's 2 tokens
    assert torch.allclose(sel.block_map(2)[0, 0], torch.tensor([[0.75, 0.0], [0.5, 1.0]]))
    assert sel.equals(sel.canonical()) and not sel.equals(
        ml.TokenSelection(torch.tensor([[[[0, -1], [0, -1], [2, 0]]]], dtype=torch.int32)))
    assert "TokenSelection(per='all', batch=1, seq_len=3, top_k=2" in repr(sel)


@pytest.mark.parametrize("change,match", [
    (lambda iq, ik, w: (iq, ik.expand(-1, -1, 2, -1), w), r"index_k must be \[batch=1, seq=9, 1, index_dim=4\]"),
    (lambda iq, ik, w: (iq, ik, w[:, :, :1]), r"index_weights must be \[batch=1, seq=9, index_heads=3\]"),
    (lambda iq, ik, w: (iq, ik, w.double()), "index_weights has dtype torch.float64"),
    (lambda iq, ik, w: (iq[0], ik, w), "index_q must be 4-D"),
])
def test_bad_index_inputs_are_named(change, match):
    iq, ik, w = torch.randn(1, 9, 3, 4), torch.randn(1, 9, 1, 4), torch.rand(1, 9, 3)
    with pytest.raises((TypeError, ValueError), match=match):
        ml.select_dsa(*change(iq, ik, w), top_k=4)


def test_bad_top_k_is_named():
    iq, ik, w = torch.randn(1, 9, 3, 4), torch.randn(1, 9, 1, 4), torch.rand(1, 9, 3)
    assert ml.select_dsa(iq, ik, w, top_k=2048).top_k == 2048  # DeepSeek's default on a short input: padding
    for bad in (0, 2.5, True, 10_000):
        with pytest.raises((TypeError, ValueError), match="top_k must be"):
            ml.select_dsa(iq, ik, w, top_k=bad)
    q, k, v = make_qkv(1, 9, 2, 1, 4)
    with pytest.raises(ValueError, match=r"index_q must be \[batch=1, seq=9"):
        ml.dsa_attention(q, k, v, iq[:, :5], ik[:, :5], w[:, :5], top_k=4)
