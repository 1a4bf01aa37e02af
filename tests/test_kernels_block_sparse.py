"""Block-sparse Triton kernels (KV-outer and Q-outer; interpreted on the CPU in CI)
against the reference."""

import math
import os
import subprocess
import sys

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, make_qkv, moba_scores64, msa_scores64, rel_err
from test_block_sparse import random_selection

SHAPES = [
    # B, N, Hq, Hkv, D, block, top_k, per
    (1, 100, 4, 2, 16, 16, 3, "group"),
    (2, 77, 8, 1, 32, 16, 4, "head"),      # GQA 8, per head, partial block
    (1, 130, 6, 3, 16, 32, 2, "group"),    # GQA 2, odd head count
    (1, 64, 16, 1, 64, 16, 3, "group"),    # GQA 16: 8 tokens x 16 heads per tile
    (1, 50, 2, 2, 128, 24, 9, "group"),    # GQA 1, block not a power of 2, top_k > blocks
    (1, 40, 12, 4, 24, 8, 3, "head"),      # head dim not a power of 2
]


@pytest.mark.parametrize("backend", ["triton", "triton_q_outer"])
@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk,per", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_matches_reference(B, N, Hq, Hkv, D, bs, topk, per, dtype, tol, backend):
    q, k, v = make_qkv(B, N, Hq, Hkv, D)
    sel = random_selection(B, Hkv if per == "group" else Hq, N, bs, topk, per)
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    out, lse = ml.block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), sel,
                                         backend=backend, return_lse=True)
    assert out.dtype == dtype
    assert rel_err(out, ref) < tol and rel_err(lse, ref_lse) < tol


def test_every_partial_is_written_and_chunks_agree(kernel_settings):
    from msa_lab.kernels import kv_outer

    kernel_settings(poison_partials=True)
    q, k, v = make_qkv(2, 90, 8, 2, 32)
    sel = ml.select_msa(*ml.index_from_qk(q, k), block_size=16, top_k=4)
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    for chunk in (None, 7, 64):
        out, lse = kv_outer.kv_outer_attention(q, k, v, sel, 32 ** -0.5, query_chunk=chunk)
        assert rel_err(out, ref) < 1e-5 and rel_err(lse, ref_lse) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "triton_q_outer"])
def test_rows_without_visible_keys(backend):
    q, k, v = make_qkv(1, 48, 4, 2, 16)
    sel = random_selection(1, 2, 48, 16, 2, "group", drop_local=True)
    out, lse = ml.block_sparse_attention(q, k, v, sel, backend=backend, return_lse=True)
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    assert bool((out[0, :16] == 0).all()) and bool(torch.isneginf(lse[0, :, :16]).all())
    assert not torch.isnan(out).any() and rel_err(out, ref) < 1e-5


def test_moba_and_msa_entry_points_use_it():
    # each backend selects its own blocks: no near-tie in either gate
    q, k, v = draw_without_near_ties(
        lambda: make_qkv(1, 70, 4, 2, 16),
        lambda q, k, v: torch.cat([moba_scores64(q, k, 16), msa_scores64(*ml.index_from_qk(q, k), 16)], 1), 16, 3)
    iq, ik = ml.index_from_qk(q, k)
    for fn in (lambda b: ml.moba_attention(q, k, v, block_size=16, top_k=3, backend=b),
               lambda b: ml.msa_attention(q, k, v, iq, ik, block_size=16, top_k=3, backend=b)):
        assert rel_err(fn("triton"), fn("reference")) < 1e-5


def test_query_lists_cover_every_selected_slot_once():
    from msa_lab.kv_outer_plan import build_query_lists

    q, k, _ = make_qkv(2, 200, 4, 2, 8)
    sel = random_selection(2, 2, 200, 16, 5, "group")
    lists = build_query_lists(sel, 30, 170, entries_per_item=7)
    assert int(lists.work_count.max()) <= 7 and int(lists.work_count.min()) >= 1
    nb = sel.num_blocks
    seen = []
    for lst, start, count in zip(lists.work_list.tolist(), lists.work_start.tolist(), lists.work_count.tolist()):
        b, hs, blk = lst // nb // 2, (lst // nb) % 2, lst % nb
        ts = lists.query[start:start + count].tolist()
        assert ts == sorted(ts)
        for t, s in zip(ts, lists.slot[start:start + count].tolist()):
            assert int(sel.indices[b, hs, t, s]) == blk
            seen.append((b, hs, t, s))
    expected = [(b, h, t, s) for b, h, t, s in (sel.indices[:, :, 30:170] >= 0).nonzero().tolist()]
    expected = [(b, h, t + 30, s) for b, h, t, s in expected]
    assert sorted(seen) == sorted(expected)


def test_heavily_chosen_blocks_are_split():
    from msa_lab.kv_outer_plan import build_query_lists

    q, k, _ = make_qkv(1, 256, 2, 1, 8)
    sel = ml.select_window(q, k, block_size=16, top_k=16)  # block 0 chosen by every query
    lists = build_query_lists(sel, 0, 256, entries_per_item=32)
    assert int((lists.work_list == 0).sum()) == math.ceil(256 / 32)


TRITON_CALL = ("q = torch.randn(1, 32, 2, 16); k = torch.randn(1, 32, 1, 16)\n"
               "s = ml.select_window(q, k, block_size=16, top_k=2)\n"
               "ml.block_sparse_attention(q, k, k, s, backend='triton')\n")


def assert_clear_no_device_error(code):
    """Run ``code`` in a fresh interpreter without TRITON_INTERPRET; it must fail with the
    library's own message, not a driver error."""
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "backend='triton' needs a CUDA GPU, or TRITON_INTERPRET=1" in res.stderr


def test_cpu_without_interpreter_raises_a_clear_error():
    assert_clear_no_device_error("import torch, msa_lab as ml\n" + TRITON_CALL)


def test_float64_is_refused_by_triton_backends():
    q, k, v = make_qkv(1, 32, 2, 1, 16, torch.float64)
    sel = ml.select_window(q, k, block_size=16, top_k=2)
    for call in (lambda: ml.block_sparse_attention(q, k, v, sel, backend="triton"),
                 lambda: ml.full_attention(q, k, v, backend="triton"),
                 lambda: ml.select_moba(q, k, block_size=16, top_k=2, backend="triton")):
        with pytest.raises(TypeError, match="supports float16, bfloat16 and float32 inputs.*use backend='reference'"):
            call()


def test_interpreter_set_after_the_kernels_were_defined_gives_the_clear_error():
    assert_clear_no_device_error("import os, torch, msa_lab as ml\nimport msa_lab.kernels\n"
                                 "os.environ['TRITON_INTERPRET'] = '1'\n" + TRITON_CALL)
