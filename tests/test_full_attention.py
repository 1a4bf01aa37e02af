import pytest
import torch
import torch.nn.functional as F

import msa_lab as ml
from conftest import causal_mask, dense_masked_attention, make_qkv, rel_err


def sdpa(q, k, v, causal=True, scale=None):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, scale=scale,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


@pytest.mark.parametrize("Hq,Hkv", [(1, 1), (4, 2), (8, 2), (8, 1), (16, 1), (12, 4)])
@pytest.mark.parametrize("N", [1, 37, 200])
def test_equals_sdpa_with_gqa(Hq, Hkv, N):
    q, k, v = make_qkv(2, N, Hq, Hkv, 32)
    out = ml.full_attention(q, k, v)
    assert rel_err(out, sdpa(q, k, v)) < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_float64_matches_dense_formulation_and_lse(causal):
    q, k, v = make_qkv(2, 150, 6, 3, 16, torch.float64)
    allowed = causal_mask(150) if causal else torch.ones(150, 150, dtype=torch.bool)
    ref, ref_lse = dense_masked_attention(q, k, v, allowed.expand(2, 6, 150, 150), scale=0.3)
    out, lse = ml.full_attention(q, k, v, causal=causal, scale=0.3, return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    assert rel_err(out, ref) < 1e-12
    assert rel_err(lse, ref_lse) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_inputs(dtype, tol):
    q, k, v = make_qkv(1, 130, 8, 2, 64, dtype)
    out = ml.full_attention(q, k, v)
    assert out.dtype == dtype
    assert rel_err(out, sdpa(q.float(), k.float(), v.float())) < tol


def test_query_chunking_does_not_change_the_result():
    from msa_lab.reference import attention_reference

    q, k, v = make_qkv(1, 100, 4, 2, 16, torch.float64)
    a, la = attention_reference(q, k, v, scale=0.25)
    b, lb = attention_reference(q, k, v, scale=0.25, query_chunk=7)
    assert rel_err(a, b) < 1e-14 and rel_err(la, lb) < 1e-14


def test_fewer_queries_than_keys_is_bottom_right_causal():
    q, k, v = make_qkv(2, 100, 4, 2, 16, torch.float64)
    full = ml.full_attention(q, k, v)
    tail = ml.full_attention(q[:, -5:], k, v)
    assert rel_err(tail, full[:, -5:]) < 1e-12
    tail_sdpa = ml.full_attention(q[:, -5:].float(), k.float(), v.float(), backend="sdpa")
    assert rel_err(tail_sdpa, full[:, -5:]) < 1e-5


def test_sdpa_and_auto_backends_agree_with_reference():
    q, k, v = make_qkv(1, 77, 8, 4, 32)
    ref = ml.full_attention(q, k, v)
    assert rel_err(ml.full_attention(q, k, v, backend="sdpa"), ref) < 1e-5
    assert rel_err(ml.full_attention(q, k, v, backend="auto"), ref) < 1e-5
    out, lse = ml.full_attention(q, k, v, backend="auto", return_lse=True)
    assert lse.shape == (1, 8, 77)


def test_gradients_flow_through_the_reference():
    q, k, v = make_qkv(1, 40, 4, 2, 8, torch.float64)
    for x in (q, k, v):
        x.requires_grad_(True)
    ml.full_attention(q, k, v).square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    sdpa(q, k, v).square().sum().backward()
    for g, x in zip(grads, (q, k, v)):
        assert rel_err(g, x.grad) < 1e-10


def test_works_under_no_grad():
    q, k, v = make_qkv(1, 20, 2, 1, 8)
    q.requires_grad_(True)
    with torch.no_grad():
        out = ml.full_attention(q, k, v)
    assert not out.requires_grad


def test_overflowing_scores_are_not_mistaken_for_empty_rows():
    q, k, v = make_qkv(1, 4, 1, 1, 4)
    q[0, 3, 0, 0], k[0, 1, 0, 0] = 1e30, 1e30  # float32 score overflows to +inf
    out, lse = ml.full_attention(q, k, v, return_lse=True)
    assert not bool((out[0, 3] == 0).all()) and not torch.isneginf(lse[0, 0, 3])
