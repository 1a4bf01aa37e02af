"""Quest (Tang et al. 2024) against an independent brute force: each block's min/max key taken
by a loop over blocks, the bound as ``q_i * (max_i if q_i >= 0 else min_i)`` summed in float64
(a select, not the reference's element-wise max), and the selection by sorting each row's
earlier blocks in Python (score descending, then lower id) after the forced own block. The
Triton twin against the reference under the interpreter (float32, float16)."""

import math

import pytest
import torch

import msa_lab as ml
from conftest import draw_without_near_ties, make_qkv, rel_err
from msa_lab.select import block_key_bounds


def bounds_by_loop(k, bs):
    """``(min, max)`` ``[B, nb, Hkv, D]`` in float64, one block's token slice at a time."""
    nb = math.ceil(k.shape[1] / bs)
    blocks = [k[:, j * bs:(j + 1) * bs].double() for j in range(nb)]
    return torch.stack([b.min(1).values for b in blocks], 1), torch.stack([b.max(1).values for b in blocks], 1)


def quest_scores64(q, k, bs):
    """Quest bound ``[B, Hq, N, nb]`` in float64: per coordinate the block's max key where
    ``q_i >= 0`` and its min where ``q_i < 0``, times ``q_i``, summed."""
    G = q.shape[2] // k.shape[2]
    lo, hi = bounds_by_loop(k, bs)
    qd = q.double()
    cols = []
    for j in range(lo.shape[1]):
        lo_j, hi_j = (x[:, j].repeat_interleave(G, 1)[:, None] for x in (lo, hi))  # [B, 1, Hq, D]
        corner = torch.where(qd >= 0, hi_j, lo_j)
        cols.append((qd * corner).sum(-1).transpose(1, 2))
    return torch.stack(cols, -1)


def brute_selection(scores, bs, top_k):
    """``bool [B, Hq, N, nb]``: own block, then the ``top_k - 1`` best earlier blocks by a
    Python sort (score descending, lower id first on ties; NaN ranks last)."""
    B, H, N, nb = scores.shape
    mask = torch.zeros(B, H, N, nb, dtype=torch.bool)
    rows = scores.tolist()
    for b in range(B):
        for h in range(H):
            for t in range(N):
                own = t // bs
                key = [(-s if s == s else math.inf, j) for j, s in enumerate(rows[b][h][t][:own])]
                for j in [own] + [j for _, j in sorted(key)[: top_k - 1]]:
                    mask[b, h, t, j] = True
    return mask


def draw_qk(B, N, Hq, Hkv, D, bs, top_k, dtype=torch.float32):
    return draw_without_near_ties(lambda: (torch.randn(B, N, Hq, D).to(dtype), torch.randn(B, N, Hkv, D).to(dtype)),
                                  lambda q, k: quest_scores64(q, k, bs), bs, top_k)


def differing_rows(a, b):
    """Share of selection rows whose block sets differ."""
    return float((a.canonical().indices != b.canonical().indices).any(-1).float().mean())


def test_the_brute_force_bound_is_an_upper_bound_of_every_logit_in_the_block():
    q, k, _ = make_qkv(1, 50, 4, 2, 8, torch.float64)
    bound = quest_scores64(q, k, 8)
    logits = torch.einsum("bthd,bjhd->bhtj", q, k.repeat_interleave(2, 2))
    per_block = torch.nn.functional.pad(logits, (0, 56 - 50), value=-math.inf).unflatten(-1, (7, 8)).amax(-1)
    assert bool((per_block <= bound + 1e-12).all())


def test_block_key_bounds_are_the_exact_min_and_max_of_each_blocks_real_tokens():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        k = torch.randn(2, 37, 3, 5).to(dtype)  # last block of 7 has 2 tokens
        lo, hi = block_key_bounds(k, 7)
        ref_lo, ref_hi = bounds_by_loop(k, 7)
        assert lo.dtype == hi.dtype == dtype and lo.shape == (2, 6, 3, 5)
        assert torch.equal(lo.double(), ref_lo) and torch.equal(hi.double(), ref_hi)


CASES = [
    # B, N, Hq, Hkv, D, block, top_k
    (1, 128, 2, 2, 16, 16, 3),    # N a multiple of the block
    (2, 101, 4, 2, 8, 16, 3),     # partial last block, GQA 2
    (1, 90, 8, 2, 12, 10, 4),     # GQA 4, head dim not a power of two
    (1, 77, 16, 1, 8, 8, 2),      # GQA 16
    (1, 40, 3, 3, 8, 16, 8),      # top_k above the number of blocks: every block
    (1, 61, 2, 1, 8, 10, 1),      # top_k 1: own block only
]


@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", CASES)
def test_reference_matches_the_brute_force(B, N, Hq, Hkv, D, bs, topk):
    q, k = draw_qk(B, N, Hq, Hkv, D, bs, topk)
    sel = ml.select_quest(q, k, block_size=bs, top_k=topk).validate()
    assert sel.per == "head" and sel.indices.shape == (B, Hq, N, topk)
    assert torch.equal(sel.dense_mask(), brute_selection(quest_scores64(q, k, bs), bs, topk))
    own = torch.arange(N) // bs
    assert torch.equal(sel.valid_mask().sum(-1), torch.clamp(own + 1, max=topk).expand(B, Hq, N))
    assert torch.equal(sel.indices[..., 0], own.int().expand(B, Hq, N))  # own block in slot 0


