"""The KV-outer plan: the selection inverted once per forward and re-cut by the backward and the
index KL, with the same lists as a fresh inversion and the same outputs and gradients."""

import pytest
import torch

import msa_lab as ml
from msa_lab.nn import Attention, index_kl_loss
import msa_lab.kv_outer_plan as plan_module
from conftest import make_qkv, rel_err
from msa_lab.triton_runtime import using_kernel_settings
from msa_lab.kv_outer_plan import build_query_lists
from test_block_sparse import random_selection


def entries(lists) -> list[tuple[int, int, int]]:
    """(list id, query, slot) of every entry in work-item order: what the kernels read."""
    out = []
    for item, start, count in zip(lists.work_list.tolist(), lists.work_start.tolist(), lists.work_count.tolist()):
        out += [(item, t, s) for t, s in zip(lists.query[start:start + count].tolist(),
                                             lists.slot[start:start + count].tolist())]
    return out


@pytest.mark.parametrize("per,heads", [("group", 2), ("head", 8)])
def test_a_sub_range_cut_from_the_plan_is_the_fresh_inversion_of_it(per, heads):
    sel = random_selection(2, heads, 150, 16, 4, per)
    plan = ml.prepare_kv_outer(sel)
    whole = plan.lists(0, 150, 7)
    assert entries(whole) == entries(build_query_lists(sel, 0, 150, 7))
    for q0, q1, per_item in ((0, 150, 64), (0, 37, 5), (37, 101, 3), (101, 150, 1000), (60, 61, 2)):
        assert entries(plan.lists(q0, q1, per_item)) == entries(build_query_lists(sel, q0, q1, per_item)), (q0, q1)
    assert plan.ranges() == [(0, 150)]


def test_a_range_overlapping_a_kept_one_is_built_for_its_call_only():
    sel = random_selection(1, 2, 96, 16, 3, "group")
    plan = ml.prepare_kv_outer(sel)
    plan.lists(0, 48, 8)
    plan.lists(48, 96, 8)
    straddling = plan.lists(40, 60, 8)
    assert entries(straddling) == entries(build_query_lists(sel, 40, 60, 8))
    assert plan.ranges() == [(0, 48), (48, 96)]


def counting_builds(monkeypatch) -> list:
    calls = []
    build = plan_module._SortedEntries.build.__func__

    def counted(cls, selection, q0, q1):
        calls.append((q0, q1))
        return build(cls, selection, q0, q1)

    monkeypatch.setattr(plan_module._SortedEntries, "build", classmethod(counted))
    return calls


def test_a_training_step_of_the_msa_layer_inverts_its_selection_once(monkeypatch):
    torch.manual_seed(0)
    layer = Attention(d_model=32, num_heads=4, num_kv_heads=2, method="msa", block_size=16, top_k=3,
                            backend="triton", index_dim=8)
    x = torch.randn(1, 80, 32)
    calls = counting_builds(monkeypatch)
    out, aux = layer(x)
    (out.square().mean() + aux).backward()
    assert calls == [(0, 80)]  # the forward's one range; the backward and the KL re-cut it


@pytest.mark.parametrize("deterministic", [False, True])
def test_outputs_and_gradients_with_a_plan_equal_those_without(deterministic):
    # A small partial budget cuts the forward into several query ranges: the fast backward
    # re-cuts inside them, the deterministic one keeps its own (reproducible) chunks.
    q, k, v = make_qkv(1, 130, 8, 2, 16)
    sel = ml.select_msa(*ml.index_from_qk(q, k), block_size=16, top_k=4)
    dout = torch.randn_like(q)

    def run(plan):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        out = ml.block_sparse_attention(*leaves, sel, backend="triton", deterministic=deterministic, plan=plan)
        out.backward(dout)
        return [out] + [x.grad for x in leaves]

    without = run(None)
    with using_kernel_settings(partial_bytes=40 * 4 * 8 * (16 * 4 + 4)):  # 40 query rows a chunk
        plan = ml.prepare_kv_outer(sel)
        chunked = run(plan)
    assert len(plan.ranges()) == 4
    for a, b in zip(run(ml.prepare_kv_outer(sel)), without):
        assert torch.equal(a, b)
    for a, b in zip(chunked, without):
        assert not torch.isnan(a).any() and rel_err(a, b) < 1e-6


