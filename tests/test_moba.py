"""MoBA against an independent dense implementation of MoBA's published naive oracle
(``moba_attn_varlen_naive`` of MoonshotAI/MoBA): mean-pooled key gate in fp32, own
block forced (+inf) and counted in top_k, future blocks -inf, top-k threshold and index
mask, causal inside the own block. Extended to GQA by giving each query head its
group's K/V."""

import math

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, make_qkv, moba_scores64, rel_err


def moba_naive(q, k, v, block_size, top_k):
    """Dense MoBA for one batch of ``[B, N, H, D]`` inputs -> (out fp32, need_attend [B, Hq, N, nb])."""
    B, N, Hq, D = q.shape
    G = Hq // k.shape[2]
    k_h = k.repeat_interleave(G, 2)
    v_h = v.repeat_interleave(G, 2)
    nb = math.ceil(N / block_size)
    outs, attends = [], []
    for b in range(B):
        means = torch.stack([k_h[b, i * block_size:(i + 1) * block_size].mean(0) for i in range(nb)])
        gate = torch.einsum("shd,nhd->hsn", q[b].float(), means.float())
        for i in range(nb):
            gate[:, : (i + 1) * block_size, i] = float("-inf")
            gate[:, i * block_size:(i + 1) * block_size, i] = float("inf")
        kk = min(top_k, nb)
        val, idx = torch.topk(gate, k=kk, dim=-1, largest=True, sorted=False)
        need = gate >= val.min(-1, keepdim=True).values
        need &= torch.zeros_like(need).scatter_(-1, idx, True)
        tok = need.repeat_interleave(block_size, -1)[..., :N] & torch.ones(N, N, dtype=torch.bool).tril()
        # the reference attends to every block it marks; future blocks it marks are causally masked
        s = torch.einsum("xhd,yhd->hxy", q[b].float(), k_h[b].float()) * D ** -0.5
        s = s.masked_fill(~tok, float("-inf"))
        outs.append(torch.einsum("hxy,yhd->xhd", s.softmax(-1), v_h[b].float()))
        own = torch.arange(N) // block_size
        attends.append(need & (torch.arange(nb) <= own.view(-1, 1)))
    return torch.stack(outs), torch.stack(attends)


CASES = [
    # B, N, Hq, Hkv, D, block, top_k
    (1, 256, 2, 2, 32, 64, 3),    # N a multiple of the block
    (2, 200, 4, 2, 16, 32, 3),    # partial last block, GQA 2
    (1, 333, 8, 1, 32, 64, 2),    # GQA 8, partial block
    (2, 100, 16, 1, 16, 16, 4),   # GQA 16
    (1, 150, 3, 3, 16, 64, 8),    # top_k above the number of blocks: dense
    (1, 97, 4, 4, 16, 10, 1),     # top_k 1: own block only
]


@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", CASES)
def test_selection_and_output_match_moba_naive(B, N, Hq, Hkv, D, bs, topk):
    q, k, v = draw_without_near_ties(lambda: make_qkv(B, N, Hq, Hkv, D),
                                     lambda q, k, v: moba_scores64(q, k, bs), bs, topk)
    out, sel = ml.moba_attention(q, k, v, block_size=bs, top_k=topk, return_selection=True)
    sel.validate()
    ref_out, need = moba_naive(q, k, v, bs, topk)
    assert sel.per == "head" and sel.indices.shape == (B, Hq, N, topk)
    assert torch.equal(sel.dense_mask(), need)
    assert rel_err(out, ref_out) < 1e-5


def test_bfloat16_matches_moba_naive_on_the_same_inputs():
    q, k, v = make_qkv(1, 300, 8, 2, 64, torch.bfloat16)
    out, sel = ml.moba_attention(q, k, v, block_size=64, top_k=3, return_selection=True)
    ref_out, need = moba_naive(q, k, v, 64, 3)
    # the gate is fp32 on bf16-rounded block means in both; a flip needs a near-exact tie
    assert (sel.dense_mask() != need).float().mean() < 1e-3
    assert out.dtype == torch.bfloat16 and rel_err(out, ref_out) < 1e-2


def test_top_k_larger_than_blocks_is_full_attention():
    q, k, v = make_qkv(2, 90, 4, 2, 16, torch.float64)
    out = ml.moba_attention(q, k, v, block_size=16, top_k=50)
    assert rel_err(out, ml.full_attention(q, k, v)) < 1e-12


def test_rows_keep_min_topk_own_plus_one_ids():
    q, k, v = make_qkv(1, 200, 2, 1, 16)
    sel = ml.select_moba(q, k, block_size=20, top_k=4)
    own = torch.arange(200) // 20
    assert torch.equal(sel.valid_mask().sum(-1)[0, 0], torch.clamp(own + 1, max=4))
    assert bool((sel.indices == own.view(1, 1, -1, 1).int()).any(-1).all())


def test_moba_output_equals_block_sparse_on_its_selection_with_flex():
    q, k, v = make_qkv(1, 130, 4, 2, 16)
    out, lse, sel = ml.moba_attention(q, k, v, block_size=32, top_k=2, return_lse=True,
                                      return_selection=True)
    flex, flex_lse = ml.block_sparse_attention(q, k, v, sel, backend="flex", return_lse=True)
    assert rel_err(out, flex) < 1e-5 and rel_err(lse, flex_lse) < 1e-5
