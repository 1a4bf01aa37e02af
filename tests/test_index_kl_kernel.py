"""Fused index KL loss (``kernels/index_kl.py``; interpreted on the CPU in CI) against the
PyTorch reference of ``index_kl_loss`` in float64: the loss and its gradients in index_q and
index_k."""

import pytest
import torch

import msa_lab as ml
from conftest import GRAD_DTYPES, make_qkv, rel_err
from msa_lab.nn import Attention, index_kl_loss
from test_block_sparse import random_selection

SHAPES = [
    # B, N, Hq, Hkv, D, Di, block, top_k
    (1, 100, 4, 2, 16, 8, 16, 3),    # G 2, Di < D, partial last block
    (2, 77, 8, 1, 32, 16, 16, 4),    # G 8, batch 2
    (1, 64, 16, 1, 16, 24, 16, 3),   # G 16 (MSA's ratio), Di > D and not a power of 2
    (1, 50, 3, 3, 24, 12, 24, 9),    # G 1, block not a power of 2, top_k > blocks
    (2, 45, 12, 3, 8, 16, 8, 4),     # G 4, tiny head dim
]


def index_inputs(B, N, Hkv, Di, dtype=torch.float32):
    return torch.randn(B, N, Hkv, Di).to(dtype), torch.randn(B, N, 1, Di).to(dtype)


def loss_and_grads(iq, ik, q, k, sel, **kw):
    iq, ik = (x.detach().clone().requires_grad_() for x in (iq, ik))
    loss = index_kl_loss(iq, ik, q, k, sel, **kw)
    loss.backward()
    return loss.detach(), iq.grad, ik.grad


def reference(iq, ik, q, k, sel, **kw):
    return loss_and_grads(*(x.double() for x in (iq, ik, q, k)), sel, backend="reference", **kw)


def assert_close(got, ref, tol, dtype):
    for name, g, r in zip(("loss", "d index_q", "d index_k"), got, ref):
        assert g.dtype == (torch.float32 if name == "loss" else dtype), name
        assert rel_err(g, r) < tol, (name, rel_err(g, r))


@pytest.mark.parametrize("B,N,Hq,Hkv,D,Di,bs,topk", SHAPES)
@pytest.mark.parametrize("dtype,tol", GRAD_DTYPES)
def test_loss_and_gradients_match_the_reference(B, N, Hq, Hkv, D, Di, bs, topk, dtype, tol):
    q, k, _ = make_qkv(B, N, Hq, Hkv, D, dtype)
    iq, ik = index_inputs(B, N, Hkv, Di, dtype)
    sel = random_selection(B, Hkv, N, bs, topk, "group")
    assert_close(loss_and_grads(iq, ik, q, k, sel, backend="triton"), reference(iq, ik, q, k, sel), tol, dtype)


def test_selection_from_the_index_branch_itself():
    q, k, _ = make_qkv(1, 96, 8, 2, 16)
    iq, ik = index_inputs(1, 96, 2, 16)
    sel = ml.select_msa(iq, ik, block_size=16, top_k=4)
    assert_close(loss_and_grads(iq, ik, q, k, sel, backend="triton"), reference(iq, ik, q, k, sel),
                 1e-5, torch.float32)


def test_rows_without_visible_tokens_count_zero_and_never_give_nan():
    q, k, _ = make_qkv(1, 48, 4, 2, 16)
    iq, ik = index_inputs(1, 48, 2, 16)
    sel = random_selection(1, 2, 48, 16, 2, "group", drop_local=True)  # the first block's rows: empty
    got = loss_and_grads(iq, ik, q, k, sel, backend="triton")
    assert bool((got[1][0, :16] == 0).all())
    assert_close(got, reference(iq, ik, q, k, sel), 1e-5, torch.float32)


