"""Blocks larger than a kernel tile (interpreted on the CPU in CI): the attention kernels walk a
block above the ``max_tile_keys`` kernel setting's keys in sub-tiles, the backward splits it into key
parts, and the top-k kernel scans a row above ``top_k_row_tile`` blocks in chunks; all
against the reference, N not a multiple of the block."""

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, make_qkv, moba_scores64, rel_err
from test_block_sparse import random_selection
from test_kernels_backward import grads

LARGE = [
    # N, Hq, Hkv, D, block, top_k, per, dtype, tol
    (300, 2, 1, 16, 256, 2, "group", torch.float32, 1e-5),   # 2 sub-tiles, last block 44 keys
    (560, 2, 1, 16, 512, 2, "head", torch.float16, 2e-3),    # 4 sub-tiles
    (450, 2, 2, 16, 200, 3, "group", torch.float32, 1e-5),   # block not a multiple of the sub-tile
]


@pytest.mark.parametrize("N,Hq,Hkv,D,bs,topk,per,dtype,tol", LARGE)
def test_kv_outer_forward_walks_large_blocks_in_sub_tiles(kernel_settings, N, Hq, Hkv, D, bs, topk, per, dtype,
                                                          tol):
    kernel_settings(poison_partials=True)  # every partial slot must be written
    q, k, v = make_qkv(1, N, Hq, Hkv, D)
    sel = random_selection(1, Hkv if per == "group" else Hq, N, bs, topk, per)
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    out, lse = ml.block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), sel, backend="triton",
                                         return_lse=True)
    assert rel_err(out, ref) < tol and rel_err(lse, ref_lse) < tol


def test_q_outer_walks_large_blocks_in_sub_tiles(kernel_settings):
    # Sub-tiles of 16 keys make a 64-key block four of them at a size the interpreter runs fast.
    kernel_settings(max_tile_keys=16)
    q, k, v = make_qkv(1, 150, 2, 1, 16)
    sel = random_selection(1, 1, 150, 64, 2, "group")
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        out, lse = ml.block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), sel,
                                             backend="triton_q_outer", return_lse=True)
        assert rel_err(out, ref) < tol and rel_err(lse, ref_lse) < tol


def test_a_bad_value_in_a_later_sub_tile_reaches_only_the_rows_that_see_it():
    q, k, v = make_qkv(1, 300, 2, 1, 16)
    sel = random_selection(1, 1, 300, 256, 2, "group")
    v[0, 200, 0, 3] = float("nan")  # block 0, second sub-tile
    out = ml.block_sparse_attention(q, k, v, sel, backend="triton")
    ref = ml.block_sparse_attention(q, k, v, sel)
    assert torch.isnan(out[0, 200:]).any(-1).all() and rel_err(out[0, :200], ref[0, :200]) < 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3)])
def test_kv_outer_backward_splits_large_blocks_into_key_parts(kernel_settings, dtype, tol, deterministic):
    kernel_settings(poison_partials=True)  # every dQ partial row must be written
    q, k, v = make_qkv(1, 300, 2, 1, 16)
    sel = random_selection(1, 1, 300, 256, 2, "group")
    dout = torch.randn(1, 300, 2, 16)
    _, *ref = grads(q.double(), k.double(), v.double(), sel, dout.double())
    first = grads(q.to(dtype), k.to(dtype), v.to(dtype), sel, dout, backend="triton", deterministic=deterministic)
    for name, g, r in zip("qkv", first[1:], ref):
        assert g.dtype == dtype and rel_err(g, r) < tol, (name, rel_err(g, r))
    if deterministic:
        second = grads(q.to(dtype), k.to(dtype), v.to(dtype), sel, dout, backend="triton", deterministic=True)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("N,bs,topk", [(600, 256, 2), (1100, 512, 2)])
def test_moba_selection_at_large_blocks(N, bs, topk):
    q, k = draw_without_near_ties(lambda: (torch.randn(1, N, 2, 16), torch.randn(1, N, 1, 16)),
                                  lambda q, k: moba_scores64(q, k, bs), bs, topk)
    ref = ml.select_moba(q, k, block_size=bs, top_k=topk)
    got = ml.select_moba(q, k, block_size=bs, top_k=topk, backend="triton").validate()
    assert got.equals(ref)


def test_top_k_scans_rows_longer_than_its_tile_in_chunks(kernel_settings):
    # A 16-block tile makes this 19-block row (block 16, N = 300) take the chunked scan.
    kernel_settings(top_k_row_tile=16)
    q, k = draw_without_near_ties(lambda: (torch.randn(1, 300, 1, 8), torch.randn(1, 300, 1, 8)),
                                  lambda q, k: moba_scores64(q, k, 16), 16, 5)
    ref = ml.select_moba(q, k, block_size=16, top_k=5)
    got = ml.select_moba(q, k, block_size=16, top_k=5, backend="triton").validate()
    assert got.equals(ref)
    assert torch.equal(got.indices, ref.indices)  # same slot order too: best first


def test_key_sub_tiles_do_not_grow_with_the_block():
    from msa_lab.triton_runtime import KernelSettings, key_tile

    assert [key_tile(bs, 128, torch.bfloat16) for bs in (16, 24, 128)] == [16, 32, 128]  # one tile, as before
    for bs in (129, 512, 4096):
        for D, dtype in ((64, torch.float32), (128, torch.bfloat16), (128, torch.float32)):
            assert key_tile(bs, D, dtype) * D * dtype.itemsize <= KernelSettings().max_tile_bytes


def test_kernel_settings_apply_inside_their_block_only_and_refuse_bad_values():
    from msa_lab.triton_runtime import KernelSettings, kernel_settings, using_kernel_settings

    with using_kernel_settings(max_tile_keys=16, poison_partials=True) as inside:
        assert kernel_settings() is inside and inside.max_tile_keys == 16 and inside.poison_partials
        with using_kernel_settings(partial_bytes=1 << 20):
            assert kernel_settings().partial_bytes == 1 << 20 and kernel_settings().max_tile_keys == 16
        assert kernel_settings().partial_bytes is None
    assert kernel_settings() == KernelSettings()
    for changes, error, said in ((dict(max_tile_key=16), TypeError, "unknown kernel setting.*max_tile_key.*the settings are"),
                                 (dict(max_tile_keys=24), ValueError, "max_tile_keys must be a power of two"),
                                 (dict(score_bytes=0), ValueError, "score_bytes must be a positive int"),
                                 (dict(poison_partials=1), TypeError, "poison_partials must be True or False"),
                                 (dict(index_blocks_per_store=3), ValueError, "index_blocks_per_store must be a power of two"),
                                 (dict(backward_num_warps=6), ValueError, "backward_num_warps must be a power of two")):
        with pytest.raises(error, match=said):
            with using_kernel_settings(**changes):
                pass
    assert kernel_settings() == KernelSettings()
