"""Inputs that used to give wrong numbers, hang or allocate without a word are refused by
name: bf16 under the Triton interpreter, a scale that overflows float32, top_k and
block_size far beyond the input, a selection edited after its checks, non-bool flags."""

import pytest
import torch

import msa_lab as ml
from conftest import TEST_DEVICE, make_qkv
from msa_lab.nn.indexer import index_kl_loss


@pytest.fixture
def qkv():
    return make_qkv(1, 64, 4, 2, 16)


def triton_entries(head_dim: int, dtype=torch.float32) -> dict:
    """Every public call that launches Triton kernels, on inputs of ``head_dim`` and ``dtype``."""
    q, k, v = make_qkv(1, 32, 4, 2, head_dim, dtype)
    iq, ik = torch.randn(1, 32, 2, head_dim).to(dtype), torch.randn(1, 32, 1, head_dim).to(dtype)
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    cache = ml.KVCache.from_prefill(k, v, ik)
    return {
        "flash": lambda: ml.full_attention(q, k, v, backend="triton"),
        "kv_outer": lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton"),
        "q_outer": lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton_q_outer"),
        "backward": lambda: ml.block_sparse_attention(q.requires_grad_(), k, v, sel, backend="triton"),
        "moba": lambda: ml.moba_attention(q, k, v, block_size=16, top_k=2, backend="triton"),
        "quest": lambda: ml.select_quest(q, k, block_size=16, top_k=2, backend="triton"),
        "msa_selection": lambda: ml.select_msa(iq, ik, block_size=16, top_k=2, backend="triton"),
        "msa_decode": lambda: ml.msa_decode(q[:, -1:], iq[:, -1:], cache, block_size=16, top_k=2,
                                            backend="triton"),
        "dense_decode": lambda: ml.dense_decode(q[:, -1:], cache, backend="triton"),
        "index_kl": lambda: index_kl_loss(iq, ik, q, k, sel, backend="triton"),
    }


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the interpreter runs on the CPU")
def test_every_triton_entry_refuses_bfloat16_under_the_interpreter():
    for name, call in triton_entries(16, torch.bfloat16).items():
        with pytest.raises(TypeError, match="bfloat16 inputs under TRITON_INTERPRET=1.*float16 or float32"):
            call()


def test_every_triton_entry_refuses_head_dims_above_128_before_a_launch():
    for name, call in triton_entries(136).items():
        with pytest.raises(ValueError, match="takes head dims up to 128.*got 136"):
            call()
    q, k, v = make_qkv(1, 32, 4, 2, 136)
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    assert ml.block_sparse_attention(q, k, v, sel).shape == q.shape  # the reference takes any head dim


@pytest.mark.parametrize("scale", [1e38, 1e300, 1e-300, 2.0 ** 16 * 1.01])
def test_a_scale_that_can_overflow_or_flush_float32_is_refused(qkv, scale):
    q, k, v = qkv
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    iq, ik = ml.index_from_qk(q, k)
    for call in (lambda: ml.full_attention(q, k, v, scale=scale),
                 lambda: ml.full_attention(q, k, v, scale=scale, backend="triton"),
                 lambda: ml.block_sparse_attention(q, k, v, sel, scale=scale, backend="triton"),
                 lambda: ml.msa_attention(q, k, v, iq, ik, block_size=16, top_k=2, scale=scale),
                 lambda: ml.select_oracle(q, k, block_size=16, top_k=2, scale=scale)):
        with pytest.raises(ValueError, match=r"scale must lie in \[2\*\*-64, 2\*\*16\]"):
            call()


def test_the_ends_of_the_scale_range_are_accepted(qkv):
    q, k, v = qkv
    for scale in (2.0 ** -64, 2.0 ** 16):
        assert torch.isfinite(ml.full_attention(q / 1e3, k / 1e3, v, scale=scale)).all()


@pytest.mark.parametrize("arg,value", [("top_k", 10 ** 12), ("top_k", 10_000), ("block_size", 10 ** 12)])
def test_top_k_and_block_size_far_beyond_the_input_fail_fast(qkv, arg, value):
    q, k, v = qkv
    iq, ik = torch.randn(1, 64, 2, 8), torch.randn(1, 64, 1, 8)
    kwargs = {"block_size": 16, "top_k": 2, arg: value}
    cache = ml.KVCache.from_prefill(k, v, ik)
    for call in (lambda: ml.select_moba(q, k, **kwargs),
                 lambda: ml.select_msa(iq, ik, **kwargs, backend="triton"),
                 lambda: ml.moba_attention(q, k, v, **kwargs, backend="triton"),
                 lambda: ml.msa_attention(q, k, v, iq, ik, **kwargs),
                 lambda: ml.select_oracle(q, k, **kwargs),
                 lambda: ml.select_window(q, k, **kwargs),
                 lambda: ml.select_random(q, k, **kwargs),
                 lambda: ml.msa_decode(q[:, -1:], iq[:, -1:], cache, **kwargs)):
        with pytest.raises(ValueError, match=f"{arg} must be at most"):
            call()


