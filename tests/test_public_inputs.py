"""The public helpers check their inputs like the entry points do (issue 14, "Edges that hold"):
each bad input below gives a ValueError/TypeError naming the argument, never a ZeroDivisionError,
IndexError, a raw torch error or a silent wrong answer."""

import math

import pytest
import torch

import msa_lab as ml
from msa_lab import tasks
from msa_lab.coverage import CoverageReport, distance_labels, distance_octave, evenly_spaced_rows
from msa_lab.data import structured_qkv
from msa_lab.nn import Attention, MSAIndexer, TinyLM, index_kl_loss, rotary
from msa_lab.select import block_mean_keys, moba_gate

B, N, HQ, HKV, D, BS = 1, 16, 2, 1, 8, 4
q, k, v = torch.randn(B, N, HQ, D), torch.randn(B, N, HKV, D), torch.randn(B, N, HKV, D)
iq, ik = ml.index_from_qk(q, k)
pos = torch.arange(N)
sel = ml.select_window(q, k, block_size=BS, top_k=2)
gen = torch.Generator().manual_seed(0)
NAN = float("nan")


def with_nan(x, where=(0, 5, 0, 0)):
    x = x.clone()
    x[where] = NAN
    return x


def cache(**kw):
    return ml.KVCache(B, 32, HKV, D, dtype=torch.float32, **kw)


def prefilled():
    return ml.KVCache.from_prefill(k, v, ik, max_len=20)


def lm(**kw):
    return TinyLM(10, **{**dict(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1), **kw})


