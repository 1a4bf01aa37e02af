"""MSA's ablations (pooling max | mean | lse, selection per group or per head, forced sink
blocks) against an independent brute force: dense [N, N] index logits with an explicit causal
mask, pooled block by block, ranked row by row by Python sorting with the tie rule; and the
Triton twin (interpreted on the CPU) against the reference, at block sizes above its key
sub-tile included."""

import math

import pytest
import torch

import msa_lab as ml
from conftest import dense_masked_attention, make_qkv, no_near_ties, rel_err, token_mask_from_blocks
from msa_lab.select.msa_triton import launch_block_scores
from msa_lab.triton_runtime import KernelSettings

# inf - inf and log(0) in the interpreter's numpy are the rules under test, not accidents.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

POOLINGS = ("max", "mean", "lse")
INF = float("inf")


def brute_scores(index_q, index_k, block_size, pooling):
    """``[B, H, N, nb]`` block scores in the inputs' precision (float64 for float64 inputs):
    each block's slice of the dense logits, its visible tokens counted from the causal mask."""
    B, N, H, Di = index_q.shape
    dt = torch.float64 if index_q.dtype == torch.float64 else torch.float32
    logits = torch.einsum("bthd,bjhd->bhtj", index_q.to(dt), index_k.to(dt).expand(B, N, H, Di)) * Di ** -0.5
    logits = logits.masked_fill(logits.isnan(), -INF)  # a NaN logit counts as -inf
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    nb = math.ceil(N / block_size)
    out = torch.full((B, H, N, nb), -INF, dtype=dt)
    for blk in range(nb):
        cols = slice(blk * block_size, min((blk + 1) * block_size, N))
        x, seen = logits[..., cols], causal[:, cols]
        count = seen.sum(-1)
        if pooling == "max":
            pooled = x.masked_fill(~seen, -INF).amax(-1)
        elif pooling == "mean":
            pooled = x.masked_fill(~seen, 0.0).sum(-1) / count
        else:
            pooled = x.masked_fill(~seen, -INF).logsumexp(-1)
        out[..., blk] = torch.where(count > 0, pooled, torch.full_like(pooled, -INF))
    return out


