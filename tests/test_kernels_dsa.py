"""DSA's Triton kernels (interpreted on the CPU in CI, compiled with MSA_LAB_TEST_DEVICE=cuda)
against the reference: the indexer + top-k exactly on every row in float32 (inputs drawn without
near-ties at the top_k boundary) and as sets in 16-bit, reporting the share of rows that differ;
the token-gather forward and backward by relative error to float64."""

import pytest
import torch

import msa_lab as ml
from conftest import GRAD_DTYPES, TEST_DEVICE, make_qkv, rel_err
from test_dsa import draw_index

SELECT_SHAPES = [  # B, N, H_I, Di, top_k
    (1, 37, 1, 7, 5), (2, 129, 3, 16, 17), (1, 90, 4, 32, 64), (1, 20, 2, 8, 40), (1, 200, 16, 16, 3)]
ATTEND_SHAPES = [  # B, N, Hq, Hkv, D, top_k
    (1, 37, 4, 2, 16, 8), (2, 29, 3, 3, 8, 64), (1, 50, 16, 1, 32, 5), (1, 70, 8, 8, 24, 70), (1, 45, 12, 4, 16, 13)]
HALF_DTYPES = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    TEST_DEVICE != "cuda", reason="bf16: GPU only"))]


def differing_rows(a, b):
    return float((a.canonical().indices != b.canonical().indices).any(-1).double().mean())


@pytest.mark.parametrize("B,N,H,Di,top_k", SELECT_SHAPES)
def test_selection_kernel_matches_the_reference_on_every_row_in_float32(B, N, H, Di, top_k):
    iq, ik, w = draw_index(B, N, H, Di, top_k, negative_weights=True)
    got = ml.select_dsa(iq, ik, w, top_k=top_k, backend="triton")
    got.validate()
    assert got.equals(ml.select_dsa(iq, ik, w, top_k=top_k))
    assert torch.equal(got.tokens_per_query()[:, 0], torch.clamp(torch.arange(N) + 1, max=top_k).expand(B, N))
    kept = got.indices[:, 0, top_k:]  # ranked rows keep their positions ascending
    assert bool((kept[..., 1:] > kept[..., :-1]).all())


def test_selection_kernel_in_query_chunks(kernel_settings):
    iq, ik, w = draw_index(1, 300, 2, 8, 7)
    kernel_settings(score_bytes=64 * 300 * 4)  # one chunk per 64 rows
    assert ml.select_dsa(iq, ik, w, top_k=7, backend="triton").equals(ml.select_dsa(iq, ik, w, top_k=7))


def test_selection_kernel_ties_nan_and_negative_zero():
    N = 60
    ik = torch.randn(1, N, 1, 4).abs()
    iq = -torch.rand(1, N, 2, 4) - 0.1  # every score exactly 0 (or -0.0 with the negative weight)
    w = torch.tensor([1.0, -1.0]).expand(1, N, 2).contiguous()
    iq[0, 40:] = torch.randn(20, 2, 4)  # later rows rank real scores, with ties at 0 among them
    ik[0, 7] = float("nan")
    for top_k in (3, 10):
        got = ml.select_dsa(iq, ik, w, top_k=top_k, backend="triton")
        assert got.equals(ml.select_dsa(iq, ik, w, top_k=top_k))
        assert not (got.indices[0, 0, top_k:] == 7).any()  # NaN ranks last


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_selection_kernel_in_16_bit_as_sets(dtype):
    """16-bit inputs: the kernel's products are exact in float32, only the order of the sums over
    the index dim and heads differs from the reference's, so rows differ only at near-ties."""
    B, N, H, Di, top_k = 2, 256, 4, 32, 16
    iq, ik, w = (x.to(dtype) for x in (torch.randn(B, N, H, Di), torch.randn(B, N, 1, Di), torch.rand(B, N, H)))
    share = differing_rows(ml.select_dsa(iq, ik, w, top_k=top_k, backend="triton"),
                           ml.select_dsa(iq, ik, w, top_k=top_k))
    assert share <= 0.02, share


