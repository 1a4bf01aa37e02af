import pytest
import torch

import msa_lab as ml
from msa_lab.data import PATTERNS, structured_qkv


def test_shapes_dtype_and_reproducibility():
    a = structured_qkv(batch=2, seq_len=300, num_heads=8, num_kv_heads=4, head_dim=32,
                       dtype=torch.bfloat16, seed=1)
    assert a.q.shape == (2, 300, 8, 32) and a.k.shape == a.v.shape == (2, 300, 4, 32)
    assert a.q.dtype == torch.bfloat16 and a.patterns == PATTERNS
    b = structured_qkv(batch=2, seq_len=300, num_heads=8, num_kv_heads=4, head_dim=32,
                       dtype=torch.bfloat16, seed=1)
    assert torch.equal(a.q, b.q) and torch.equal(a.k, b.k)
    assert not torch.equal(a.q, structured_qkv(batch=2, seq_len=300, num_heads=8, num_kv_heads=4,
                                               head_dim=32, dtype=torch.bfloat16, seed=2).q)


def test_planted_patterns_shape_attention():
    N = 2048
    local = structured_qkv(seq_len=N, num_heads=2, num_kv_heads=1, patterns="local")
    sinks = structured_qkv(seq_len=N, num_heads=2, num_kv_heads=1, patterns="heavy_hitter")
    budget = dict(block_size=64, top_k=4)
    recent = ml.coverage(local.q, local.k, ml.select_window(local.q, local.k, **budget), rows=256)
    rand = ml.coverage(local.q, local.k, ml.select_random(local.q, local.k, **budget), rows=256)
    assert recent.summary()["recall"]["mean"] > rand.summary()["recall"]["mean"] + 0.1
    from msa_lab.reference import block_mass

    rows = torch.arange(N // 2, N, 97)
    on_token0 = {name: block_mass(d.q, d.k, rows, block_size=1, scale=32 ** -0.5)[..., 0].mean()
                 for name, d in (("sinks", sinks), ("local", local))}
    assert on_token0["sinks"] > 0.01 > 20 * on_token0["local"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="patterns must be 'mixed' or from"):
        structured_qkv(seq_len=64, patterns="spiky")
    with pytest.raises(ValueError, match="one pattern per KV group"):
        structured_qkv(seq_len=64, num_kv_heads=2, patterns=["local"])
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        structured_qkv(seq_len=0)
    with pytest.raises(ValueError, match="head_dim must be >= 16"):
        structured_qkv(seq_len=64, head_dim=8)
