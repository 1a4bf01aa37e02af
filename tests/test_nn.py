"""Trainable layers: RoPE, MSA's index branch and its KL loss, the attention layer, TinyLM."""

import math

import pytest
import torch
import torch.nn.functional as F

import msa_lab as ml
from conftest import TEST_DEVICE, causal_mask, rel_err, token_mask_from_blocks
from msa_lab.nn import Attention, TinyLM, index_kl_loss, rotary


def test_rotary_scores_depend_on_relative_position_only_and_partial_dims_pass_through():
    q, k = torch.randn(1, 1, 1, 16).expand(1, 40, 1, 16), torch.randn(1, 1, 1, 16).expand(1, 40, 1, 16)
    rq, rk = rotary(q.double()), rotary(k.double())
    s = torch.einsum("bihd,bjhd->ij", rq, rk)
    assert torch.allclose(s[10, 3], s[30, 23]) and torch.allclose(s[5, 5], s[39, 39])
    x = torch.randn(2, 7, 3, 16)
    part = rotary(x, 8)
    assert torch.equal(part[..., 8:], x[..., 8:]) and not torch.allclose(part[..., :8], x[..., :8])
    assert torch.allclose(part.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    with pytest.raises(ValueError, match="rotary_dims must be an even int"):
        rotary(x, 7)


def brute_force_kl(index_q, index_k, q, k, allowed):
    """KL per (b, t, g) with dense [N, N] matrices, float64."""
    B, N, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv
    s = torch.einsum("bthd,bjhd->bhtj", q.double(), k.double().repeat_interleave(G, 2)) * D ** -0.5
    s = s.masked_fill(~allowed.repeat_interleave(G, 1), float("-inf"))
    teacher = s.softmax(-1).view(B, Hkv, G, N, N).mean(2)
    z = torch.einsum("btgd,bjd->bgtj", index_q.double(), index_k[:, :, 0].double()) * index_q.shape[-1] ** -0.5
    log_student = z.masked_fill(~allowed, float("-inf")).log_softmax(-1)
    kl = torch.where(teacher > 0, teacher * (teacher.clamp_min(1e-300).log() - log_student), 0.0)
    return kl.sum() / (B * N * Hkv), teacher, log_student.exp()


@pytest.mark.parametrize("sparse", [False, True])
def test_index_kl_matches_brute_force_and_its_gradient_is_p_student_minus_p_teacher(sparse):
    B, N, Hq, Hkv, D, Di = 2, 70, 6, 2, 8, 12
    q, k = torch.randn(B, N, Hq, D, dtype=torch.float64), torch.randn(B, N, Hkv, D, dtype=torch.float64)
    index_q = torch.randn(B, N, Hkv, Di, dtype=torch.float64, requires_grad=True)
    index_k = torch.randn(B, N, 1, Di, dtype=torch.float64, requires_grad=True)
    allowed = causal_mask(N).view(1, 1, N, N).expand(B, Hkv, N, N)
    sel = None
    if sparse:
        sel = ml.select_msa(index_q.detach(), index_k.detach(), block_size=16, top_k=2)
        allowed = token_mask_from_blocks(sel.dense_mask(), 16, N)
    loss = index_kl_loss(index_q, index_k, q, k, sel, query_chunk=23)
    ref, teacher, student = brute_force_kl(index_q, index_k, q, k, allowed)
    assert loss.dtype == torch.float64 and math.isclose(loss.item(), ref.detach().item(), rel_tol=1e-10)
    assert loss.item() > 0
    z = (torch.einsum("btgd,bjd->bgtj", index_q, index_k[:, :, 0]) * Di ** -0.5)
    (dz,) = torch.autograd.grad(index_kl_loss(index_q, index_k, q, k, sel),
                                [index_q], retain_graph=True)
    expected_dz = torch.where(allowed, student - teacher, 0.0) / (B * N * Hkv)
    (expected,) = torch.autograd.grad(z, [index_q], grad_outputs=expected_dz)
    assert rel_err(dz, expected) < 1e-10


def test_index_kl_is_zero_when_the_index_equals_the_main_branch_and_never_reaches_it():
    q = torch.randn(1, 50, 1, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 50, 1, 16, dtype=torch.float64, requires_grad=True)
    loss = index_kl_loss(q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_(), q, k)
    assert abs(loss.item()) < 1e-12
    index_q = torch.randn(1, 50, 1, 16, requires_grad=True)
    index_kl_loss(index_q, torch.randn(1, 50, 1, 16), q, k).backward()
    assert q.grad is None and k.grad is None and index_q.grad is not None
    with pytest.raises(ValueError, match="index_q must be"):
        index_kl_loss(torch.randn(1, 50, 2, 16), torch.randn(1, 50, 1, 16), q, k)



@pytest.mark.parametrize("sparse", [False, True])
def test_index_kl_keeps_float32_under_a_bf16_autocast(sparse):
    """A model trained with train.dtype bf16-mixed calls the loss under autocast: it must not
    round the logits to bf16 (the loss of identical distributions stays 0)."""
    q, k = torch.randn(2, 70, 4, 16), torch.randn(2, 70, 2, 16)
    iq, ik = torch.randn(2, 70, 2, 16, requires_grad=True), torch.randn(2, 70, 1, 16)
    sel = ml.select_msa(iq.detach(), ik, block_size=16, top_k=2) if sparse else None
    plain = index_kl_loss(iq, ik, q, k, sel)
    (g_plain,) = torch.autograd.grad(plain, iq)
    with torch.autocast(TEST_DEVICE, dtype=torch.bfloat16):
        mixed = index_kl_loss(iq, ik, q, k, sel)
    (g_mixed,) = torch.autograd.grad(mixed, iq)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain) and torch.equal(g_mixed, g_plain)
    same = torch.randn(1, 40, 1, 16)
    with torch.autocast(TEST_DEVICE, dtype=torch.bfloat16):
        assert index_kl_loss(same, same, same, same).item() == pytest.approx(0, abs=1e-6)

