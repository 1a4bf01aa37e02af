"""Changing tokens after position t never changes output t or the selection of row t."""

import pytest
import torch

import msa_lab as ml
from conftest import make_qkv


def perturb_after(x, t):
    y = x.clone()
    y[:, t + 1:] = torch.randn_like(y[:, t + 1:]) * 3
    return y


@pytest.mark.parametrize("t", [0, 37, 63, 64, 100])
def test_outputs_and_selections_ignore_the_future(t):
    N, bs = 130, 32
    q, k, v = make_qkv(2, N, 8, 2, 16, torch.float64)
    iq, ik = torch.randn(2, N, 2, 8, dtype=torch.float64), torch.randn(2, N, 1, 8, dtype=torch.float64)
    q2, k2, v2, iq2, ik2 = (perturb_after(x, t) for x in (q, k, v, iq, ik))
    keep = slice(0, t + 1)

    def check(a, b):
        assert torch.allclose(a[:, keep], b[:, keep], rtol=0, atol=1e-12)

    check(ml.full_attention(q, k, v), ml.full_attention(q2, k2, v2))
    o1, s1 = ml.moba_attention(q, k, v, block_size=bs, top_k=2, return_selection=True)
    o2, s2 = ml.moba_attention(q2, k2, v2, block_size=bs, top_k=2, return_selection=True)
    check(o1, o2)
    assert torch.equal(s1.indices[:, :, keep], s2.indices[:, :, keep])
    o1, s1 = ml.msa_attention(q, k, v, iq, ik, block_size=bs, top_k=2, return_selection=True)
    o2, s2 = ml.msa_attention(q2, k2, v2, iq2, ik2, block_size=bs, top_k=2, return_selection=True)
    check(o1, o2)
    assert torch.equal(s1.indices[:, :, keep], s2.indices[:, :, keep])
    for per in ("group", "head"):
        a = ml.select_oracle(q, k, block_size=bs, top_k=2, per=per)
        b = ml.select_oracle(q2, k2, block_size=bs, top_k=2, per=per)
        assert torch.equal(a.indices[:, :, keep], b.indices[:, :, keep])
