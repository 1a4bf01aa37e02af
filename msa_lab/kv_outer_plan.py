"""Invert a selection for the KV-outer kernel: for every (batch, selection head, block), the
queries that chose it (a CSR list, queries ascending), cut into work items of at most
``entries_per_item`` queries so that heavily chosen blocks are split over programs.

Built with torch ops on the selection's device (sort, bincount, cumsum). ``KVOuterPlan`` keeps
the sorted entries of a forward pass for its backward and the index KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .selection import BlockSelection


@dataclass(frozen=True)
class QueryLists:
    query: torch.Tensor       # int32 [E]: query position of each entry
    slot: torch.Tensor        # int32 [E]: slot of the block in that query's selection row
    work_list: torch.Tensor   # int32 [W]: list id = (b * Hs + hs) * num_blocks + block
    work_start: torch.Tensor  # int32 [W]: first entry of the work item
    work_count: torch.Tensor  # int32 [W]: entries in the work item

    @property
    def num_items(self) -> int:
        return self.work_list.numel()


@dataclass(frozen=True)
class _SortedEntries:
    """The entries of query rows ``[q0, q1)`` sorted by list (queries ascending within a list)."""

    q0: int
    q1: int
    list_id: torch.Tensor  # int64 [E], ascending
    query: torch.Tensor    # int32 [E]
    slot: torch.Tensor     # int32 [E]
    counts: torch.Tensor   # int64 [L]: entries per list
    starts: torch.Tensor   # int64 [L]: first entry of each list

    @classmethod
    def build(cls, selection: BlockSelection, q0: int, q1: int) -> "_SortedEntries":
        ids = selection.indices[:, :, q0:q1]
        B, Hs, C, K = ids.shape
        nb = selection.num_blocks
        dev = ids.device
        # Ids past the last block only reach here if the selection was edited behind its checks
        # (e.g. through .numpy()): they are dropped rather than turned into another row's lists.
        valid = (ids >= 0) & (ids < nb)
        row = torch.arange(B * Hs, device=dev).view(B, Hs, 1, 1)
        list_id = (row * nb + ids.long())[valid]
        t = torch.arange(q0, q1, device=dev, dtype=torch.int32).view(1, 1, C, 1).expand(B, Hs, C, K)[valid]
        slot = torch.arange(K, device=dev, dtype=torch.int32).view(1, 1, 1, K).expand(B, Hs, C, K)[valid]
        # Entries come in (row, t, slot) order; a stable sort by list keeps t ascending per list.
        list_id, order = torch.sort(list_id, stable=True)
        counts = torch.bincount(list_id, minlength=B * Hs * nb)
        return cls(q0, q1, list_id, t[order], slot[order], counts, torch.cumsum(counts, 0) - counts)

    def lists(self, q0: int, q1: int, entries_per_item: int) -> QueryLists:
        """Work items over the rows ``[q0, q1)`` (inside this range): a list's entries of those
        rows are a contiguous run of it, since its queries ascend."""
        counts, starts = self.counts, self.starts
        if (q0, q1) != (self.q0, self.q1):
            L = counts.numel()
            starts = starts + torch.bincount(self.list_id[self.query < q0], minlength=L)
            counts = torch.bincount(self.list_id[(self.query >= q0) & (self.query < q1)], minlength=L)
        items = -(-counts // entries_per_item)
        work_list = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), items)
        first_item = torch.cumsum(items, 0) - items
        k = torch.arange(work_list.numel(), device=counts.device) - first_item[work_list]
        work_start = starts[work_list] + k * entries_per_item
        work_count = torch.clamp(counts[work_list] - k * entries_per_item, max=entries_per_item)
        return QueryLists(self.query, self.slot, work_list.to(torch.int32),
                          work_start.to(torch.int32), work_count.to(torch.int32))


def build_query_lists(selection: BlockSelection, q0: int, q1: int, entries_per_item: int) -> QueryLists:
    """Lists for the query rows ``[q0, q1)`` of ``selection``."""
    return _SortedEntries.build(selection, q0, q1).lists(q0, q1, entries_per_item)


class KVOuterPlan:
    """The inversion of one selection that the KV-outer forward, its backward and the index KL
    all read, built once per forward and reused (MiniMax's ``attention.prepare()``): each
    query range sorted on first use and kept, so a later call over that range, or a part of
    it, re-cuts its work items instead of sorting again. It holds 16 bytes an entry
    (``B * Hs * N * top_k`` entries) for as long as it lives: build one per forward pass.

    Built by ``msa_lab.prepare_kv_outer(selection)``; a plan is refused for another selection
    or after the selection's indices changed in place."""

    def __init__(self, selection: BlockSelection):
        self.selection = selection
        self._version = selection.indices_version()
        self._ranges: list[_SortedEntries] = []

    @staticmethod
    def check_argument(plan, selection, backend: str) -> None:
        """A public function's ``plan=`` argument: None, or this selection's plan used by the
        Triton backend (the only one that reads it)."""
        if plan is None:
            return
        if not isinstance(plan, KVOuterPlan):
            raise TypeError(f"plan must be a KVOuterPlan (msa_lab.prepare_kv_outer(selection)) or None, "
                            f"got {type(plan).__name__}")
        if backend != "triton":
            raise ValueError(f"plan holds the query lists of backend='triton'; the call resolved to "
                             f"backend={backend!r}: pass plan=None there")
        plan.check_for(selection)

    def check_for(self, selection: BlockSelection) -> None:
        if selection is not self.selection:
            raise ValueError("plan was prepared for another selection: prepare one with "
                             "msa_lab.prepare_kv_outer(selection) for the selection you pass")
        if selection.indices_version() != self._version:
            raise ValueError("the selection's indices were changed in place after its plan was prepared: "
                             "prepare a new plan")

    def ranges(self) -> list[tuple[int, int]]:
        """A tiling of the rows ``[0, N)``: the query ranges kept so far and the gaps between
        them, ascending (``[(0, N)]`` before any), so that chunks cut inside them cover every
        row and cut no kept range."""
        tiles, at = [], 0
        for q0, q1 in sorted((e.q0, e.q1) for e in self._ranges):
            if q0 > at:
                tiles.append((at, q0))
            tiles.append((q0, q1))
            at = q1
        N = self.selection.indices.shape[2]
        return tiles + [(at, N)] if at < N else tiles

    def lists(self, q0: int, q1: int, entries_per_item: int) -> QueryLists:
        """Lists of rows ``[q0, q1)``: cut from a kept range that holds them, else sorted, and
        kept only if no kept range overlaps it (a later caller's straddling chunk is built
        for its call alone, so the plan never holds an entry twice)."""
        for entries in self._ranges:
            if entries.q0 <= q0 and q1 <= entries.q1:
                return entries.lists(q0, q1, entries_per_item)
        entries = _SortedEntries.build(self.selection, q0, q1)
        if all(q1 <= e.q0 or e.q1 <= q0 for e in self._ranges):
            self._ranges.append(entries)
        return entries.lists(q0, q1, entries_per_item)


def prepare_kv_outer(selection: BlockSelection) -> KVOuterPlan:
    """A plan for one forward pass over ``selection``: pass it as ``plan=`` to
    ``block_sparse_attention(..., backend="triton")`` and ``index_kl_loss(..., backend="triton")``
    so that the attention's forward, its backward and the index KL invert the selection once."""
    if not isinstance(selection, BlockSelection):
        raise TypeError(f"selection must be a BlockSelection, got {type(selection).__name__}")
    return KVOuterPlan(selection)


def query_lists(selection: BlockSelection, plan: KVOuterPlan | None, q0: int, q1: int,
                entries_per_item: int) -> QueryLists:
    """The lists of rows ``[q0, q1)``: from ``plan`` when there is one (checked against
    ``selection``), else built for this call alone (nothing kept)."""
    if plan is None:
        return build_query_lists(selection, q0, q1, entries_per_item)
    plan.check_for(selection)
    return plan.lists(q0, q1, entries_per_item)
