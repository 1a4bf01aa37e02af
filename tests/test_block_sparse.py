import math

import pytest
import torch

import msa_lab as ml
from conftest import dense_masked_attention, make_qkv, rel_err, token_mask_from_blocks
from msa_lab.reference import attention_reference


def random_selection(B, Hs, N, bs, top_k, per, drop_local=False):
    """Random valid selection: own block (unless dropped) plus random earlier blocks,
    shuffled slots and -1 padding anywhere."""
    nb = math.ceil(N / bs)
    own = torch.arange(N) // bs
    scores = torch.rand(B, Hs, N, nb)
    ids = ml.select_top_blocks(scores, torch.arange(N), block_size=bs, top_k=top_k,
                               force_local=not drop_local)
    if drop_local:
        ids = torch.where(ids == own.view(1, 1, -1, 1).int(), torch.full_like(ids, -1), ids)
    ids = ids.gather(-1, torch.rand(ids.shape).argsort(-1))
    return ml.BlockSelection(ids.contiguous(), bs, per)


SHAPES = [
    # B, N, Hq, Hkv, D, block, top_k
    (1, 128, 2, 2, 16, 32, 2),
    (2, 100, 4, 2, 16, 16, 3),
    (1, 77, 8, 1, 32, 16, 4),
    (1, 65, 16, 1, 16, 8, 5),
    (2, 50, 6, 3, 8, 64, 2),      # one partial block only
]


@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", SHAPES)
@pytest.mark.parametrize("per", ["group", "head"])
def test_matches_dense_masked_attention(B, N, Hq, Hkv, D, bs, topk, per):
    q, k, v = make_qkv(B, N, Hq, Hkv, D, torch.float64)
    sel = random_selection(B, Hkv if per == "group" else Hq, N, bs, topk, per)
    out, lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    allowed = token_mask_from_blocks(sel.dense_mask(), bs, N, Hq // Hkv if per == "group" else 1)
    ref, ref_lse = dense_masked_attention(q, k, v, allowed)
    assert rel_err(out, ref) < 1e-12 and rel_err(lse, ref_lse) < 1e-12


@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", SHAPES)
@pytest.mark.parametrize("per", ["group", "head"])
def test_agrees_with_flex_attention(B, N, Hq, Hkv, D, bs, topk, per):
    q, k, v = make_qkv(B, N, Hq, Hkv, D)
    sel = random_selection(B, Hkv if per == "group" else Hq, N, bs, topk, per)
    out, lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    flex, flex_lse = ml.block_sparse_attention(q, k, v, sel, backend="flex", return_lse=True)
    assert rel_err(out, flex) < 1e-5 and rel_err(lse, flex_lse) < 1e-5


@pytest.mark.parametrize("N,bs", [(96, 32), (100, 32), (7, 16)])
def test_selection_covering_every_causal_block_is_full_attention(N, bs):
    q, k, v = make_qkv(2, N, 8, 2, 16, torch.float64)
    everything = ml.select_window(q, k, block_size=bs, top_k=math.ceil(N / bs))
    assert everything.density() == 1.0
    out, lse = ml.block_sparse_attention(q, k, v, everything, return_lse=True)
    full, full_lse = ml.full_attention(q, k, v, return_lse=True)
    assert rel_err(out, full) < 1e-12 and rel_err(lse, full_lse) < 1e-12


def test_rows_without_visible_keys_give_zeros_and_minus_inf_lse():
    q, k, v = make_qkv(1, 64, 4, 2, 16)
    sel = random_selection(1, 2, 64, 16, 2, "group", drop_local=True)  # block-0 rows see nothing
    out, lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    empty = ~sel.valid_mask().any(-1)  # [B, Hkv, N]
    assert bool(empty[0, :, :16].all())
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert bool((out[0, :16] == 0).all())
    assert bool(torch.isneginf(lse[0, :, :16]).all())
    flex, flex_lse = ml.block_sparse_attention(q, k, v, sel, backend="flex", return_lse=True)
    assert rel_err(out, flex) < 1e-5


def test_query_chunking_does_not_change_the_result():
    q, k, v = make_qkv(1, 90, 4, 2, 16, torch.float64)
    sel = random_selection(1, 4, 90, 16, 3, "head")
    a, la = attention_reference(q, k, v, scale=0.25, selection=sel)
    b, lb = attention_reference(q, k, v, scale=0.25, selection=sel, query_chunk=11)
    assert rel_err(a, b) < 1e-14 and rel_err(la, lb) < 1e-14


def test_gradients_match_dense_formulation():
    q, k, v = make_qkv(1, 48, 4, 2, 8, torch.float64)
    sel = random_selection(1, 2, 48, 8, 3, "group")
    allowed = token_mask_from_blocks(sel.dense_mask(), 8, 48, 2)
    grads = []
    for fn in (lambda a, b, c: ml.block_sparse_attention(a, b, c, sel),
               lambda a, b, c: dense_masked_attention(a, b, c, allowed)[0]):
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        (fn(*xs) * torch.linspace(-1, 1, 8, dtype=torch.float64)).sum().backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_inputs(dtype, tol):
    q, k, v = make_qkv(1, 100, 8, 2, 32)
    sel = random_selection(1, 2, 100, 16, 3, "group")
    ref = ml.block_sparse_attention(q, k, v, sel)
    out = ml.block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), sel)
    assert out.dtype == dtype and rel_err(out, ref) < tol


def test_auto_backend_is_the_reference_on_the_cpu_and_triton_on_cuda():
    q, k, v = make_qkv(1, 40, 2, 1, 8)
    sel = random_selection(1, 1, 40, 8, 2, "group")
    assert torch.equal(ml.block_sparse_attention(q, k, v, sel, backend="auto"),
                       ml.block_sparse_attention(q, k, v, sel, backend="triton" if q.is_cuda else "reference"))


@pytest.mark.parametrize("N,bs,per", [(300, 128, "group"), (520, 256, "head"), (400, 64, "group"),
                                      (333, 96, "head"), (700, 200, "group")])
def test_flex_block_mask_tiles_match_the_token_mask(N, bs, per):
    from msa_lab.flex import TILE, selection_block_mask

    Hq, Hkv = 4, 2
    Hs = Hkv if per == "group" else Hq
    sel = random_selection(1, Hs, N, bs, 3, per)
    tokens = token_mask_from_blocks(sel.dense_mask(), bs, N, Hq // Hkv if per == "group" else 1)
    nt = math.ceil(N / TILE)
    padded = torch.nn.functional.pad(tokens, (0, nt * TILE - N, 0, nt * TILE - N))
    tiles = padded.view(1, Hq, nt, TILE, nt, TILE)
    any_allowed = tiles.any(-1).any(-2)
    mask = selection_block_mask(sel, Hq)
    listed = mask.to_dense().bool()  # partial or full tiles
    assert torch.equal(listed, any_allowed)
    full_num, full_idx = mask.full_kv_num_blocks, mask.full_kv_indices
    for h in range(Hq):
        for qt in range(nt):
            for kt in full_idx[0, h, qt, : full_num[0, h, qt]].tolist():
                rows = slice(qt * TILE, min((qt + 1) * TILE, N))
                assert bool(tokens[0, h, rows, kt * TILE:(kt + 1) * TILE].all())
    if bs % TILE == 0:
        assert int(full_num.sum()) > 0  # aligned blocks do produce full tiles