def test_exact_ties_go_to_the_lower_block_in_both_backends():
    # Small integers: every sum is exact in any order, and repeated blocks tie exactly.
    q = torch.randint(-2, 3, (1, 48, 2, 8)).float()
    k = torch.randint(-1, 2, (1, 8, 1, 8)).float().repeat(1, 6, 1, 1)  # every block of 8 equals block 0
    k[:, 24:32] = 5.0  # one block with a larger bound where q has positive coordinates
    expected = brute_selection(quest_scores64(q, k, 8), 8, 3)
    for backend in ("reference", "triton"):
        assert torch.equal(ml.select_quest(q, k, block_size=8, top_k=3, backend=backend).dense_mask(), expected)


TRITON_CASES = [
    # B, N, Hq, Hkv, D, block, top_k
    (1, 45, 2, 2, 16, 8, 3),      # GQA 1, partial block
    (2, 37, 4, 2, 8, 6, 3),       # GQA 2, block not a power of two
    (1, 53, 4, 1, 12, 8, 4),      # GQA 4, head dim not a power of two
    (1, 21, 16, 1, 8, 4, 3),      # GQA 16, tiny
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,N,Hq,Hkv,D,bs,topk", TRITON_CASES)
def test_triton_matches_the_reference(B, N, Hq, Hkv, D, bs, topk, dtype):
    # float16 products are exact in float32 and float32 ones agree to rounding; only the
    # summation order differs, so away from near-ties no row may differ.
    q, k = draw_qk(B, N, Hq, Hkv, D, bs, topk, dtype)
    ref = ml.select_quest(q, k, block_size=bs, top_k=topk)
    got = ml.select_quest(q, k, block_size=bs, top_k=topk, backend="triton").validate()
    assert got.per == "head" and got.indices.shape == ref.indices.shape
    assert differing_rows(got, ref) == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN matmul
def test_nan_and_inf_never_win_a_slot_and_both_backends_agree():
    q, k = draw_qk(1, 48, 2, 1, 8, 8, 3)
    k[0, 3, 0, 1] = float("nan")  # block 0
    k[0, 20, 0, 0] = float("inf")  # block 2
    k[0, 25, 0, 4] = -float("inf")  # block 3
    q[0, 47, 1, 2] = float("nan")  # one row of head 1: every earlier block scores NaN
    ref = ml.select_quest(q, k, block_size=8, top_k=3)
    got = ml.select_quest(q, k, block_size=8, top_k=3, backend="triton")
    assert got.equals(ref)
    mask = ref.dense_mask()
    later = torch.arange(48) >= 40  # own block 5; of the earlier blocks only 1 and 4 are finite
    assert not bool(mask[0, 0, later][:, [0, 2, 3]].any()) and bool(mask[0, 0, later][:, [1, 4]].all())
    assert not bool(mask[0, 1, 40:47][:, [0, 2, 3]].any())
    assert ref.indices[0, 1, 47].tolist() == [5, 0, 1]  # all NaN: ranked by id


def test_quest_attention_is_block_sparse_attention_on_its_selection():
    q, k, v = make_qkv(1, 70, 4, 2, 16)
    out, lse, sel = ml.quest_attention(q, k, v, block_size=16, top_k=2, return_lse=True, return_selection=True)
    assert sel.equals(ml.select_quest(q, k, block_size=16, top_k=2))
    ref, ref_lse = ml.block_sparse_attention(q, k, v, sel, return_lse=True)
    assert rel_err(out, ref) < 1e-6 and rel_err(lse, ref_lse) < 1e-6
    assert ml.quest_attention(q, k, v, block_size=16, top_k=2).shape == q.shape


def test_quest_attention_with_triton_uses_the_triton_selection():
    q, k = draw_qk(1, 40, 4, 2, 16, 8, 3)
    v = torch.randn(1, 40, 2, 16)
    out, sel = ml.quest_attention(q, k, v, block_size=8, top_k=3, backend="triton", return_selection=True)
    assert sel.equals(ml.select_quest(q, k, block_size=8, top_k=3))
    assert rel_err(out, ml.quest_attention(q, k, v, block_size=8, top_k=3)) < 1e-5


@pytest.mark.parametrize("call,error,match", [
    (lambda q, k: ml.select_quest(q[0], k, block_size=4, top_k=2), ValueError, "q must be 4-D"),
    (lambda q, k: ml.select_quest(q, k[..., :3], block_size=4, top_k=2), ValueError, "head dim 4"),
    (lambda q, k: ml.select_quest(q.int(), k, block_size=4, top_k=2), TypeError, "q must be float16"),
    (lambda q, k: ml.select_quest(q, k.repeat(1, 1, 3, 1), block_size=4, top_k=2), ValueError, "multiple"),
    (lambda q, k: ml.select_quest(q, k, block_size=0, top_k=2), ValueError, "block_size must be a positive int"),
    (lambda q, k: ml.select_quest(q, k, block_size=4, top_k=True), TypeError, "top_k must be a positive int"),
    (lambda q, k: ml.select_quest(q, k, block_size=4, top_k=10 ** 12), ValueError, "top_k must be at most"),
    (lambda q, k: ml.select_quest(q, k, block_size=4, top_k=2, backend="cuda"), ValueError, "backend must be one of"),
    (lambda q, k: ml.select_quest(q.double(), k.double(), block_size=4, top_k=2, backend="triton"), TypeError,
     "use backend='reference' for float64"),
    (lambda q, k: block_key_bounds(k.int(), 4), TypeError, "k must be float16"),
    (lambda q, k: block_key_bounds(k, 2.0), TypeError, "block_size must be a positive int"),
    (lambda q, k: ml.quest_attention(q, k, k, block_size=4, top_k=2, return_lse="no"), TypeError,
     "return_lse must be True or False"),
])
def test_bad_inputs_are_refused_with_a_clear_error(call, error, match):
    q, k = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 4)
    with pytest.raises(error, match=match):
        call(q, k)