def test_the_attention_lse_as_teacher_normaliser_gives_the_same_loss():
    q, k, v = make_qkv(1, 70, 8, 2, 16)
    iq, ik = index_inputs(1, 70, 2, 8)
    sel = random_selection(1, 2, 70, 16, 3, "group")
    _, lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    ref = reference(iq, ik, q, k, sel)
    assert_close(loss_and_grads(iq, ik, q, k, sel, backend="triton", lse=lse), ref, 1e-5, torch.float32)
    assert_close(loss_and_grads(iq, ik, q, k, sel, lse=lse), ref, 1e-5, torch.float32)  # the reference too


def test_gradients_are_scaled_by_the_upstream_gradient_and_auto_picks_by_device():
    q, k, _ = make_qkv(1, 40, 4, 2, 16)
    iq, ik = index_inputs(1, 40, 2, 16)
    sel = random_selection(1, 2, 40, 8, 3, "group")
    a = iq.clone().requires_grad_()
    loss = index_kl_loss(a, ik, q, k, sel, backend="triton")
    (3 * loss).backward()
    _, ref_dq, _ = reference(iq, ik, q, k, sel)
    assert rel_err(a.grad, 3 * ref_dq) < 1e-5
    with torch.no_grad():
        auto = index_kl_loss(iq, ik, q, k, sel, backend="auto")
        if iq.is_cuda:  # the kernel sums the loss with float32 atomics: the last bits vary by run
            assert rel_err(auto, index_kl_loss(iq, ik, q, k, sel, backend="triton")) < 1e-6
        else:
            assert torch.equal(auto, index_kl_loss(iq, ik, q, k, sel, backend="reference"))


def test_msa_layer_trains_its_indexer_through_the_kernel():
    torch.manual_seed(5)
    x = torch.randn(1, 50, 32)
    ref = Attention(32, 8, 2, method="msa", block_size=8, top_k=3, index_dim=12, backend="reference")
    tri = Attention(32, 8, 2, method="msa", block_size=8, top_k=3, index_dim=12, backend="triton")
    tri.load_state_dict(ref.state_dict())
    grads = []
    for layer in (ref, tri):
        _, aux = layer(x)
        aux.backward()
        grads.append((aux.detach(), layer.indexer.wq.weight.grad, layer.indexer.wk.weight.grad))
    assert all(rel_err(b, a) < 1e-5 for a, b in zip(*grads))
    tri.sparse = False  # the dense warm-up: the reference loss, whatever the backend
    _, aux = tri(x)
    assert aux.item() > 0


def test_bad_inputs_raise_errors_that_name_the_argument(monkeypatch):
    q, k, _ = make_qkv(1, 32, 4, 2, 16)
    iq, ik = index_inputs(1, 32, 2, 16)
    sel = random_selection(1, 2, 32, 8, 2, "group")
    with pytest.raises(ValueError, match="backend must be"):
        index_kl_loss(iq, ik, q, k, sel, backend="flex")
    with pytest.raises(ValueError, match="backend='triton'.*selection=None"):
        index_kl_loss(iq, ik, q, k, None, backend="triton")
    with pytest.raises(ValueError, match="lse must be a float tensor"):
        index_kl_loss(iq, ik, q, k, sel, lse=torch.zeros(1, 32, 4), backend="triton")
    with pytest.raises(ValueError, match="lse is the main sparse attention's LSE"):
        index_kl_loss(iq, ik, q, k, None, lse=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="index_k in index_q's dtype"):
        index_kl_loss(iq, ik.half(), q, k, sel, backend="triton")
    with pytest.raises(TypeError, match="backend='triton' supports float16"):
        index_kl_loss(iq.double(), ik.double(), q.double(), k.double(), sel, backend="triton")
    with pytest.raises(ValueError, match="selection.indices must be"):
        index_kl_loss(iq, ik, q, k, random_selection(1, 1, 32, 8, 2, "group"), backend="triton")
    from msa_lab import triton_runtime as runtime

    monkeypatch.setattr(runtime, "interpreted", lambda: False)  # a CPU without TRITON_INTERPRET
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA GPU"):
        index_kl_loss(iq.cpu(), ik.cpu(), q.cpu(), k.cpu(), sel.to("cpu"), backend="triton")
