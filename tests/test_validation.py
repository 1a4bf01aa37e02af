"""Bad input raises ValueError/TypeError that names the argument and what was expected."""

import pytest
import torch

import msa_lab as ml
from conftest import make_qkv


@pytest.fixture
def qkv():
    return make_qkv(1, 64, 4, 2, 16)


def test_mismatched_shapes(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="v must have the shape of k"):
        ml.full_attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="head dim 16"):
        ml.full_attention(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="batch 1"):
        ml.full_attention(q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="seq length 64"):
        ml.block_sparse_attention(q, k[:, :32], v[:, :32], ml.select_window(q, k, block_size=16, top_k=2))
    with pytest.raises(ValueError, match=r"q must be 4-D \[batch, seq, heads, dim\]"):
        ml.full_attention(q[0], k, v)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        ml.full_attention(q.numpy(), k, v)


def test_heads_not_divisible():
    q, k, v = make_qkv(1, 32, 6, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of the number of KV heads \(4\)"):
        ml.full_attention(q, k, v)
    with pytest.raises(ValueError, match="multiple"):
        ml.select_moba(q, k, block_size=8, top_k=2)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                     ("16", TypeError), (True, TypeError), (None, TypeError)])
@pytest.mark.parametrize("arg", ["block_size", "top_k"])
def test_block_size_and_top_k(qkv, arg, bad, err):
    q, k, v = qkv
    kwargs = dict(block_size=16, top_k=2)
    kwargs[arg] = bad
    iq, ik = ml.index_from_qk(q, k)
    for call in (lambda: ml.moba_attention(q, k, v, **kwargs),
                 lambda: ml.msa_attention(q, k, v, iq, ik, **kwargs),
                 lambda: ml.select_oracle(q, k, **kwargs),
                 lambda: ml.select_window(q, k, **kwargs)):
        with pytest.raises(err, match=f"{arg} must be a positive int"):
            call()


def test_numpy_ints_are_accepted(qkv):
    import numpy as np

    q, k, _ = qkv
    sel = ml.select_moba(q, k, block_size=np.int64(16), top_k=np.int32(2))
    assert sel.block_size == 16 and isinstance(sel.block_size, int)


def test_index_shapes(qkv):
    q, k, v = qkv
    iq = torch.randn(1, 64, 2, 8)
    with pytest.raises(ValueError, match="index_k must be .*index_dim=8"):
        ml.select_msa(iq, torch.randn(1, 64, 1, 4))
    with pytest.raises(ValueError, match="index_k must have 1 shared index head or 2"):
        ml.select_msa(iq, torch.randn(1, 64, 3, 8))
    with pytest.raises(ValueError, match="index_q must be 4-D"):
        ml.select_msa(iq[0], torch.randn(1, 64, 1, 8))
    with pytest.raises(ValueError, match=r"index_q must be \[batch=1, seq=64, groups=2"):
        ml.msa_attention(q, k, v, torch.randn(1, 64, 4, 8), torch.randn(1, 64, 1, 8))
    with pytest.raises(ValueError, match="index_k must be"):
        ml.msa_attention(q, k, v, iq, torch.randn(1, 32, 1, 8))


def test_mixed_devices_and_dtypes(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        ml.full_attention(q, k.to("meta"), v)
    with pytest.raises(TypeError, match="v has dtype torch.float64 but q has torch.float32"):
        ml.full_attention(q, k, v.double())
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        ml.full_attention(q.int(), k.int(), v.int())
    with pytest.raises(TypeError, match="index_k has dtype"):
        ml.select_msa(torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4).double())
    sel = ml.select_window(q, k, block_size=16, top_k=2).to("meta")
    with pytest.raises(ValueError, match="selection is on meta but q is on cpu"):
        ml.block_sparse_attention(q, k, v, sel)