def mass_inputs(**over):
    """Valid arguments of CoverageReport.from_block_mass, with ``over`` replaced."""
    mass = torch.rand(B, HQ, N, N // BS)
    ids = sel.indices
    kw = dict(mass=mass, ids=ids, positions=pos, per="group", group_size=HQ // HKV, block_size=BS, top_k=2)
    kw.update(over)
    return kw


BAD = [
    # msa_block_scores: had no checks (ZeroDivisionError, IndexError)
    (lambda: ml.msa_block_scores(iq, ik, pos, 0), ValueError, "block_size must be a positive int"),
    (lambda: ml.msa_block_scores(iq, ik, torch.tensor([40]), BS),
     ValueError, r"positions must be query positions in \[0, 15\]"),
    (lambda: ml.msa_block_scores(iq, ik, torch.tensor([-1]), BS), ValueError, "positions must be query positions"),
    (lambda: ml.msa_block_scores(iq, ik, pos.float(), BS), TypeError, "positions must be an integer tensor"),
    (lambda: ml.msa_block_scores(iq, ik, pos.view(2, 8), BS), ValueError, "positions must be a non-empty 1-D"),
    (lambda: ml.msa_block_scores(iq[0], ik[0], pos, BS), ValueError, "index_q must be 4-D"),
    (lambda: ml.msa_block_scores(iq, ik[:, :8], pos, BS), ValueError, "index_k must be"),
    # select_top_blocks: returned ids of blocks that were never scored
    (lambda: ml.select_top_blocks(torch.randn(1, N, 2), pos, block_size=BS, top_k=3), ValueError,
     r"positions \(rows scored over 2 blocks of 4\) must be query positions in \[0, 7\]"),
    (lambda: ml.select_top_blocks(torch.randn(1, N, 4), torch.arange(5), block_size=BS, top_k=3), ValueError,
     r"one position per score row \(16\), got 5"),
    (lambda: ml.select_top_blocks(torch.randn(1, 2, 4), torch.tensor([-5, 3]), block_size=BS, top_k=3), ValueError,
     "positions .* must be query positions"),
    (lambda: ml.select_top_blocks(torch.randn(1, 2, 4), torch.tensor([1.0, 3.0]), block_size=BS, top_k=3), TypeError,
     "must be an integer tensor"),
    (lambda: ml.select_top_blocks(torch.ones(1, 2, 4, dtype=torch.long), torch.tensor([1, 3]), block_size=BS, top_k=3),
     TypeError, "scores must be a floating-point"),
    (lambda: ml.select_top_blocks(torch.randn(4), torch.tensor([1]), block_size=BS, top_k=3), ValueError,
     r"scores must be \[..., rows, num_blocks\]"),
    (lambda: ml.select_top_blocks(torch.randn(1, 2, 4), torch.tensor([1, 3]), block_size=BS, top_k=3, force_local="no"),
     TypeError, "force_local must be True or False"),
    (lambda: ml.select_top_blocks(torch.randn(1, 2, 4), torch.tensor([1, 3]), block_size=True, top_k=3), TypeError,
     "block_size must be a positive int"),
    # the selectors
    (lambda: ml.select_oracle(q, k, block_size=BS, top_k=2, force_local="yes"),
     TypeError, "force_local must be True or False"),
    (lambda: ml.select_random(q, k, block_size=BS, top_k=2, seed=1.5), TypeError, "seed must be an int"),
    (lambda: ml.select_random(q, k, block_size=BS, top_k=2, seed=True), TypeError, "seed must be an int"),
    (lambda: ml.select_msa(iq, ik, block_size=BS, top_k=2, backend="cuda"), ValueError, "backend must be"),
    (lambda: ml.select_window(q, k[:, :8], block_size=BS, top_k=2), ValueError, "seq length 16"),
    (lambda: ml.index_from_qk(q[0], k[0]), ValueError, "q must be 4-D"),
    (lambda: block_mean_keys(k[0], BS), ValueError, "k must be 4-D"),
    (lambda: block_mean_keys(k, 0), ValueError, "block_size must be a positive int"),
    (lambda: moba_gate(q, block_mean_keys(k, BS)[..., :4], pos), ValueError, "mean_keys must be"),
    (lambda: moba_gate(q, block_mean_keys(k, BS), torch.tensor([N])),
     ValueError, r"positions must be query positions in \[0, 15\]"),
    # coverage: non-finite inputs, arguments, every tensor against q/k
    (lambda: ml.coverage(with_nan(q), k, sel), ValueError, r"q must be finite, got nan at index \(0, 5, 0, 0\)"),
    (lambda: ml.coverage(q, with_nan(k, (0, 9, 0, 3)), sel),
     ValueError, r"k must be finite, got nan at index \(0, 9, 0, 3\)"),
    (lambda: ml.coverage(q, k * float("inf"), sel), ValueError, "k must be finite, got -?inf"),
    (lambda: ml.coverage(q, k[:, :8], sel), ValueError, "seq length 16"),
    (lambda: ml.coverage(q, k, ml.select_window(q[:, :8], k[:, :8], block_size=BS, top_k=2)), ValueError,
     r"selection.indices must be \[batch=1, kv_heads=1, seq=16"),
    (lambda: ml.coverage(q, k, sel, seed="a", rows=4), TypeError, "seed must be an int"),
    (lambda: ml.coverage(q, k, sel, rows=torch.tensor([[1, 2]])), ValueError, "rows must be a non-empty 1-D"),
    (lambda: ml.coverage(q, k, sel, threshold=NAN), ValueError, r"threshold must be a number in \(0, 1\]"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(mass=torch.rand(B, HQ, N))), ValueError, "mass must be 4-D"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(ids=sel.indices[:, :, :8])), ValueError,
     r"ids must be \[batch, selection heads, rows, top_k\] = \[1, 1, 16, 2\]"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(ids=sel.indices + 3)),
     ValueError, r"ids must be block ids in \[-1, 3\]"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(ids=sel.indices.float())),
     TypeError, "ids must be an integer tensor"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(positions=pos[:8])),
     ValueError, r"one position per row of mass \(16\)"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(per="token")), ValueError, "per must be 'group' or 'head'"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(group_size=3)), ValueError, "not a multiple of group_size 3"),
    (lambda: CoverageReport.from_block_mass(**mass_inputs(oracle_ids=sel.indices[..., :1])),
     ValueError, "oracle_ids must be"),
    (lambda: CoverageReport.concat([]), TypeError, "non-empty sequence of CoverageReport"),
    (lambda: CoverageReport.concat([ml.coverage(q, k, sel, rows=4), ml.coverage(q, k, sel, rows=4, threshold=0.5)]),
     ValueError, "they differ in threshold"),
    (lambda: distance_labels(-1), ValueError, "num_bins must be an int >= 0"),
    (lambda: distance_octave(3), TypeError, "distance must be an integer tensor"),
    (lambda: evenly_spaced_rows(0, 4), ValueError, "seq_len must be a positive int"),
    (lambda: evenly_spaced_rows(16, 2.5), TypeError, "rows must be a positive int"),
    # output_error: complex (imaginary part dropped: 1.0), empty (NaN), non-float, flags
    (lambda: ml.output_error(torch.ones(2, dtype=torch.complex64), torch.ones(2, dtype=torch.complex64)), TypeError,
     "out must be a real floating-point tensor, got torch.complex64"),
    (lambda: ml.output_error(torch.ones(0), torch.ones(0)), ValueError, "must not be empty"),
    (lambda: ml.output_error(torch.ones(2, dtype=torch.long), torch.ones(2, dtype=torch.long)),
     TypeError, "real floating-point"),
    (lambda: ml.output_error(q, q.tolist()), TypeError, "ref must be a torch.Tensor"),
    (lambda: ml.output_error(q, q, per_head="no"), TypeError, "per_head must be True or False"),
    (lambda: ml.output_error(torch.ones(2), torch.zeros(2)), ValueError, "ref is all zero but out is not"),
    # KVCache and decoding
    (lambda: ml.KVCache.from_prefill(k, v, ik[0]), ValueError, r"index_k must be 4-D \[batch, seq, 1, index_dim\]"),
    (lambda: ml.KVCache.from_prefill(k, v[0]), ValueError, "v must be 4-D"),
    (lambda: ml.KVCache.from_prefill(k, v, max_len=4), ValueError, "max_len must be at least the prefix length 16"),
    (lambda: ml.KVCache(B, 4, HKV, D, dtype=torch.int32), TypeError, "dtype must be torch.float16"),
    (lambda: ml.KVCache(B, 4, HKV, D, dtype="float32"), TypeError, "dtype must be torch.float16"),
    (lambda: ml.KVCache(B, 4, HKV, D, device="gpu0"), ValueError, "device must name a torch device"),
    (lambda: ml.KVCache(B, 0, HKV, D), ValueError, "max_len must be a positive int"),
    (lambda: ml.KVCache(B, 4, HKV, D, index_dim=0), ValueError, "index_dim must be a positive int"),
    (lambda: cache().append(k, v.double()), TypeError, "v must be torch.float32 on cpu like the cache"),
    (lambda: cache().append(k[:, :, :, :4], v[:, :, :, :4]),
     ValueError, r"k and v must be \[batch=1, tokens, kv_heads=1, dim=8\]"),
    (lambda: cache().append(torch.cat([k, k, k], 1), torch.cat([v, v, v], 1)),
     ValueError, "cache holds max_len=32 tokens; 0 \\+ 48"),
    (lambda: cache().append(k, v, ik), ValueError, "index_k must be given exactly when"),
    (lambda: cache(index_dim=D).append(k, v, ik[0]), ValueError, "index_k must be 4-D"),
    (lambda: cache(index_dim=D).append(k, v, ik[..., :4]),
     ValueError, r"index_k must be \[batch=1, tokens=16, 1, index_dim=8\]"),
    (lambda: ml.msa_decode(q[:, :1], iq[:, :1], prefilled(), block_size=BS, top_k=2, return_blocks="no"), TypeError,
     "return_blocks must be True or False"),
    (lambda: ml.msa_decode(q[:, :1], iq[:, :1, :, :4], prefilled(), block_size=BS, top_k=2),
     ValueError, "index_q must be"),
    (lambda: ml.msa_decode(q[:, :1], iq[:, :1], prefilled(), block_size=0),
     ValueError, "block_size must be a positive int"),
    (lambda: ml.dense_decode(q[:, :1].long(), prefilled()), TypeError, "q must be float16"),
    (lambda: ml.dense_decode(q[:, :1], ml.KVCache(B, 4, HKV, D, dtype=torch.float32)),
     ValueError, "the cache is empty"),
    # nn: every constructor argument under its own name
    (lambda: Attention(-8, 4, 2), ValueError, "d_model must be a positive int, got -8"),
    (lambda: Attention(16.0, 4, 2), TypeError, "d_model must be a positive int"),
    (lambda: Attention(16, 0, 2), ValueError, "num_heads must be a positive int"),
    (lambda: Attention(16, 4, -2), ValueError, "num_kv_heads must be a positive int"),
    (lambda: Attention(16, 4, 3), ValueError, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    (lambda: Attention(6, 4, 2),
     ValueError, r"d_model \(6\) must be a multiple of num_heads \(4\) when head_dim is None"),
    (lambda: Attention(16, 4, 2, head_dim=0), ValueError, "head_dim must be a positive int, got 0"),
    (lambda: Attention(16, 2, 1, rope_base=0), ValueError, "rope_base must be a finite number > 1, got 0"),
    (lambda: Attention(16, 2, 1, rope_base=NAN), ValueError, "rope_base must be a finite number > 1, got nan"),
    (lambda: Attention(16, 2, 1, rope_base="1e4"), TypeError, "rope_base must be a number"),
    (lambda: Attention(16, 2, 1, rotary_dims=3), ValueError, r"rotary_dims must be an even int in \[0, 8\]"),
    (lambda: Attention(16, 2, 1, method="msx"), ValueError, "method must be"),
    (lambda: Attention(16, 2, 1, backend="cuda"), ValueError, "backend must be"),
    (lambda: Attention(16, 2, 1, block_size=0), ValueError, "block_size must be a positive int"),
    (lambda: Attention(16, 2, 1, top_k=-1), ValueError, "top_k must be a positive int"),
    (lambda: Attention(16, 2, 1, method="msa", index_dim=0), ValueError, "index_dim must be a positive int, got 0"),
    (lambda: Attention(16, 2, 1, deterministic="yes"), TypeError, "deterministic must be True or False"),
    (lambda: Attention(16, 2, 1)(torch.randn(4, 16)), ValueError, r"x must be 3-D \[batch, seq, d_model=16\]"),
    (lambda: Attention(16, 2, 1)(torch.randn(1, 4, 8)),
     ValueError, r"x must be \[batch, seq, d_model=16\], got \(1, 4, 8\)"),
    (lambda: MSAIndexer(16, 1, -1), ValueError, "index_dim must be a positive int"),
    (lambda: MSAIndexer(16, 0, 8), ValueError, "num_kv_heads must be a positive int"),
    (lambda: MSAIndexer(16, 1, 8, rope_base=0.5), ValueError, "rope_base must be a finite number > 1"),
    (lambda: MSAIndexer(16, 1, 8)(torch.randn(1, 4, 8)), ValueError, "x must be"),
    (lambda: rotary(torch.randn(4, 1, 8)), ValueError, r"x must be 4-D \[batch, seq, heads, dim\]"),
    (lambda: rotary(torch.randn(1, 4, 1, 8), None, 1.0), ValueError, "rope_base must be a finite number > 1"),
    (lambda: rotary(torch.randn(1, 4, 1, 8), offset=-3), ValueError, "offset must be an int >= 0"),
    (lambda: rotary(torch.randn(1, 4, 1, 8), offset=1.5), TypeError, "offset must be an int"),
    (lambda: index_kl_loss(iq, ik, q, k, selection=sel.indices),
     TypeError, "selection must be a BlockSelection or None"),
    (lambda: index_kl_loss(iq, ik, q, k[:, :8]), ValueError, "k must be"),
    (lambda: index_kl_loss(iq[0], ik, q, k), ValueError, "index_q must be 4-D"),
    (lambda: index_kl_loss(iq, ik, q, k, scale=-1.0), ValueError, "scale must be a positive finite number"),
    (lambda: index_kl_loss(iq, ik, q, k, query_chunk=0), ValueError, "query_chunk must be a positive int"),
    (lambda: index_kl_loss(iq, ik, q, k, ml.select_window(q[:, :8], k[:, :8], block_size=BS, top_k=2)), ValueError,
     "selection.indices must be"),
    (lambda: lm()(torch.tensor([[1, 10]])),
     ValueError, r"tokens must be ids in \[0, 9\] \(vocab_size 10\), got range \[1, 10\]"),
    (lambda: lm()(torch.tensor([[1, -1]])), ValueError, r"tokens must be ids in \[0, 9\]"),
    (lambda: lm()(torch.tensor([[1.0, 2.0]])), TypeError, "tokens must be int64 or int32"),
    (lambda: lm()(torch.tensor([1, 2])), ValueError, r"tokens must be a non-empty \[batch, seq\]"),
    (lambda: TinyLM(0), ValueError, "vocab_size must be a positive int"),
    (lambda: lm(num_layers=0), ValueError, "num_layers must be a positive int"),
    (lambda: lm(d_model=-16), ValueError, "d_model must be a positive int"),
    (lambda: lm(mlp_ratio=-1), ValueError, "mlp_ratio must be a finite number > 0"),
    (lambda: lm(mlp_ratio=0.01), ValueError, "mlp_ratio \\* d_model must give an MLP of at least 1 unit"),
    (lambda: lm(full_layers="0"), TypeError, "full_layers must be a sequence of layer indices"),
    (lambda: lm(full_layers=[True]), TypeError, "full_layers entry must be an int"),
    (lambda: lm(full_layers=[3]), ValueError, "full_layers must be layer indices"),
    (lambda: lm().set_sparse("off"), TypeError, "on must be True or False"),
    # generated data and tasks
    (lambda: structured_qkv(seq_len=64, head_dim=16, seed=1.5), TypeError, "seed must be an int"),
    (lambda: structured_qkv(seq_len=64, head_dim=16, dtype=torch.int32), TypeError, "dtype must be torch.float16"),
    (lambda: structured_qkv(seq_len=64, head_dim=16, patterns=None), TypeError, "patterns must be 'mixed'"),
    (lambda: tasks.mqar(1, 64, 300, gen, num_pairs=0), ValueError, "num_pairs must be a positive int"),
    (lambda: tasks.passkey(1, 64, 300, gen, digits=0), ValueError, "digits must be a positive int"),
    (lambda: tasks.passkey(1, 64, 300, gen, depth="a"), TypeError, "depth must be a number"),
    (lambda: tasks.passkey(1, 64, 300, gen, depth=NAN), ValueError, r"depth must be in \[0, 1\]"),
    (lambda: tasks.variable_tracking(1, 64, 300, gen, chains=0), ValueError, "chains must be a positive int"),
    (lambda: tasks.variable_tracking(1, 64, 300, gen, hops=-1), ValueError, "hops must be an int >= 0"),
]
# every task: the shared arguments
for _name in tasks.TASKS:
    BAD += [
        (lambda t=_name: tasks.make_batch(t, 0, 64, 300, gen), ValueError, "batch must be a positive int, got 0"),
        (lambda t=_name: tasks.make_batch(t, 1.5, 64, 300, gen), TypeError, "batch must be a positive int"),
        (lambda t=_name: tasks.make_batch(t, 1, -1, 300, gen), ValueError, "seq_len must be a positive int"),
        (lambda t=_name: tasks.make_batch(t, 1, 64, True, gen), TypeError, "vocab_size must be a positive int"),
        (lambda t=_name: tasks.make_batch(t, 1, 64, 300, None), TypeError, "gen must be a torch.Generator"),
    ]