def brute_selection(scores, block_size, top_k, sink_blocks=0):
    """``bool [B, H, N, nb]``: own block, then sink blocks ``0 .. s-1`` before it, then the best
    other earlier blocks (NaN last, ties to the lower id), ``top_k`` in all."""
    B, H, N, nb = scores.shape
    mask = torch.zeros(B, H, N, nb, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for t in range(N):
                own = t // block_size
                forced = [own] + list(range(min(sink_blocks, own)))
                row = scores[b, h, t].tolist()
                rest = sorted(range(sink_blocks, own), key=lambda i: (math.isnan(row[i]), -row[i], i))
                mask[b, h, t, forced + rest[: top_k - len(forced)]] = True
    return mask


def forced_scores(scores, sink_blocks):
    """Scores with the sinks at +inf, for the near-tie test of the ranked slots."""
    scores = scores.clone()
    scores[..., :sink_blocks] = INF
    return scores


def draw_index(shape_q, shape_k, block_size, top_k, pooling, sink_blocks, dtype=torch.float32, tries=100):
    """Index inputs whose float64 scores have no near-tie at any row's top_k boundary."""
    for _ in range(tries):
        iq, ik = torch.randn(*shape_q).to(dtype), torch.randn(*shape_k).to(dtype)
        scores = forced_scores(brute_scores(iq.double(), ik.double(), block_size, pooling), sink_blocks)
        if no_near_ties(scores, block_size, top_k):
            return iq, ik
    raise RuntimeError("no draw without near-ties")


# ---------------------------------------------------------------- reference vs brute force

SCORE_CASES = [
    # B, N, H, Di, block, shared index key
    (1, 50, 2, 8, 8, True),
    (2, 37, 3, 4, 10, False),   # odd N, block not a power of two, partial last block
    (1, 20, 1, 16, 32, True),   # one block larger than the sequence
]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("B,N,H,Di,bs,shared", SCORE_CASES)
def test_block_scores_match_brute_force(pooling, B, N, H, Di, bs, shared):
    iq = torch.randn(B, N, H, Di, dtype=torch.float64)
    ik = torch.randn(B, N, 1 if shared else H, Di, dtype=torch.float64)
    expected = brute_scores(iq, ik, bs, pooling)
    rows = torch.tensor([0, N // 3, N - 1])
    for pos in (torch.arange(N), rows):
        got = ml.msa_block_scores(iq, ik, pos, bs, pooling=pooling)
        want = expected[:, :, pos]
        assert not got.isnan().any()
        assert torch.equal(got == -INF, want == -INF)
        finite = want > -INF
        assert torch.allclose(got[finite], want[finite], rtol=1e-12, atol=0)


def test_own_block_pools_only_its_visible_tokens():
    # Di = 1, index_q = 1, index_k[j] = j: the logit of key j is j. Query 5 sees 4 and 5 of
    # block 1 (keys 4..7) and all of block 0 (keys 0..3).
    iq, ik = torch.ones(1, 8, 1, 1), torch.arange(8.0).view(1, 8, 1, 1)
    pos = torch.tensor([5])
    expected = {"max": [3.0, 5.0], "mean": [1.5, 4.5],
                "lse": [math.log(sum(math.exp(j) for j in range(4))), math.log(math.exp(4) + math.exp(5))]}
    for pooling, want in expected.items():
        ref = ml.msa_block_scores(iq, ik, pos, 4, pooling=pooling)[0, 0, 0]
        assert torch.allclose(ref, torch.tensor(want), rtol=1e-6), pooling
        scores = torch.full((1, 1, 8, 2), float("nan"))
        launch_block_scores(iq, ik, scores, 0, 8, 4, pooling)
        assert torch.allclose(scores[0, 0, 5], torch.tensor(want), rtol=1e-6), pooling


SELECT_CASES = [
    # B, N, H, Di, block, top_k, sink_blocks, shared
    (1, 64, 2, 8, 8, 3, 0, True),
    (2, 45, 2, 4, 7, 4, 1, False),   # odd N and block
    (1, 70, 3, 8, 10, 5, 2, True),   # two sinks
    (1, 30, 1, 8, 8, 8, 3, True),    # top_k above the number of blocks, sinks beyond early rows' own block
    (1, 40, 2, 4, 8, 3, 2, False),   # sinks + local fill top_k: no ranked slot left
]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("B,N,H,Di,bs,topk,sinks,shared", SELECT_CASES)
def test_selection_matches_brute_force(pooling, B, N, H, Di, bs, topk, sinks, shared):
    iq = torch.randn(B, N, H, Di, dtype=torch.float64)
    ik = torch.randn(B, N, 1 if shared else H, Di, dtype=torch.float64)
    sel = ml.select_msa(iq, ik, block_size=bs, top_k=topk, pooling=pooling, sink_blocks=sinks).validate()
    assert sel.per == "group" and sel.indices.shape == (B, H, N, topk)
    assert torch.equal(sel.dense_mask(), brute_selection(brute_scores(iq, ik, bs, pooling), bs, topk, sinks))
    own = torch.arange(N) // bs
    assert torch.equal(sel.indices[..., 0], own.int().expand(B, H, N))  # the local block first
    assert torch.equal((sel.indices >= 0).sum(-1), torch.clamp(own + 1, max=topk).expand(B, H, N))


def test_sinks_beat_every_score_and_count_toward_top_k():
    # Block 5's logits overflow to +inf for every query, blocks 0 and 1 hold NaN logits (-inf):
    # with 2 sinks and top_k 3 the rows past block 2 still take exactly {own, 0, 1}.
    N, bs = 64, 8
    iq = torch.rand(1, N, 1, 4) + 0.5
    ik = torch.randn(1, N, 1, 4)
    ik[0, 40:48] = 3e38
    ik[0, 3] = ik[0, 12] = float("nan")
    for backend in ("reference", "triton"):
        for pooling in POOLINGS:
            sel = ml.select_msa(iq, ik, block_size=bs, top_k=3, pooling=pooling, sink_blocks=2,
                                backend=backend).validate()
            rows = sel.canonical().indices[0, 0]
            own = torch.arange(N) // bs
            late = own >= 2
            assert torch.equal(rows[late], torch.stack([torch.zeros_like(own), torch.ones_like(own), own], 1)[late].int())
            assert rows[:8].tolist() == [[0, -1, -1]] * 8 and rows[8:16].tolist() == [[0, 1, -1]] * 8


def test_nonfinite_logits_follow_the_pooling_rule_in_both_backends():
    # Block 2 holds a key whose logits overflow to +inf and one to -inf (index_q > 0), and a NaN
    # key: max and lse see +inf (best), mean sees +inf + -inf = NaN (ranks last). Block 4 holds
    # only a NaN key: max and lse pool its other keys, its mean is -inf.
    N, bs = 56, 8
    iq = torch.rand(1, N, 1, 4) + 0.5
    ik = torch.randn(1, N, 1, 4)
    ik[0, 17], ik[0, 18], ik[0, 19], ik[0, 35] = 3e38, -3e38, float("nan"), float("nan")
    own = torch.arange(N) // bs
    pos = torch.arange(40, N)  # rows that see blocks 2 and 4 whole
    for pooling in POOLINGS:
        ref = ml.select_msa(iq, ik, block_size=bs, top_k=3, pooling=pooling)
        got = ml.select_msa(iq, ik, block_size=bs, top_k=3, pooling=pooling, backend="triton").validate()
        assert got.equals(ref), pooling
        picked = ref.dense_mask()[0, 0]
        assert bool(picked[own >= 4, 2].all()) if pooling != "mean" else not bool(picked[own >= 4, 2].any())
        want = ml.msa_block_scores(iq, ik, pos, bs, pooling=pooling)[0, 0]
        scores = torch.full((1, 1, N, 7), float("nan"))
        launch_block_scores(iq, ik, scores, 0, N, bs, pooling)
        scores = scores[0, 0, pos, :5]  # blocks 0..4, all before these rows' own block
        assert torch.equal(scores.isnan(), want[:, :5].isnan()), pooling  # NaN only where expected
        assert torch.allclose(scores.nan_to_num(), want[:, :5].nan_to_num(), rtol=1e-5), pooling
        assert bool(want[:, 2].isnan().all()) if pooling == "mean" else bool((want[:, 2] == INF).all())
        assert bool((want[:, 4] == -INF).all()) if pooling == "mean" else bool(want[:, 4].isfinite().all())
    expected = brute_scores(iq, ik, bs, "lse")[0, 0, pos]
    assert torch.allclose(ml.msa_block_scores(iq, ik, pos, bs, pooling="lse")[0, 0, :, 3:5], expected[:, 3:5])


# ---------------------------------------------------------------- per head

def test_per_head_selects_per_index_head_and_attends_per_query_head():
    B, N, Hq, Hkv, D, Di, bs, topk = 1, 40, 4, 2, 8, 8, 8, 3
    q, k, v = make_qkv(B, N, Hq, Hkv, D, torch.float64)
    iq, ik = torch.randn(B, N, Hq, Di, dtype=torch.float64), torch.randn(B, N, 1, Di, dtype=torch.float64)
    sel = ml.select_msa(iq, ik, block_size=bs, top_k=topk, per="head", pooling="lse", sink_blocks=1)
    assert sel.per == "head" and sel.indices.shape == (B, Hq, N, topk)
    expected = brute_selection(brute_scores(iq, ik, bs, "lse"), bs, topk, 1)
    assert torch.equal(sel.dense_mask(), expected)
    out, got = ml.msa_attention(q, k, v, iq, ik, block_size=bs, top_k=topk, per="head", pooling="lse",
                                sink_blocks=1, return_selection=True)
    assert got.equals(sel)
    ref, _ = dense_masked_attention(q, k, v, token_mask_from_blocks(expected, bs, N))
    assert rel_err(out, ref) < 1e-12


def test_msa_attention_checks_index_heads_against_per():
    q, k, v = make_qkv(1, 16, 4, 2, 8)
    iq_group, iq_head, ik = torch.randn(1, 16, 2, 8), torch.randn(1, 16, 4, 8), torch.randn(1, 16, 1, 8)
    with pytest.raises(ValueError, match=r"query_heads=4.*per='head'"):
        ml.msa_attention(q, k, v, iq_group, ik, block_size=4, top_k=2, per="head")
    with pytest.raises(ValueError, match=r"groups=2.*per='group'"):
        ml.msa_attention(q, k, v, iq_head, ik, block_size=4, top_k=2)
    with pytest.raises(ValueError, match="per must be 'group' or 'head'"):
        ml.msa_attention(q, k, v, iq_group, ik, block_size=4, top_k=2, per="query")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(pooling="avg"), ValueError, r"pooling must be 'max' or 'mean' or 'lse', got 'avg'"),
    (dict(pooling=None), ValueError, "pooling must be"),
    (dict(per="heads"), ValueError, r"per must be 'group' or 'head', got 'heads'"),
    (dict(sink_blocks=-1), ValueError, r"sink_blocks must be an int >= 0, got -1"),
    (dict(sink_blocks=True), TypeError, "sink_blocks must be an int"),
    (dict(sink_blocks=1.0), TypeError, "sink_blocks must be an int"),
    (dict(sink_blocks=3), ValueError, r"sink_blocks must be an int in \[0, top_k - 1\] = \[0, 2\]"),
])
def test_bad_ablation_arguments_are_refused(kwargs, error, match):
    iq, ik = torch.randn(1, 16, 1, 4), torch.randn(1, 16, 1, 4)
    for backend in ("reference", "triton"):
        with pytest.raises(error, match=match):
            ml.select_msa(iq, ik, block_size=4, top_k=3, backend=backend, **kwargs)
    if "pooling" in kwargs:
        with pytest.raises(error, match=match):
            ml.msa_block_scores(iq, ik, torch.arange(16), 4, **kwargs)


