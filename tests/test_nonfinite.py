"""A NaN or inf in q, k or v reaches only the rows that see it (docs/semantics.md, "Non-finite
inputs"): on our backends every other row is bit for bit what it is when the bad entry is
replaced by a finite one, in the output, the LSE and the gradients. PyTorch's own kernels
(``sdpa``, ``flex``) may spread NaN to rows that do not see it, but never a finite wrong value.

Each test runs one call on a batch of two copies of the same inputs, batch 0 holding the bad
entry and batch 1 a finite value (0) in its place: rows of batch 0 are compared with batch 1."""

import pytest
import torch

import msa_lab as ml
from conftest import make_qkv, token_mask_from_blocks

N, HQ, HKV, D, BS = 48, 4, 2, 16, 16
G = HQ // HKV
BAD_TOKEN, BAD_HEAD, BAD_DIM = 20, 0, 3  # block 1: some rows see it, others (earlier, later) do not
SPARSE_BACKENDS = ["reference", "flex", "triton", "triton_q_outer"]
FULL_BACKENDS = ["reference", "sdpa", "triton"]
PYTORCH_KERNELS = {"sdpa", "flex"}  # backends we do not control: documented, weaker behaviour
NAN, INF = float("nan"), float("inf")
CASES = [("q", NAN), ("k", NAN), ("k", INF), ("v", NAN), ("v", INF)]


def poisoned(name, bad):
    """q, k, v of batch 2, the two batches equal but for one entry of ``name``: ``bad`` in
    batch 0, 0 in batch 1."""
    q, k, v = (x.expand(2, -1, -1, -1).clone() for x in make_qkv(1, N, HQ, HKV, D))
    inputs = {"q": q, "k": k, "v": v}
    inputs[name][0, BAD_TOKEN, BAD_HEAD, BAD_DIM] = bad
    inputs[name][1, BAD_TOKEN, BAD_HEAD, BAD_DIM] = 0.0
    return q, k, v


def rows_that_see(name, allowed):
    """``bool [Hq, N]``: the (head, query) rows whose output depends on the bad entry, for
    ``allowed [Hq, N, N]`` (query row sees key)."""
    if name == "q":
        rows = torch.zeros(HQ, N, dtype=torch.bool)
        rows[BAD_HEAD, BAD_TOKEN] = True
        return rows
    group = (torch.arange(HQ) // G == BAD_HEAD).view(HQ, 1)
    return allowed[:, :, BAD_TOKEN] & group


def keys_touched(rows, allowed):
    """``bool [Hkv, N]``: keys whose dK/dV gets a contribution from one of ``rows``."""
    seen = (allowed & rows.unsqueeze(-1)).any(1)  # [Hq, N]
    return seen.view(HKV, G, N).any(1)


def check_forward(out, rows, name, bad, backend):
    out, clean_out = out[0].transpose(0, 1), out[1].transpose(0, 1)  # [Hq, N, D]
    if backend in PYTORCH_KERNELS:  # rows that do not see it: NaN allowed, a wrong finite value not
        fin = torch.isfinite(out) & ~rows.unsqueeze(-1)
        assert torch.equal(out[fin], clean_out[fin])
    else:
        assert torch.equal(out[~rows], clean_out[~rows])
    if bad != bad or name == "v":  # NaN anywhere, or inf in a value: the rows that see it show it
        assert not torch.isfinite(out[rows]).all(-1).any()


# The Q-outer kernel runs a program per query (slow under the interpreter): one case.
@pytest.mark.parametrize("name,bad,backend", [(name, bad, backend) for backend in SPARSE_BACKENDS
                                              for name, bad in CASES
                                              if backend != "triton_q_outer" or (name, bad) == ("v", NAN)])
def test_block_sparse_nonfinite_reaches_only_rows_that_see_it(name, bad, backend):
    q, k, v = poisoned(name, bad)
    sel = ml.select_window(q, k, block_size=BS, top_k=2)
    allowed = token_mask_from_blocks(sel.dense_mask(), BS, N, G)[0]
    rows = rows_that_see(name, allowed)
    assert rows.any() and not rows.all()
    out, lse = ml.block_sparse_attention(q, k, v, sel, backend=backend, return_lse=True)
    check_forward(out, rows, name, bad, backend)
    if backend not in PYTORCH_KERNELS:
        assert torch.equal(lse[0][~rows], lse[1][~rows])


@pytest.mark.parametrize("backend", FULL_BACKENDS)
@pytest.mark.parametrize("name,bad", CASES)
def test_full_attention_nonfinite_reaches_only_rows_that_see_it(name, bad, backend):
    allowed = torch.ones(HQ, N, N, dtype=torch.bool).tril()
    rows = rows_that_see(name, allowed)
    check_forward(ml.full_attention(*poisoned(name, bad), backend=backend), rows, name, bad, backend)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name,bad", CASES)
def test_gradients_of_rows_and_keys_that_do_not_see_a_nonfinite_input_are_clean(name, bad, backend):
    leaves = [x.requires_grad_() for x in poisoned(name, bad)]
    sel = ml.select_window(leaves[0], leaves[1], block_size=BS, top_k=2)
    allowed = token_mask_from_blocks(sel.dense_mask(), BS, N, G)[0]
    rows = rows_that_see(name, allowed)
    keys = keys_touched(rows, allowed).T  # [N, Hkv] like dk[0]
    dout = torch.randn(1, N, HQ, D).expand(2, -1, -1, -1)
    out = ml.block_sparse_attention(*leaves, sel, backend=backend, deterministic=True)
    dq, dk, dv = torch.autograd.grad(out, leaves, dout)
    assert torch.equal(dq[0][~rows.T], dq[1][~rows.T])
    assert torch.equal(dk[0][~keys], dk[1][~keys]) and torch.equal(dv[0][~keys], dv[1][~keys])
    if name == "v":  # dV does not depend on V: even the bad key's is right (summed in another order)
        torch.testing.assert_close(dv[0, BAD_TOKEN], dv[1, BAD_TOKEN], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_decode_ignores_a_nonfinite_value_in_a_block_it_did_not_select(bad, backend):
    q, k, v = make_qkv(1, N, HQ, HKV, D)
    index_q, index_k = torch.randn(1, 1, HKV, 8), torch.randn(1, N, 1, 8)
    cache = ml.KVCache.from_prefill(k, v, index_k)
    _, ids = ml.msa_decode(q[:, -1:], index_q, cache, block_size=BS, top_k=2, backend=backend,
                           return_blocks=True)
    chosen = ids[0, BAD_HEAD].tolist()
    unchosen = next(b for b in range(N // BS) if b not in chosen)
    # batch 0: bad in a block not chosen; 1: 0 there instead; 2: bad in a chosen block
    v3 = v.expand(3, -1, -1, -1).clone()
    v3[0, unchosen * BS, BAD_HEAD, BAD_DIM] = bad
    v3[1, unchosen * BS, BAD_HEAD, BAD_DIM] = 0.0
    v3[2, max(chosen) * BS, BAD_HEAD, BAD_DIM] = bad
    three = (x.expand(3, -1, -1, -1) for x in (k, index_k, q[:, -1:], index_q))
    k3, index_k3, q3, index_q3 = (x.contiguous() for x in three)
    out = ml.msa_decode(q3, index_q3, ml.KVCache.from_prefill(k3, v3, index_k3), block_size=BS, top_k=2,
                        backend=backend)
    assert torch.equal(out[0], out[1])
    group = slice(BAD_HEAD * G, (BAD_HEAD + 1) * G)
    assert not torch.isfinite(out[2, 0, group]).all(-1).any()
