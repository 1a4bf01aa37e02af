import math

import pytest
import torch

import msa_lab as ml
from conftest import make_qkv, token_mask_from_blocks


def ids(rows, bs=4, per="group"):
    return ml.BlockSelection(torch.tensor(rows, dtype=torch.int32).view(1, 1, len(rows), -1), bs, per)


def test_validates_range_causality_and_repeats():
    ids([[0, -1], [0, -1], [0, -1], [0, -1], [1, 0]])  # N=5, bs=4: query 4 is in block 1
    with pytest.raises(ValueError, match=r"range \[-1, 2\]"):
        ids([[0, -1]] * 4 + [[2, 0]])  # only 2 blocks exist
    with pytest.raises(ValueError, match="not causal.*query=3.*block 1"):
        ids([[0, -1]] * 3 + [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match="repeats"):
        ids([[0, 0]] * 5)
    with pytest.raises(ValueError, match=r"-1, 1\]"):
        ids([[-2, 0]] * 5)


def test_structure_errors_name_the_field():
    with pytest.raises(TypeError, match="int32"):
        ml.BlockSelection(torch.zeros(1, 1, 4, 1, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="4-D"):
        ml.BlockSelection(torch.zeros(1, 4, 1, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="block_size"):
        ml.BlockSelection(torch.zeros(1, 1, 4, 1, dtype=torch.int32), 0)
    with pytest.raises(TypeError, match="block_size"):
        ml.BlockSelection(torch.zeros(1, 1, 4, 1, dtype=torch.int32), 2.0)
    with pytest.raises(ValueError, match="per must be"):
        ml.BlockSelection(torch.zeros(1, 1, 4, 1, dtype=torch.int32), 4, per="token")


@pytest.mark.parametrize("N,bs,topk", [(100, 16, 3), (64, 16, 4), (10, 16, 2), (77, 5, 6)])
def test_tokens_per_query_and_density_match_the_token_mask(N, bs, topk):
    q, k, _ = make_qkv(2, N, 4, 2, 8)
    sel = ml.select_moba(q, k, block_size=bs, top_k=topk)
    tokens = token_mask_from_blocks(sel.dense_mask(), bs, N)
    assert torch.equal(sel.tokens_per_query(), tokens.sum(-1))
    assert sel.density() == pytest.approx(tokens.sum().item() / (2 * 4 * N * (N + 1) / 2))


def test_summary_and_repr_are_readable():
    q, k, _ = make_qkv(1, 1000, 8, 2, 8)
    sel = ml.select_window(q, k, block_size=100, top_k=3)
    text = repr(sel)
    assert "per='group'" in text and "seq_len=1,000" in text and "top_k=3" in text
    assert "density" in text and "tokens/query" in text
    s = sel.summary()
    assert s["num_blocks"] == 10 and s["max_tokens_per_query"] == 300


def test_window_selection_content():
    q, k, _ = make_qkv(1, 50, 2, 1, 8)
    sel = ml.select_window(q, k, block_size=10, top_k=3, per="head")
    assert sel.indices.shape == (1, 2, 50, 3)
    assert sel.indices[0, 1, 45].tolist() == [4, 3, 2]
    assert sel.indices[0, 0, 12].tolist() == [1, 0, -1]


def test_random_selection_is_valid_and_reproducible():
    q, k, _ = make_qkv(2, 300, 4, 2, 8)
    a = ml.select_random(q, k, block_size=16, top_k=5, seed=3).validate()
    assert a.equals(ml.select_random(q, k, block_size=16, top_k=5, seed=3))
    assert not a.equals(ml.select_random(q, k, block_size=16, top_k=5, seed=4))
    own = (torch.arange(300) // 16).view(1, 1, -1, 1).int()
    assert bool((a.indices == own).any(-1).all())


def test_canonical_and_equals_ignore_order():
    a = ids([[0, -1]] * 4 + [[1, 0]])
    b = ids([[-1, 0]] * 4 + [[0, 1]])
    assert a.equals(b)
    assert b.canonical().indices[0, 0, 4].tolist() == [0, 1]
    assert b.canonical().indices[0, 0, 0].tolist() == [0, -1]


def test_dense_mask_and_block_map():
    q, k, _ = make_qkv(1, 40, 2, 1, 8)
    sel = ml.select_window(q, k, block_size=10, top_k=2)
    mask = sel.dense_mask()
    assert mask.shape == (1, 1, 40, 4) and mask[0, 0, 25].tolist() == [False, True, True, False]
    share = sel.block_map()[0, 0]
    assert share[2].tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="max_elements"):
        sel.dense_mask(max_elements=10)


def test_block_map_is_the_query_block_average_of_the_dense_mask():
    q, k, _ = make_qkv(2, 90, 4, 2, 8)
    sel = ml.select_moba(q, k, block_size=16, top_k=3)
    dense = sel.dense_mask().float()
    nb = math.ceil(90 / 16)
    padded = torch.nn.functional.pad(dense, (0, 0, 0, nb * 16 - 90))
    expected = padded.view(2, 4, nb, 16, nb).sum(3) / torch.tensor([16.0] * (nb - 1) + [90 - 16 * (nb - 1)]).view(nb, 1)
    assert torch.allclose(sel.block_map(), expected)


def test_top_blocks_ties_and_valid_counts():
    scores = torch.tensor([[5.0, 7.0, 7.0, 1.0, 9.0, 0.0]]).expand(6, 6)
    out = ml.select_top_blocks(scores, torch.arange(6) * 10, block_size=10, top_k=3)
    assert out[5].tolist() == [5, 4, 1]      # own forced, then 9.0, then the tie 7.0 -> id 1
    assert out[0].tolist() == [0, -1, -1]    # block 0: only itself
    assert out[1].tolist() == [1, 0, -1]
    unforced = ml.select_top_blocks(scores, torch.arange(6) * 10, block_size=10, top_k=2, force_local=False)
    assert unforced[5].tolist() == [4, 1]    # block 5 (score 0) loses when not forced


def test_own_block_survives_infinite_and_nan_scores():
    inf, nan = float("inf"), float("nan")
    out = ml.select_top_blocks(torch.tensor([[inf, 0.0, 0.0]]), torch.tensor([2]), block_size=1, top_k=1)
    assert out.tolist() == [[2]]
    out = ml.select_top_blocks(torch.tensor([[nan, inf, 1.0, 0.0]]), torch.tensor([3]), block_size=1, top_k=3)
    assert out[0].tolist() == [3, 1, 2]  # own block first; NaN ranks last
    iq, ik = torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4)
    iq[0, 7, 0, 0], ik[0, 1, 0, 0] = 1e30, 1e30  # overflowing index logits
    sel = ml.select_msa(iq, ik, block_size=2, top_k=1)
    assert sel.indices[0, 0, 7].tolist() == [3]
    sel = ml.select_msa(torch.full((1, 8, 1, 4), float("nan")), ik, block_size=2, top_k=2).validate()
    own = (torch.arange(8) // 2).int()
    assert torch.equal(sel.indices[0, 0, :, 0], own)