@pytest.mark.parametrize("call,err,fragment", BAD)
def test_bad_input_gives_a_named_error(call, err, fragment):
    with pytest.raises(err, match=fragment):
        call()


def test_select_top_blocks_ids_are_valid_blocks():
    """The public helper gives what the selectors give on the same scores (valid inputs
    unchanged), and every id it can return is a scored block."""
    scores = torch.randn(B, HKV, N, N // BS)
    ids = ml.select_top_blocks(scores, pos, block_size=BS, top_k=3)
    assert int(ids.max()) < N // BS and int(ids.min()) >= -1
    ml.BlockSelection(ids, BS)  # causal, in range, no repeats
    want = ml.select_msa(iq, ik, block_size=BS, top_k=3).indices
    got = ml.select_top_blocks(ml.msa_block_scores(iq, ik, pos, BS), pos, block_size=BS, top_k=3)
    assert torch.equal(got, want)


def test_coverage_summary_never_passes_a_nan_row():
    """A NaN row (overflowing logits can make one even from finite q/k) ranks below every
    finite row: it makes min NaN, counts as under the threshold and in nonfinite_rows."""
    mass = torch.softmax(torch.randn(B, HQ, N, N // BS), -1)
    report = CoverageReport.from_block_mass(mass, sel.indices, pos, per="group", group_size=HQ // HKV,
                                            block_size=BS, top_k=2)
    clean = report.summary()
    assert clean["nonfinite_rows"] == 0 and math.isfinite(clean["recall"]["min"])
    mass[0, 1, 3] = NAN
    broken = CoverageReport.from_block_mass(mass, sel.indices, pos, per="group", group_size=HQ // HKV,
                                            block_size=BS, top_k=2)
    s = broken.summary()
    assert s["nonfinite_rows"] == 1
    recall = s["recall"]
    assert math.isnan(recall["min"]) and math.isnan(recall["p1"]) and math.isnan(recall["mean"])
    assert math.isfinite(recall["p50"]) and math.isfinite(recall["p95"])
    # the NaN row (1 of 2 heads x 16 rows) counts as under 0.9, on top of the finite rows under it
    finite = broken.recall[torch.isfinite(broken.recall)]
    assert recall["share_below_0.9"] == pytest.approx((int((finite < 0.9).sum()) + 1) / 32)
    assert "1 rows non-finite" in repr(broken)


def test_by_distance_shows_a_nan_octave():
    mass = torch.softmax(torch.randn(B, HQ, N, N // BS), -1)
    mass[0, 0, 15, 0] = NAN  # row 15 is in block 3: distance 3, octave '2-3'
    report = CoverageReport.from_block_mass(mass, sel.indices, pos, per="group", group_size=HQ // HKV,
                                            block_size=BS, top_k=2)
    labels, recall, share = report.by_distance()
    assert "2-3" in labels and math.isnan(float(recall[labels.index("2-3")]))


def test_output_error_all_zero_reference():
    zero = torch.zeros(1, 2, 3, 4)
    assert ml.output_error(zero, zero) == 0.0
    ref = torch.randn(1, 2, 3, 4)
    ref[:, :, 1] = 0
    out = ref * 1.1
    per_head = ml.output_error(out, ref, per_head=True)
    assert per_head[1] == 0 and per_head[0] == pytest.approx(0.1) and per_head[2] == pytest.approx(0.1)
    out[0, 0, 1, 0] = 1.0
    with pytest.raises(ValueError, match="head 1 of ref is all zero but out is not"):
        ml.output_error(out, ref, per_head=True)
    assert math.isnan(ml.output_error(with_nan(ref, (0, 0, 0, 0)), ref))  # a broken output reads NaN, as documented


def test_kvcache_from_prefill_with_index_keys_decodes():
    c = prefilled()
    assert c.length == N and c.index_k.shape == (B, 20, 1, D)
    out, ids = ml.msa_decode(q[:, -1:], iq[:, -1:], c, block_size=BS, top_k=2, return_blocks=True)
    assert out.shape == (B, 1, HQ, D) and ids[0, 0, 0] == (N - 1) // BS


def test_tinylm_accepts_the_last_token_id():
    logits, _ = lm()(torch.tensor([[0, 9]]))
    assert logits.shape == (1, 2, 10)
