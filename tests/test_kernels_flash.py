"""Dense Triton flash forward (interpreted on the CPU in CI) against the reference."""

import pytest
import torch

import msa_lab as ml
from conftest import make_qkv, rel_err

SHAPES = [
    # B, Nq, Nk, Hq, Hkv, D
    (1, 100, 100, 4, 2, 16),
    (2, 130, 130, 8, 1, 32),     # GQA 8, N not a multiple of the tiles
    (1, 70, 70, 16, 1, 64),      # GQA 16
    (1, 40, 40, 3, 3, 24),       # head dim not a power of two
    (1, 5, 150, 4, 2, 16),       # fewer queries than keys (decode-like), bottom-right causal
]


@pytest.mark.parametrize("B,Nq,Nk,Hq,Hkv,D", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_matches_reference(B, Nq, Nk, Hq, Hkv, D, causal, dtype, tol):
    q = torch.randn(B, Nq, Hq, D)
    k, v = torch.randn(B, Nk, Hkv, D), torch.randn(B, Nk, Hkv, D)
    ref, ref_lse = ml.full_attention(q, k, v, causal=causal, return_lse=True)
    out, lse = ml.full_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal,
                                 backend="triton", return_lse=True)
    assert out.dtype == dtype
    assert rel_err(out, ref) < tol and rel_err(lse, ref_lse) < tol


def test_scale_is_honoured():
    q, k, v = make_qkv(1, 64, 2, 1, 16)
    ref = ml.full_attention(q, k, v, scale=0.05)
    assert rel_err(ml.full_attention(q, k, v, scale=0.05, backend="triton"), ref) < 1e-5
