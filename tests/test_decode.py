"""Decoding against the prefill path: decoding the token at position t must give row t of
msa_attention / full_attention on the whole sequence."""

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, msa_scores64, rel_err


def sequence(B, N, Hq, Hkv, D, Di):
    return (torch.randn(B, N, Hq, D), torch.randn(B, N, Hkv, D), torch.randn(B, N, Hkv, D),
            torch.randn(B, N, Hkv, Di), torch.randn(B, N, 1, Di))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("B,N,Hq,Hkv,D,Di,bs,topk", [
    (2, 150, 8, 2, 16, 8, 16, 3),
    (1, 97, 16, 1, 32, 16, 10, 4),    # GQA 16, block not a power of two
    (1, 40, 4, 4, 16, 8, 16, 8),      # top_k above the number of blocks
])
def test_step_by_step_decode_equals_prefill_rows(backend, B, N, Hq, Hkv, D, Di, bs, topk):
    q, k, v, iq, ik = draw_without_near_ties(lambda: sequence(B, N, Hq, Hkv, D, Di),
                                             lambda q, k, v, iq, ik: msa_scores64(iq, ik, bs), bs, topk)
    full, sel = ml.msa_attention(q, k, v, iq, ik, block_size=bs, top_k=topk, return_selection=True)
    cache = ml.KVCache.from_prefill(k[:, :N - 3], v[:, :N - 3], ik[:, :N - 3], max_len=N)
    for t in range(N - 3, N):
        cache.append(k[:, t:t + 1], v[:, t:t + 1], ik[:, t:t + 1])
        out, ids = ml.msa_decode(q[:, t:t + 1], iq[:, t:t + 1], cache, block_size=bs, top_k=topk,
                                 backend=backend, return_blocks=True)
        assert rel_err(out, full[:, t:t + 1]) < 1e-5
        expected = sel.canonical().indices[:, :, t]
        got = ml.BlockSelection._trusted(ids.unsqueeze(2), bs, "group").canonical().indices[:, :, 0]
        assert torch.equal(got, expected)
        assert torch.equal(ids[..., 0], torch.full_like(ids[..., 0], t // bs))  # local block first


@pytest.mark.parametrize("B, L, Hq, Hkv", [(2, 77, 8, 2), (1, 1000, 16, 1), (3, 200, 3, 3)])
def test_dense_decode_equals_last_row_of_full_attention(B, L, Hq, Hkv):
    # L = 1000 with one KV head: 16 key splits of 64 (the last one partial) to merge
    q, k, v, _, _ = sequence(B, L, Hq, Hkv, 16, 8)
    cache = ml.KVCache.from_prefill(k, v)
    full = ml.full_attention(q, k, v)
    for backend in ("reference", "sdpa", "triton"):
        assert rel_err(ml.dense_decode(q[:, -1:], cache, backend=backend), full[:, -1:]) < 1e-5


def test_cache_checks():
    cache = ml.KVCache(2, 10, 2, 16, index_dim=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="cache is empty"):
        ml.msa_decode(torch.randn(2, 1, 4, 16), torch.randn(2, 1, 2, 8), cache)
    with pytest.raises(ValueError, match="index_k must be given exactly when"):
        cache.append(torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16))
    with pytest.raises(ValueError, match="max_len=10"):
        cache.append(torch.randn(2, 11, 2, 16), torch.randn(2, 11, 2, 16), torch.randn(2, 11, 1, 8))
    cache.append(torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16), torch.randn(2, 3, 1, 8))
    assert cache.length == 3 and cache.keys().shape == (2, 3, 2, 16)
    with pytest.raises(ValueError, match=r"q must be \[batch=2, 1, heads"):
        ml.msa_decode(torch.randn(2, 2, 4, 16), torch.randn(2, 1, 2, 8), cache)
    with pytest.raises(ValueError, match=r"index_q must be \[batch=2, 1, groups=2, index_dim=8\]"):
        ml.msa_decode(torch.randn(2, 1, 4, 16), torch.randn(2, 1, 2, 4), cache)
    with pytest.raises(ValueError, match="needs a cache built with index_dim"):
        ml.msa_decode(torch.randn(2, 1, 4, 16), torch.randn(2, 1, 2, 8), ml.KVCache.from_prefill(
            torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16)))


def test_half_precision_triton_decode():
    q, k, v, iq, ik = draw_without_near_ties(lambda: tuple(x.half() for x in sequence(2, 120, 8, 2, 32, 16)),
                                             lambda q, k, v, iq, ik: msa_scores64(iq, ik, 16), 16, 3)
    cache = ml.KVCache.from_prefill(k, v, ik)
    ref = ml.msa_decode(q[:, -1:], iq[:, -1:], cache, block_size=16, top_k=3)
    out = ml.msa_decode(q[:, -1:], iq[:, -1:], cache, block_size=16, top_k=3, backend="triton")
    assert out.dtype == torch.float16 and rel_err(out, ref) < 2e-3


def test_cache_follows_torchs_default_device():
    with torch.device("meta"):
        cache = ml.KVCache(1, 8, 1, 16, index_dim=4)
    assert cache.k.is_meta and cache.v.is_meta and cache.index_k.is_meta
    assert ml.KVCache(1, 8, 1, 16, device="meta").k.is_meta


def test_cache_refuses_other_dtypes_and_bad_max_len():
    cache = ml.KVCache(1, 8, 1, 16, index_dim=4, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"k must be torch.float16 on \S+ like the cache, got torch.float32"):
        cache.append(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16).half(), torch.randn(1, 2, 1, 4).half())
    with pytest.raises(TypeError, match="index_k must be a torch.Tensor"):
        cache.append(torch.randn(1, 2, 1, 16).half(), torch.randn(1, 2, 1, 16).half(), "str")
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        ml.KVCache.from_prefill(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16), max_len=0)
