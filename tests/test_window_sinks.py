"""The sliding window with StreamingLLM's sink blocks against an explicit construction of each
row's set: the own block, then the sinks ``0..sink_blocks-1`` that lie before it, then the most
recent earlier blocks not yet taken, until ``top_k`` ids or no block is left."""

import pytest
import torch

import msa_lab as ml


def window_sets(N, bs, top_k, sink_blocks):
    """Each query row's block set, built greedily in Python."""
    rows = []
    for t in range(N):
        own = t // bs
        chosen = [own] + [j for j in range(sink_blocks) if j < own]
        for j in range(own - 1, -1, -1):
            if len(chosen) >= top_k:
                break
            if j not in chosen:
                chosen.append(j)
        rows.append(set(chosen[:top_k]))
    return rows


@pytest.mark.parametrize("N,bs,top_k,sink_blocks", [
    (100, 10, 4, 1), (100, 10, 4, 3), (97, 8, 5, 2), (64, 16, 6, 2), (30, 4, 3, 0), (50, 7, 1, 0), (200, 16, 8, 4),
])
@pytest.mark.parametrize("per", ["group", "head"])
def test_rows_are_the_sinks_plus_the_most_recent_blocks(N, bs, top_k, sink_blocks, per):
    q, k = torch.randn(2, N, 4, 8), torch.randn(2, N, 2, 8)
    sel = ml.select_window(q, k, block_size=bs, top_k=top_k, per=per, sink_blocks=sink_blocks).validate()
    assert sel.per == per and sel.indices.shape == (2, 2 if per == "group" else 4, N, top_k)
    expected = window_sets(N, bs, top_k, sink_blocks)
    for t, want in enumerate(expected):
        ids = sel.indices[:, :, t]
        assert bool((ids[..., 0] == t // bs).all())  # own block first
        for row in ids.reshape(-1, top_k).tolist():
            assert {j for j in row if j >= 0} == want and row.count(-1) == top_k - len(want)
    own = torch.arange(N) // bs
    assert torch.equal(sel.valid_mask().sum(-1)[0, 0], torch.clamp(own + 1, max=top_k))


def test_zero_sinks_is_the_plain_window_bit_for_bit():
    q, k = torch.randn(1, 123, 4, 8), torch.randn(1, 123, 2, 8)
    own = torch.arange(123) // 10
    ids = own.view(-1, 1) - torch.arange(5)
    plain = torch.where(ids >= 0, ids, torch.full_like(ids, -1)).to(torch.int32).expand(1, 2, 123, 5)
    for sel in (ml.select_window(q, k, block_size=10, top_k=5),
                ml.select_window(q, k, block_size=10, top_k=5, sink_blocks=0)):
        assert sel.indices.dtype == torch.int32 and torch.equal(sel.indices, plain)


def test_all_but_one_slot_as_sinks_keeps_the_own_block_and_the_sinks():
    q, k = torch.randn(1, 80, 1, 4), torch.randn(1, 80, 1, 4)
    sel = ml.select_window(q, k, block_size=8, top_k=3, sink_blocks=2)
    assert sel.indices[0, 0, 79].tolist() == [9, 0, 1]
    assert sel.indices[0, 0, 16].tolist() == [2, 1, 0]  # own block 2 < top_k: every block


@pytest.mark.parametrize("sink_blocks,error,match", [
    (-1, ValueError, r"sink_blocks must be an int >= 0"),
    (4, ValueError, r"sink_blocks must be an int in \[0, top_k - 1\] = \[0, 3\]"),
    (True, TypeError, "sink_blocks must be an int"),
    (1.0, TypeError, "sink_blocks must be an int"),
])
def test_bad_sink_blocks_are_refused(sink_blocks, error, match):
    q, k = torch.randn(1, 40, 2, 4), torch.randn(1, 40, 1, 4)
    with pytest.raises(error, match=match):
        ml.select_window(q, k, block_size=4, top_k=4, sink_blocks=sink_blocks)