def copy_weights(dst, src):
    dst.load_state_dict(src.state_dict())
    return dst


@pytest.mark.parametrize("method", ["moba", "msa"])
def test_sparse_layer_covering_every_block_equals_full_attention(method):
    torch.manual_seed(0)
    x = torch.randn(2, 45, 32)
    full = Attention(32, 4, 2, method="full", backend="reference")
    sparse = Attention(32, 4, 2, method=method, block_size=8, top_k=6, backend="reference")  # 6 blocks = all
    sparse.load_state_dict(full.state_dict(), strict=False)
    y_full, aux_full = full(x)
    y, aux = sparse(x)
    assert aux_full is None and (aux is not None) == (method == "msa")
    assert rel_err(y, y_full) < 1e-5
    assert sparse.last_selection is not None and sparse.last_selection.top_k == 6


def test_sparse_switch_runs_full_attention_and_the_warm_up_distils_every_token():
    torch.manual_seed(1)
    x = torch.randn(1, 64, 32)
    layer = Attention(32, 4, 2, method="msa", block_size=8, top_k=2, backend="reference")
    dense = copy_weights(Attention(32, 4, 2, method="msa", block_size=8, top_k=2, backend="reference"), layer)
    dense.sparse = False
    y_sparse, kl_sparse = layer(x)
    y_dense, kl_dense = dense(x)
    assert dense.last_selection is None and layer.last_selection is not None
    assert rel_err(y_sparse, y_dense) > 1e-3  # top-2 of 8 blocks is not full attention
    assert kl_dense.item() != kl_sparse.item()  # every visible token vs the selected ones
    y_dense.sum().backward()
    kl_dense.backward()
    assert dense.indexer.wq.weight.grad is not None
    with torch.no_grad():
        assert layer(x)[1] is None  # no loss without gradients (evaluation)


def test_tiny_lm_trains_and_checks_its_arguments():
    torch.manual_seed(2)
    tokens = torch.randint(0, 32, (4, 48))
    model = TinyLM(32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, method="msa", block_size=8,
                   top_k=3, full_layers=(1,), backend="reference")
    assert [layer.method for layer in model.attention_layers] == ["msa", "full"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits, aux = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        losses.append(loss.item())
        opt.zero_grad()
        (loss + aux).backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0]  # memorises a fixed batch
    model.set_sparse(False)
    assert not any(layer.sparse for layer in model.attention_layers)
    model.set_sparse(True)
    assert [layer.sparse for layer in model.attention_layers] == [True, False]
    with pytest.raises(ValueError, match="full_layers must be layer indices"):
        TinyLM(32, num_layers=2, full_layers=(2,))
    with pytest.raises(ValueError, match="method"):
        Attention(32, 4, 2, method="nsa")


def test_triton_layer_matches_the_reference_layer_forward_and_backward():
    torch.manual_seed(3)
    x = torch.randn(1, 70, 32)
    ref = Attention(32, 4, 2, method="msa", block_size=16, top_k=2, backend="reference")
    tri = copy_weights(Attention(32, 4, 2, method="msa", block_size=16, top_k=2, backend="triton"), ref)
    outs = []
    for layer in (ref, tri):
        xx = x.clone().requires_grad_()
        y, aux = layer(xx)
        (y.square().sum() + aux).backward()
        outs.append((y, xx.grad, layer.wk.weight.grad, layer.indexer.wq.weight.grad))
    for a, b in zip(*outs):
        assert rel_err(b, a) < 1e-5


@pytest.mark.parametrize("sparse", [True, False])
def test_index_kl_reaches_only_the_index_projections(sparse):
    """SPEC: the KL's gradient reaches the index projections, never the backbone (the layer
    input, the main q/k/v/o projections); sparse routing or the dense warm-up alike."""
    layer = Attention(32, 4, 2, method="msa", block_size=16, top_k=2, backend="reference")
    layer.sparse = sparse
    x = torch.randn(2, 70, 32, requires_grad=True)
    _, aux = layer(x)
    aux.backward()
    assert x.grad is None or not x.grad.any()
    for name, p in layer.named_parameters():
        touched = p.grad is not None and bool(p.grad.any())
        assert touched == name.startswith("indexer."), name


def test_a_layer_wider_than_128_with_small_heads_runs_the_triton_kernels():
    # The head-dim limit of the Triton kernels is about q's head dim, not the layer's width.
    layer = Attention(d_model=256, num_heads=8, num_kv_heads=2, method="msa", block_size=16, top_k=2,
                      backend="triton")
    y, aux = layer(torch.randn(1, 40, 256))
    assert y.shape == (1, 40, 256) and torch.isfinite(y).all() and aux is not None