# ---------------------------------------------------------------- Triton twin vs reference

TRITON_CASES = [
    # B, N, H, Di, block, top_k, sink_blocks, per
    (1, 97, 2, 16, 10, 4, 1, "group"),
    (1, 53, 4, 8, 16, 3, 0, "head"),
    (1, 261, 1, 16, 200, 2, 0, "group"),   # block > max_tile_keys: two sub-tiles, the second partial
]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("B,N,H,Di,bs,topk,sinks,per", TRITON_CASES)
def test_triton_matches_reference_float32(pooling, B, N, H, Di, bs, topk, sinks, per):
    iq, ik = draw_index((B, N, H, Di), (B, N, 1, Di), bs, topk, pooling, sinks)
    args = dict(block_size=bs, top_k=topk, pooling=pooling, per=per, sink_blocks=sinks)
    ref = ml.select_msa(iq, ik, **args)
    got = ml.select_msa(iq, ik, backend="triton", **args).validate()
    assert got.per == per and got.equals(ref)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_triton_float16_differs_only_at_near_ties(pooling):
    B, N, H, Di, bs, topk = 1, 150, 2, 16, 16, 4
    iq, ik = torch.randn(B, N, H, Di).half(), torch.randn(B, N, 1, Di).half()
    ref = ml.select_msa(iq, ik, block_size=bs, top_k=topk, pooling=pooling, sink_blocks=1)
    got = ml.select_msa(iq, ik, block_size=bs, top_k=topk, pooling=pooling, sink_blocks=1,
                        backend="triton").validate()
    a, b = ref.dense_mask(), got.dense_mask()
    differs = (a != b).any(-1)
    share = differs.float().mean().item()
    print(f"float16 {pooling}: {share:.4%} of rows select a different set")
    assert share <= 0.02
    scores = brute_scores(iq.double(), ik.double(), bs, pooling)
    scale = scores[scores.isfinite()].abs().max()
    for bb, h, t in differs.nonzero().tolist():
        dropped, added = scores[bb, h, t][a[bb, h, t] & ~b[bb, h, t]], scores[bb, h, t][b[bb, h, t] & ~a[bb, h, t]]
        assert float(dropped.max() - added.min()) <= 1e-3 * scale  # a swap of (nearly) equal blocks


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 1e-3)])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("N,bs,Di,sinks", [(613, 256, 16, 0), (1031, 512, 32, 1)])
def test_score_kernel_at_blocks_above_the_key_tile(dtype, rtol, pooling, N, bs, Di, sinks):
    assert bs > KernelSettings().max_tile_keys
    iq, ik = torch.randn(1, N, 1, Di).to(dtype), torch.randn(1, N, 1, Di).to(dtype)
    nb = math.ceil(N / bs)
    scores = torch.full((1, 1, N, nb), float("nan"))
    launch_block_scores(iq, ik, scores, 0, N, bs, pooling, sinks)
    want = forced_scores(ml.msa_block_scores(iq, ik, torch.arange(N), bs, pooling=pooling), sinks)
    written = torch.arange(nb) <= (torch.arange(N) // bs).view(-1, 1)  # blocks after the own one: unwritten
    got, want = scores[0, 0][written], want[0, 0][written]
    assert not got.isnan().any() and torch.equal(got == INF, want == INF)
    finite = want.isfinite()
    assert torch.allclose(got[finite], want[finite], rtol=rtol, atol=rtol)