@pytest.mark.parametrize("B,N,Hq,Hkv,D,top_k", ATTEND_SHAPES)
@pytest.mark.parametrize("dtype,tol", GRAD_DTYPES)
def test_token_gather_forward_and_backward_match_float64(B, N, Hq, Hkv, D, top_k, dtype, tol):
    q, k, v = make_qkv(B, N, Hq, Hkv, D)
    sel = ml.select_dsa(*ml.dsa_index_from_qk(q, k), top_k=top_k)
    dout = torch.randn(B, N, Hq, D)
    outs = []
    for x_dtype, backend in ((torch.float64, "reference"), (dtype, "triton")):
        leaves = [x.to(x_dtype).requires_grad_() for x in (q, k, v)]
        out, lse = ml.block_sparse_attention(*leaves, sel, backend=backend, return_lse=True)
        out.backward(dout.to(x_dtype))
        outs.append((out, lse, *(x.grad for x in leaves)))
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv"), outs[1], outs[0]):
        assert got.dtype == (torch.float32 if name == "lse" else dtype), name
        assert rel_err(got, ref) < tol, (name, rel_err(got, ref))


def test_token_gather_takes_any_valid_selection():
    """Unused slots anywhere in a row (not only at its end), rows that select nothing, a top_k
    wider than the sequence."""
    N, top_k = 40, 50
    q, k, v = make_qkv(1, N, 4, 2, 16)
    ids = torch.full((1, 1, N, top_k), -1, dtype=torch.int32)
    for t in range(N):
        if t % 7 == 3:
            continue  # selects nothing: zeros, LSE -inf
        pick = torch.randperm(t + 1)[: max(1, t // 2)]
        ids[0, 0, t, torch.randperm(top_k)[: pick.numel()]] = pick.int()
    sel = ml.TokenSelection(ids)
    out, lse = ml.block_sparse_attention(q, k, v, sel, backend="triton", return_lse=True)
    ref, ref_lse = ml.block_sparse_attention(q.double(), k.double(), v.double(), sel, return_lse=True)
    assert rel_err(out, ref) < 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and bool((out[0, 3::7] == 0).all())
    finite = torch.isfinite(ref_lse)
    assert rel_err(lse[finite], ref_lse[finite]) < 1e-6


def test_dsa_attention_on_the_kernels_end_to_end():
    B, N, Hq, Hkv, D = 1, 80, 8, 2, 16
    q, k, v = (x.requires_grad_() for x in make_qkv(B, N, Hq, Hkv, D))
    iq, ik, w = draw_index(B, N, 2, 8, 9)
    out, sel = ml.dsa_attention(q, k, v, iq, ik, w, top_k=9, backend="triton", return_selection=True)
    assert sel.equals(ml.select_dsa(iq, ik, w, top_k=9))
    ref = ml.dsa_attention(*(x.detach().double() for x in (q, k, v)), iq.double(), ik.double(), w.double(), top_k=9)
    assert rel_err(out, ref) < 1e-5
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_token_gather_refuses_deterministic_and_interpreted_bf16():
    q, k, v = make_qkv(1, 16, 2, 1, 8)
    sel = ml.select_dsa(*ml.dsa_index_from_qk(q, k), top_k=4)
    with pytest.raises(ValueError, match="deterministic=True: the token-gather backward adds dK/dV with atomics"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton", deterministic=True)
    if TEST_DEVICE == "cpu":
        with pytest.raises(TypeError, match="bfloat16"):
            ml.block_sparse_attention(*(x.bfloat16() for x in (q, k, v)), sel, backend="triton")


def test_nonfinite_value_reaches_only_the_rows_that_selected_it():
    N = 30
    q, k, v = make_qkv(1, N, 4, 1, 8)
    sel = ml.select_dsa(*ml.dsa_index_from_qk(q, k), top_k=5)
    v[0, 12, 0, 3] = float("nan")
    out = ml.block_sparse_attention(q, k, v, sel, backend="triton")
    ref = ml.block_sparse_attention(q.double(), k.double(), v.double(), sel)
    assert torch.equal(torch.isnan(out).any(-1), torch.isnan(ref).any(-1))
    assert bool(torch.isnan(ref).any()) and not bool(torch.isnan(out[0, :12]).any())
