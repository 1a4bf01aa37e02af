"""KV-outer backward (interpreted on the CPU in CI) against autograd through the reference
in float64."""

import pytest
import torch

import msa_lab as ml
from conftest import GRAD_DTYPES, make_qkv, rel_err
from test_block_sparse import random_selection

SHAPES = [
    # B, N, Hq, Hkv, D, block, top_k, per
    (1, 100, 4, 2, 16, 16, 3, "group"),    # GQA 2, partial last block
    (2, 77, 8, 1, 32, 16, 4, "head"),      # GQA 8, per head (MoBA): heads share a KV head
    (1, 64, 16, 1, 32, 16, 3, "group"),    # GQA 16: 8 tokens x 16 heads per tile
    (1, 50, 2, 2, 24, 24, 9, "group"),     # GQA 1, block not a power of 2, top_k > blocks
]


def grads(q, k, v, sel, dout, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = ml.block_sparse_attention(q, k, v, sel, **kw)
    out.backward(dout.to(out.dtype))
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk,per", SHAPES)
@pytest.mark.parametrize("dtype,tol", GRAD_DTYPES)
def test_gradients_match_autograd_through_the_reference(B, N, Hq, Hkv, D, bs, topk, per, dtype, tol,
                                                         deterministic):
    q, k, v = make_qkv(B, N, Hq, Hkv, D)
    sel = random_selection(B, Hkv if per == "group" else Hq, N, bs, topk, per)
    dout = torch.randn(B, N, Hq, D)
    _, *ref = grads(q.double(), k.double(), v.double(), sel, dout.double())
    _, *got = grads(q.to(dtype), k.to(dtype), v.to(dtype), sel, dout, backend="triton",
                    deterministic=deterministic)
    for name, g, r in zip("qkv", got, ref):
        assert g.dtype == dtype and not torch.isnan(g).any(), name
        assert rel_err(g, r) < tol, (name, rel_err(g, r))


def test_deterministic_backward_is_bitwise_reproducible():
    q, k, v = make_qkv(1, 96, 8, 2, 16)
    sel = ml.select_msa(*ml.index_from_qk(q, k), block_size=16, top_k=4)
    dout = torch.randn_like(q)
    first = grads(q, k, v, sel, dout, backend="triton", deterministic=True)
    second = grads(q, k, v, sel, dout, backend="triton", deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_rows_without_visible_keys_get_zero_gradients_not_nan():
    q, k, v = make_qkv(1, 48, 4, 2, 16)
    sel = random_selection(1, 2, 48, 16, 2, "group", drop_local=True)
    dout = torch.randn_like(q)
    _, dq, dk, dv = grads(q, k, v, sel, dout, backend="triton")
    _, *ref = grads(q.double(), k.double(), v.double(), sel, dout.double())
    assert not any(torch.isnan(g).any() for g in (dq, dk, dv))
    assert bool((dq[0, :16] == 0).all())
    assert all(rel_err(g, r) < 1e-5 for g, r in zip((dq, dk, dv), ref))


def test_msa_and_moba_attention_are_differentiable_and_q_outer_says_it_is_not():
    q, k, v = make_qkv(1, 64, 4, 2, 16)
    q.requires_grad_()
    out = ml.moba_attention(q, k, v, block_size=16, top_k=2, backend="triton")
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    sel = random_selection(1, 2, 64, 16, 2, "group")
    with pytest.raises(ValueError, match="no backward pass"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton_q_outer")
    with torch.no_grad():
        ml.block_sparse_attention(q, k, v, sel, backend="triton_q_outer")  # inference is fine
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton", deterministic="yes")


@pytest.mark.parametrize("bs, keys", [(40, 16), (64, 32)])
def test_blocks_split_over_programs_give_the_same_gradients(bs, keys):
    from msa_lab.kernels.kv_outer import kv_outer_attention
    from msa_lab.kernels.kv_outer_bwd import kv_outer_backward

    q, k, v = make_qkv(1, 150, 4, 2, 16)
    sel = random_selection(1, 2, 150, bs, 2, "group")
    dout = torch.randn_like(q)
    out, lse = kv_outer_attention(q, k, v, sel, 0.25)
    whole = kv_outer_backward(q, k, v, out, lse, dout, sel, 0.25, keys_per_program=128)
    split = kv_outer_backward(q, k, v, out, lse, dout, sel, 0.25, keys_per_program=keys)
    _, *ref = grads(q.double(), k.double(), v.double(), sel, dout.double(), scale=0.25)
    for a, b, r in zip(whole, split, ref):
        assert rel_err(a, r) < 1e-5 and rel_err(b, r) < 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk,per,chunk", [
    (1, 100, 4, 2, 16, 16, 3, "group", 37),   # chunks that cut blocks, a short last chunk
    (2, 77, 8, 1, 32, 16, 4, "head", 9),      # 9 chunks of 9 queries and one of 5, per head
    (1, 64, 16, 1, 32, 16, 3, "group", 16),   # chunks on block boundaries, GQA 16
])
def test_query_chunks_of_dq_partials_give_the_same_gradients(kernel_settings, B, N, Hq, Hkv, D, bs, topk, per, chunk,
                                                             deterministic):
    """dQ partials are per (query, slot) and summed per chunk of queries; with the buffer
    poisoned, a slot the kernel fails to write would show as NaN."""
    from msa_lab.kernels.kv_outer import kv_outer_attention
    from msa_lab.kernels.kv_outer_bwd import kv_outer_backward

    kernel_settings(poison_partials=True)
    q, k, v = make_qkv(B, N, Hq, Hkv, D)
    sel = random_selection(B, Hkv if per == "group" else Hq, N, bs, topk, per)
    dout = torch.randn_like(q)
    out, lse = kv_outer_attention(q, k, v, sel, D ** -0.5)
    got = kv_outer_backward(q, k, v, out, lse, dout, sel, D ** -0.5, deterministic=deterministic,
                            query_chunk=chunk)
    _, *ref = grads(q.double(), k.double(), v.double(), sel, dout.double())
    for name, g, r in zip("qkv", got, ref):
        assert rel_err(g, r) < 1e-5, (name, rel_err(g, r))
    if deterministic:
        again = kv_outer_backward(q, k, v, out, lse, dout, sel, D ** -0.5, deterministic=True, query_chunk=chunk)
        assert all(torch.equal(a, b) for a, b in zip(got, again))