def test_short_inputs_keep_padding_up_to_the_documented_limits(qkv):
    q, k, v = qkv  # 64 tokens: 4 blocks of 16
    sel = ml.select_moba(q, k, block_size=16, top_k=256)
    assert sel.top_k == 256 and bool((sel.indices[..., 4:] == -1).all())
    assert ml.select_window(q, k, block_size=1024, top_k=1).num_blocks == 1
    with pytest.raises(ValueError, match="top_k must be at most 256"):
        ml.select_moba(q, k, block_size=16, top_k=257)
    with pytest.raises(ValueError, match="block_size must be at most 1,024"):
        ml.select_window(q, k, block_size=1025, top_k=1)
    wide = torch.full((1, 2, 64, 300), -1, dtype=torch.int32)
    wide[..., 0] = torch.arange(64) // 16
    with pytest.raises(ValueError, match="top_k must be at most 256"):
        ml.block_sparse_attention(q, k, v, ml.BlockSelection(wide, 16), backend="triton")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_selection_edited_in_place_is_validated_again_before_use(qkv, backend):
    q, k, v = qkv
    sel = ml.select_window(q, k, block_size=16, top_k=2)  # built trusted: never validated
    sel.indices[0, 0, 63, 1] = 100  # past the last block: the kernels would read out of bounds
    with pytest.raises(ValueError, match=r"selection ids must lie in \[-1, 3\]"):
        ml.block_sparse_attention(q, k, v, sel, backend=backend)
    sel.indices[0, 0, 63, 1] = 2
    sel.indices[0, 0, :16].select(-1, 1).fill_(1)  # through a view: a future block
    with pytest.raises(ValueError, match="not causal"):
        ml.block_sparse_attention(q, k, v, sel, backend=backend)
    sel.indices[0, 0, :16, 1] = -1  # a valid edit is accepted, and used
    edited = ml.block_sparse_attention(q, k, v, sel, backend=backend)
    assert torch.allclose(edited, ml.block_sparse_attention(q, k, v, ml.BlockSelection(sel.indices.clone(), 16)),
                          atol=1e-5)


def test_the_backward_refuses_a_selection_edited_after_its_forward(qkv):
    q, k, v = (x.requires_grad_() for x in qkv)
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    out = ml.block_sparse_attention(q, k, v, sel, backend="triton")
    sel.indices[0, 0, 40, 1] = -1
    with pytest.raises(RuntimeError, match="changed in place between the forward and the backward"):
        out.sum().backward()


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="edits through .numpy() need CPU tensors")
def test_query_lists_never_point_past_the_last_block(qkv):
    from msa_lab.kv_outer_plan import build_query_lists

    q, k, _ = qkv
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    sel.indices.numpy()[0, 1, 63, 1] = 100  # an edit torch does not count (no _version bump)
    lists = build_query_lists(sel, 0, 64, 32)
    assert int(lists.work_list.max()) < sel.batch * sel.num_rows_heads * sel.num_blocks
    assert int(lists.query.numel()) == int((sel.indices >= 0).sum()) - 1


@pytest.mark.parametrize("flag", ["return_lse", "return_selection", "deterministic"])
def test_flags_must_be_bools_not_truthy_stand_ins(qkv, flag):
    q, k, v = qkv
    iq, ik = ml.index_from_qk(q, k)
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    calls = [lambda **f: ml.moba_attention(q, k, v, block_size=16, top_k=2, **f),
             lambda **f: ml.msa_attention(q, k, v, iq, ik, block_size=16, top_k=2, **f)]
    if flag != "return_selection":
        calls.append(lambda **f: ml.block_sparse_attention(q, k, v, sel, **f))
    if flag == "return_lse":
        calls.append(lambda **f: ml.full_attention(q, k, v, **f))
    for bad in ("no", 1, None):
        for call in calls:
            with pytest.raises(TypeError, match=f"{flag} must be True or False, got {bad!r}"):
                call(**{flag: bad})