def test_selection_that_does_not_fit(qkv):
    q, k, v = qkv
    per_head = ml.select_window(q, k, block_size=16, top_k=2, per="head")
    per_group = ml.select_window(q, k, block_size=16, top_k=2, per="group")
    ml.block_sparse_attention(q, k, v, per_head)
    ml.block_sparse_attention(q, k, v, per_group)
    q8 = torch.randn(1, 64, 8, 16)
    with pytest.raises(ValueError, match=r"selection.indices must be \[batch=1, heads=8, seq=64"):
        ml.block_sparse_attention(q8, k, v, per_head)
    with pytest.raises(TypeError, match="selection must be a BlockSelection"):
        ml.block_sparse_attention(q, k, v, per_group.indices)
    with pytest.raises(ValueError, match=r"selection.indices must be \[batch=1, kv_heads=2, seq=64"):
        ml.block_sparse_attention(q, k, v, ml.BlockSelection(per_group.indices[:, :1], 16))
    with pytest.raises(ValueError, match=r"selection 'x'.indices must be \[batch=1, kv_heads=2"):
        ml.coverage(q, k, {"x": ml.BlockSelection(per_group.indices[:, :1], 16)})
    future = per_group.indices.clone()
    future[0, 0, 5, 1] = 3
    with pytest.raises(ValueError, match="not causal"):
        ml.BlockSelection(future, 16)
    out_of_range = per_group.indices.clone()
    out_of_range[0, 0, 63, 1] = 4
    with pytest.raises(ValueError, match=r"range"):
        ml.BlockSelection(out_of_range, 16)


def test_backend_names(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="backend must be one of 'reference', 'sdpa', 'triton', 'auto'; got 'cuda'"):
        ml.full_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of 'reference', 'flex', 'triton', 'triton_q_outer', 'auto'"):
        ml.moba_attention(q, k, v, block_size=16, top_k=2, backend="cutlass")
    with pytest.raises(ValueError, match="backend='sdpa' cannot return the LSE; use backend='reference' or 'triton'"):
        ml.full_attention(q, k, v, backend="sdpa", return_lse=True)


def test_scale_and_coverage_arguments(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        ml.full_attention(q, k, v, scale=-1.0)
    with pytest.raises(TypeError, match="scale must be a float"):
        ml.full_attention(q, k, v, scale="0.1")
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    with pytest.raises(ValueError, match="rows must be a positive int"):
        ml.coverage(q, k, sel, rows=0)
    with pytest.raises(ValueError, match=r"rows must be query positions in \[0, 63\]"):
        ml.coverage(q, k, sel, rows=torch.tensor([64]))
    with pytest.raises(TypeError, match="selection 'a' must be a BlockSelection"):
        ml.coverage(q, k, {"a": sel.indices})
    with pytest.raises(ValueError, match="per must be 'group' or 'head'"):
        ml.select_oracle(q, k, block_size=16, top_k=2, per="token")


def test_edge_arguments_found_in_review(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        ml.full_attention(q, k, v, scale=float("inf"))
    with pytest.raises(ValueError, match="head dim must be positive"):
        ml.full_attention(q[..., :0], k[..., :0], v[..., :0])
    with pytest.raises(ValueError, match="query heads must be positive"):
        ml.full_attention(q[:, :, :0], k, v)
    with pytest.raises(ValueError, match="index_q must have batch, seq, groups and index_dim > 0"):
        ml.select_msa(torch.randn(1, 0, 2, 8), torch.randn(1, 0, 1, 8))
    with pytest.raises(ValueError, match="batch, heads, seq and top_k > 0"):
        ml.BlockSelection(torch.zeros(0, 1, 4, 1, dtype=torch.int32), 4)
    with pytest.raises(TypeError, match="causal must be True or False"):
        ml.full_attention(q, k, v, causal="no")
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    with pytest.raises(TypeError, match="rows must be an integer tensor"):
        ml.coverage(q, k, sel, rows=torch.tensor([True, False]))
    with pytest.raises(TypeError, match="rows must be an integer tensor"):
        ml.coverage(q, k, sel, rows=torch.tensor([1.7]))
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
        ml.coverage(q, k, sel, threshold="a")
    with pytest.raises(TypeError, match="seed must be an int"):
        ml.select_random(q, k, block_size=16, top_k=2, seed="a")
    with pytest.raises(ValueError, match="per_head=True needs"):
        ml.output_error(q[0], q[0], per_head=True)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        ml.select_top_blocks(torch.zeros(4, 2), torch.arange(4), block_size=2, top_k=0)
