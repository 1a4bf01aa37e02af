"""MSA against a brute-force index branch written row by row from SPEC.md: causal token
logits, max pooling over each block's visible tokens, local block forced, the top_k-1
best earlier blocks with ties to the lower id."""

import math

import pytest
import torch

import msa_lab as ml
from conftest import dense_masked_attention, make_qkv, rel_err, token_mask_from_blocks


def msa_brute_force(index_q, index_k, block_size, top_k):
    """-> block mask ``bool [B, G, N, nb]`` built with Python sorting per row."""
    B, N, G, Di = index_q.shape
    ik = index_k.double().expand(B, N, G, Di)
    nb = math.ceil(N / block_size)
    logits = torch.einsum("btgd,bjgd->bgtj", index_q.double(), ik) * Di ** -0.5
    mask = torch.zeros(B, G, N, nb, dtype=torch.bool)
    for b in range(B):
        for g in range(G):
            for t in range(N):
                own = t // block_size
                scores = [(logits[b, g, t, i * block_size:(i + 1) * block_size].max().item(), i)
                          for i in range(own)]
                ranked = sorted(scores, key=lambda s: (-s[0], s[1]))  # best first, ties -> lower id
                chosen = [own] + [i for _, i in ranked[: top_k - 1]]
                mask[b, g, t, chosen] = True
    return mask


CASES = [
    # B, N, Hq, Hkv, D, Di, block, top_k, shared index key
    (1, 128, 4, 2, 16, 16, 16, 3, True),
    (2, 150, 8, 2, 16, 8, 32, 2, False),     # partial block, per-group index keys
    (1, 97, 16, 1, 8, 16, 10, 4, True),      # GQA 16
    (1, 70, 3, 3, 16, 16, 16, 16, True),     # top_k above the number of blocks
    (2, 64, 2, 1, 8, 4, 7, 1, False),        # odd block size, top_k 1
]


@pytest.mark.parametrize("B,N,Hq,Hkv,D,Di,bs,topk,shared", CASES)
def test_selection_matches_brute_force_and_output_matches_dense(B, N, Hq, Hkv, D, Di, bs, topk, shared):
    q, k, v = make_qkv(B, N, Hq, Hkv, D, torch.float64)
    index_q = torch.randn(B, N, Hkv, Di, dtype=torch.float64)
    index_k = torch.randn(B, N, 1 if shared else Hkv, Di, dtype=torch.float64)
    out, lse, sel = ml.msa_attention(q, k, v, index_q, index_k, block_size=bs, top_k=topk,
                                     return_lse=True, return_selection=True)
    sel.validate()
    expected = msa_brute_force(index_q, index_k, bs, topk)
    assert sel.per == "group" and sel.indices.shape == (B, Hkv, N, topk)
    assert torch.equal(sel.dense_mask(), expected)
    allowed = token_mask_from_blocks(expected, bs, N, Hq // Hkv)
    ref, ref_lse = dense_masked_attention(q, k, v, allowed)
    assert rel_err(out, ref) < 1e-12 and rel_err(lse, ref_lse) < 1e-12


def test_ties_go_to_the_lower_block_id():
    # Blocks 0..5 hold identical index keys, so every earlier block scores the same.
    bs, N = 8, 64
    index_k = torch.randn(1, bs, 1, 4).repeat(1, N // bs, 1, 1)
    index_q = torch.randn(1, N, 1, 4)
    sel = ml.select_msa(index_q, index_k, block_size=bs, top_k=3).canonical()
    t = N - 1  # own block 7; blocks 0..6 tie -> 0 and 1 win
    assert sel.indices[0, 0, t].tolist() == [0, 1, 7]


def test_max_pooling_finds_a_single_hot_token():
    # One earlier token matches the query strongly; mean pooling would dilute it.
    bs, N, Di = 16, 128, 8
    index_q = torch.zeros(1, N, 1, Di)
    index_k = torch.randn(1, N, 1, Di) * 0.01
    index_q[0, -1, 0, 0] = 1.0
    index_k[0, 37, 0, 0] = 10.0  # block 2
    sel = ml.select_msa(index_q, index_k, block_size=bs, top_k=2)
    assert sorted(sel.indices[0, 0, -1].tolist()) == [2, 7]


def test_bfloat16_close_to_float32_reference():
    q, k, v = make_qkv(1, 256, 8, 2, 64, torch.bfloat16)
    index_q, index_k = torch.randn(1, 256, 2, 32).bfloat16(), torch.randn(1, 256, 1, 32).bfloat16()
    out, sel = ml.msa_attention(q, k, v, index_q, index_k, block_size=32, top_k=4, return_selection=True)
    ref = ml.block_sparse_attention(q.float(), k.float(), v.float(), sel)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


def test_published_defaults_are_block_128_top_16():
    q, k, v = make_qkv(1, 300, 4, 2, 16)
    index_q, index_k = torch.randn(1, 300, 2, 8), torch.randn(1, 300, 1, 8)
    _, sel = ml.msa_attention(q, k, v, index_q, index_k, return_selection=True)
    assert sel.block_size == 128 and sel.top_k == 16


def test_index_from_qk_is_group_mean_query_and_keys():
    q, k, _ = make_qkv(2, 10, 6, 2, 8)
    iq, ik = ml.index_from_qk(q, k)
    assert torch.allclose(iq[:, :, 1], q[:, :, 3:6].mean(2)) and ik is k
