"""Invert a selection for the KV-outer kernel: for every (batch, selection head, block), the
queries that chose it (a CSR list, queries ascending), cut into work items of at most
``entries_per_item`` queries so that heavily chosen blocks are split over programs.

Built with torch ops on the selection's device (sort, bincount, cumsum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..selection import BlockSelection


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


def build_query_lists(selection: BlockSelection, q0: int, q1: int, entries_per_item: int) -> QueryLists:
    """Lists for the query rows ``[q0, q1)`` of ``selection``."""
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
    order = torch.sort(list_id, stable=True).indices
    counts = torch.bincount(list_id, minlength=B * Hs * nb)
    starts = torch.cumsum(counts, 0) - counts
    items = -(-counts // entries_per_item)
    work_list = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), items)
    first_item = torch.cumsum(items, 0) - items
    k = torch.arange(work_list.numel(), device=dev) - first_item[work_list]
    work_start = starts[work_list] + k * entries_per_item
    work_count = torch.clamp(counts[work_list] - k * entries_per_item, max=entries_per_item)
    return QueryLists(t[order], slot[order], work_list.to(torch.int32),
                      work_start.to(torch.int32), work_count.to(torch.int32))