def test_the_index_kl_with_the_attention_plan_equals_its_own_inversion():
    q, k, v = make_qkv(1, 70, 4, 2, 16)
    index_q, index_k = (x.requires_grad_() for x in (torch.randn(1, 70, 2, 8), torch.randn(1, 70, 1, 8)))
    sel = ml.select_msa(index_q.detach(), index_k.detach(), block_size=16, top_k=3)
    plan = ml.prepare_kv_outer(sel)
    _, lse = ml.block_sparse_attention(q, k, v, sel, backend="triton", return_lse=True, plan=plan)
    losses = [index_kl_loss(index_q, index_k, q, k, sel, lse=lse, backend="triton", plan=p)
              for p in (plan, None)]
    assert torch.equal(losses[0], losses[1])


def test_bad_plans_are_refused_with_what_to_pass():
    q, k, v = make_qkv(1, 48, 4, 2, 16)
    sel = random_selection(1, 2, 48, 16, 2, "group")
    other = random_selection(1, 2, 48, 16, 2, "group")
    with pytest.raises(ValueError, match="another selection"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton", plan=ml.prepare_kv_outer(other))
    with pytest.raises(ValueError, match="backend='triton'"):
        ml.block_sparse_attention(q, k, v, sel, backend="reference", plan=ml.prepare_kv_outer(sel))
    with pytest.raises(TypeError, match="KVOuterPlan"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton", plan="plan")
    with pytest.raises(TypeError, match="BlockSelection"):
        ml.prepare_kv_outer(sel.indices)
    plan = ml.prepare_kv_outer(sel)
    sel.indices[0, 0, -1] = sel.indices[0, 0, -1].flip(0).clone()  # edited in place (still valid) after the plan
    with pytest.raises(ValueError, match="changed in place"):
        ml.block_sparse_attention(q, k, v, sel, backend="triton", plan=plan)


def reference_grads(q, k, v, sel, dout):
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ml.block_sparse_attention(*leaves, sel).backward(dout.double())
    return [x.grad for x in leaves]


def test_a_plan_with_a_range_cut_by_hand_still_gives_every_rows_gradient():
    q, k, v = make_qkv(1, 64, 4, 2, 16)
    sel = random_selection(1, 2, 64, 16, 3, "group")
    dout = torch.randn_like(q)
    plan = ml.prepare_kv_outer(sel)
    plan.lists(0, 16, 8)  # a kept range the forward's one chunk overlaps: that chunk is not kept
    assert plan.ranges() == [(0, 16), (16, 64)]
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    ml.block_sparse_attention(*leaves, sel, backend="triton", plan=plan).backward(dout)
    for got, ref in zip((x.grad for x in leaves), reference_grads(q, k, v, sel, dout)):
        assert rel_err(got, ref) < 1e-5


def test_a_selection_with_non_contiguous_indices_trains_with_its_plan():
    q, k, v = make_qkv(1, 50, 4, 2, 16)
    ids = random_selection(1, 2, 50, 16, 3, "group").indices
    sel = ml.BlockSelection(ids.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), 16, "group")
    assert not sel.indices.is_contiguous()
    dout = torch.randn_like(q)
    for plan in (None, ml.prepare_kv_outer(sel)):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        ml.block_sparse_attention(*leaves, sel, backend="triton", plan=plan).backward(dout)
        for got, ref in zip((x.grad for x in leaves), reference_grads(q, k, v, sel, dout)):
            assert rel_err(got, ref) < 1e-5


def test_the_backward_runs_with_its_forwards_kernel_settings(monkeypatch):
    # On a GPU the backward runs on autograd's device thread, which does not see the caller's
    # context: the settings travel with the forward.
    from msa_lab.kernels import kv_outer_bwd
    from msa_lab.triton_runtime import kernel_settings

    seen, backward = [], kv_outer_bwd.kv_outer_backward
    monkeypatch.setattr(kv_outer_bwd, "kv_outer_backward",
                        lambda *args, **kw: (seen.append(kernel_settings()), backward(*args, **kw))[1])
    q, k, v = make_qkv(1, 40, 4, 2, 16)
    sel = random_selection(1, 2, 40, 16, 2, "group")
    with using_kernel_settings(backward_keys_per_program=16, poison_partials=True):
        out = ml.block_sparse_attention(q.requires_grad_(), k, v, sel, backend="triton")
    out.sum().backward()  # outside the block
    assert seen[0].backward_keys_per_program == 16 and seen[0].poison_partials
