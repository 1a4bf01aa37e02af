"""Selection kernels in Triton (MSA index branch, MoBA gate; interpreted on the CPU in CI)
against the reference selectors."""

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, moba_scores64, msa_scores64

CASES = [
    # B, N, G, Di, block, top_k, shared index key
    (1, 200, 2, 16, 16, 4, True),
    (2, 150, 4, 32, 32, 3, False),
    (1, 97, 1, 16, 10, 5, True),      # block not a power of two, partial last block
    (1, 70, 3, 8, 16, 16, True),      # top_k above the number of blocks
    (1, 300, 2, 24, 64, 1, False),    # top_k 1: local block only; index dim not a power of 2
]


@pytest.mark.parametrize("B,N,G,Di,bs,topk,shared", CASES)
def test_matches_reference_selection(B, N, G, Di, bs, topk, shared):
    iq, ik = draw_without_near_ties(lambda: (torch.randn(B, N, G, Di), torch.randn(B, N, 1 if shared else G, Di)),
                                    lambda iq, ik: msa_scores64(iq, ik, bs), bs, topk)
    ref = ml.select_msa(iq, ik, block_size=bs, top_k=topk)
    got = ml.select_msa(iq, ik, block_size=bs, top_k=topk, backend="triton").validate()
    assert got.per == "group" and got.indices.shape == ref.indices.shape
    assert got.equals(ref)
    assert torch.equal(got.indices[..., 0], (torch.arange(N) // bs).int().expand(B, G, N))


def test_ties_go_to_the_lower_id_and_nan_ranks_last():
    bs, N = 8, 64
    ik = torch.randn(1, bs, 1, 4).repeat(1, N // bs, 1, 1)  # every block scores the same
    iq = torch.randn(1, N, 1, 4)
    got = ml.select_msa(iq, ik, block_size=bs, top_k=3, backend="triton")
    assert got.indices[0, 0, N - 1].tolist() == [7, 0, 1]
    nan_q = torch.full((1, N, 1, 4), float("nan"))
    got = ml.select_msa(nan_q, ik, block_size=bs, top_k=3, backend="triton").validate()
    assert torch.equal(got.indices[0, 0, :, 0], (torch.arange(N) // bs).int())


def test_query_chunks_agree(kernel_settings):
    iq, ik = torch.randn(1, 500, 2, 16), torch.randn(1, 500, 1, 16)
    whole = ml.select_msa(iq, ik, block_size=32, top_k=4, backend="triton")
    kernel_settings(score_bytes=128 * 2 * 16 * 4)  # one 128-query tile per chunk
    assert ml.select_msa(iq, ik, block_size=32, top_k=4, backend="triton").equals(whole)


def test_msa_attention_with_triton_uses_the_triton_selection():
    q, k, v = torch.randn(1, 120, 8, 16), torch.randn(1, 120, 2, 16), torch.randn(1, 120, 2, 16)
    iq, ik = draw_without_near_ties(lambda: (torch.randn(1, 120, 2, 16), torch.randn(1, 120, 1, 16)),
                                    lambda iq, ik: msa_scores64(iq, ik, 16), 16, 3)
    out, sel = ml.msa_attention(q, k, v, iq, ik, block_size=16, top_k=3, backend="triton",
                                return_selection=True)
    ref = ml.msa_attention(q, k, v, iq, ik, block_size=16, top_k=3)
    assert sel.equals(ml.select_msa(iq, ik, block_size=16, top_k=3))
    assert ml.output_error(out, ref) < 1e-5


def test_backend_name_is_checked():
    with pytest.raises(ValueError, match="backend must be one of 'reference', 'triton', 'auto'"):
        ml.select_msa(torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4), block_size=4, top_k=1, backend="cuda")


MOBA_CASES = [
    # B, N, Hq, Hkv, D, block, top_k
    (1, 200, 4, 2, 16, 16, 4),
    (2, 150, 8, 1, 32, 32, 3),     # GQA 8, partial block
    (1, 97, 3, 3, 24, 10, 5),      # block and head dim not powers of two
    (1, 70, 2, 1, 16, 16, 16),     # top_k above the number of blocks
    (1, 300, 16, 1, 16, 64, 1),    # GQA 16, top_k 1
]


@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", MOBA_CASES)
def test_moba_selection_matches_reference(B, N, Hq, Hkv, D, bs, topk):
    q, k = draw_without_near_ties(lambda: (torch.randn(B, N, Hq, D), torch.randn(B, N, Hkv, D)),
                                  lambda q, k: moba_scores64(q, k, bs), bs, topk)
    ref = ml.select_moba(q, k, block_size=bs, top_k=topk)
    got = ml.select_moba(q, k, block_size=bs, top_k=topk, backend="triton").validate()
    assert got.per == "head" and got.equals(ref)


def test_moba_attention_with_triton_uses_the_triton_selection():
    q, k = draw_without_near_ties(lambda: (torch.randn(1, 120, 8, 16), torch.randn(1, 120, 2, 16)),
                                  lambda q, k: moba_scores64(q, k, 16), 16, 3)
    v = torch.randn(1, 120, 2, 16)
    out, sel = ml.moba_attention(q, k, v, block_size=16, top_k=3, backend="triton", return_selection=True)
    assert sel.equals(ml.select_moba(q, k, block_size=16, top_k=3))
    assert ml.output_error(out, ml.moba_attention(q, k, v, block_size=16, top_k=3)) < 1e-5


def test_half_precision_inputs_select_the_same_blocks():
    # fp16 products are exact in fp32; only the summation order differs from the reference,
    # so a different block needs a near-exact tie.
    iq, ik = torch.randn(1, 300, 2, 32).half(), torch.randn(1, 300, 1, 32).half()
    ref = ml.select_msa(iq, ik, block_size=16, top_k=4).canonical().indices
    got = ml.select_msa(iq, ik, block_size=16, top_k=4, backend="triton").validate().canonical().indices
    assert (got == ref).all(-1).float().mean() > 0.99
    q, k = torch.randn(1, 300, 4, 32).half(), torch.randn(1, 300, 2, 32).half()
    ref = ml.select_moba(q, k, block_size=16, top_k=4).canonical().indices
    got = ml.select_moba(q, k, block_size=16, top_k=4, backend="triton").validate().canonical().indices
    assert (got == ref).all(-1).float().mean() > 0.99


def test_nan_logits_count_as_minus_inf_in_both_backends():
    def draw():
        iq, ik = torch.randn(1, 64, 1, 4), torch.randn(1, 64, 1, 4)
        ik[0, 3] = float("nan")  # one NaN token: block 0 scores by its other tokens
        ik[0, 8:16] = float("nan")  # a whole NaN block: scores -inf, ranks last
        return iq, ik

    iq, ik = draw_without_near_ties(draw, lambda iq, ik: msa_scores64(iq, ik, 8), 8, 4)
    ref = ml.select_msa(iq, ik, block_size=8, top_k=4)
    got = ml.select_msa(iq, ik, block_size=8, top_k=4, backend="triton")
    assert got.equals(ref)
    assert not bool((ref.indices[0, 0, 40:] == 1).any())  # 4+ candidates better than block 1
