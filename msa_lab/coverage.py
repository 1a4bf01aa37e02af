"""Coverage: how much of the true (full) attention mass a selection keeps.

- attention recall of row (t, h): the full-attention probability mass on the tokens of
  the selected blocks of that row;
- the oracle: the ``top_k`` blocks with the most true mass (summed over the group's
  heads for per-group selections), with the same block size and ``top_k``;
- relative recall: recall / oracle recall, row by row;
- block overlap: |selected ∩ oracle| / top_k (so early rows, which have fewer than
  ``top_k`` candidate blocks, cannot reach 1);
- recall by distance: of the true mass that lies ``d`` blocks behind the query's own
  block (``d`` in octaves 0, 1, 2-3, 4-7, ...), the share on selected blocks; it shows
  whether a selector loses far context or near context.

Everything is computed blockwise in query chunks, optionally on sampled rows with exact
normalisers, so it never builds an ``N x N`` tensor and works at 1M tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass

import torch

from .reference import block_mass, query_chunk_size
from .selection import BlockSelection, _block_one_hot
from .selectors import select_top_blocks
from .validation import check_positive_int, check_qkv, check_scale

PERCENTILES = (1, 5, 25, 50, 75, 95)


def _stats(x: torch.Tensor, threshold: float | None = None) -> dict:
    x = x.flatten().double().cpu()
    ordered = x.sort().values
    n = ordered.numel()
    out = {"mean": float(x.mean()), "min": float(ordered[0])}
    for p in PERCENTILES:
        pos = (n - 1) * p / 100
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out[f"p{p}"] = float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    if threshold is not None:
        out[f"share_below_{threshold:g}"] = float((x < threshold).double().mean())
    return out


@dataclass(frozen=True, eq=False)
class CoverageReport:
    """Per-row coverage of one selection. Tensors are float32 on the CPU:
    ``recall``, ``oracle_recall``: ``[B, Hq, R]``; ``overlap``: ``[B, Hs, R]``;
    ``positions``: the ``R`` query positions measured; ``mass_by_distance`` and
    ``kept_by_distance``: ``[num_distance_bins]`` float64 sums over rows and heads of the
    true mass, and of the selected mass, at each block distance octave."""

    recall: torch.Tensor
    oracle_recall: torch.Tensor
    overlap: torch.Tensor
    positions: torch.Tensor
    per: str
    group_size: int
    block_size: int
    top_k: int
    threshold: float
    mass_by_distance: torch.Tensor
    kept_by_distance: torch.Tensor

    @property
    def relative_recall(self) -> torch.Tensor:
        return self.recall / self.oracle_recall.clamp_min(1e-12)

    def summary(self) -> dict:
        """Mean, min and percentiles of recall, relative recall, oracle recall and
        overlap; for recall also the share of rows under ``threshold``."""
        return {
            "recall": _stats(self.recall, self.threshold),
            "relative_recall": _stats(self.relative_recall),
            "oracle_recall": _stats(self.oracle_recall, self.threshold),
            "overlap": _stats(self.overlap),
            "rows": int(self.recall.numel()),
        }

    def by_head(self) -> torch.Tensor:
        """Mean recall per query head ``[Hq]``."""
        return self.recall.mean(dim=(0, 2))

    def by_group(self) -> torch.Tensor:
        """Mean recall per KV group ``[Hkv]``."""
        return self.recall.unflatten(1, (-1, self.group_size)).mean(dim=(0, 2, 3))

    def by_position(self, num_bins: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bin centres, mean recall)`` over query position, in ``num_bins`` bins."""
        num_bins = check_positive_int(num_bins, "num_bins")
        pos = self.positions.double()
        edges = torch.linspace(float(pos.min()), float(pos.max()) + 1, num_bins + 1,
                               dtype=torch.float64)
        which = (torch.bucketize(pos, edges, right=True) - 1).clamp(0, num_bins - 1)
        per_row = self.recall.double().mean(dim=(0, 1))
        sums = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, which, per_row)
        counts = torch.bincount(which, minlength=num_bins).double()
        centres = (edges[:-1] + edges[1:]) / 2
        keep = counts > 0
        return centres[keep], (sums[keep] / counts[keep])

    @classmethod
    def from_block_mass(cls, mass: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, *, per: str,
                        group_size: int, block_size: int, top_k: int, threshold: float = 0.9,
                        oracle_ids: torch.Tensor | None = None) -> CoverageReport:
        """The report of block ids ``[B, Hs, R, K]`` for rows at ``positions`` from their true
        block mass ``[B, Hq, R, nb]`` (``oracle_ids``: the oracle's ids, if already known)."""
        if oracle_ids is None:
            oracle_ids = oracle_blocks(mass, positions, block_size=block_size, top_k=top_k, per=per,
                                       group_size=group_size)
        where = dict(block_size=block_size, group_size=group_size, per=per)
        return cls(
            recall=recall_of_blocks(mass, ids, group_size, per).float().cpu(),
            oracle_recall=recall_of_blocks(mass, oracle_ids, group_size, per).float().cpu(),
            overlap=block_overlap(ids, oracle_ids, mass.shape[-1], top_k).float().cpu(),
            positions=positions.cpu(), per=per, group_size=group_size, block_size=block_size, top_k=top_k,
            threshold=threshold, mass_by_distance=mass_by_distance(mass, None, positions, **where),
            kept_by_distance=mass_by_distance(mass, ids, positions, **where))

    @staticmethod
    def concat(reports) -> CoverageReport:
        """One report from reports of the same selection on disjoint rows (query chunks)."""
        first, *_ = reports
        cat = {f: torch.cat([getattr(r, f) for r in reports], -1)
               for f in ("recall", "oracle_recall", "overlap", "positions")}
        summed = {f: sum(getattr(r, f) for r in reports) for f in ("mass_by_distance", "kept_by_distance")}
        return dataclasses.replace(first, **cat, **summed)

    def by_distance(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(labels, recall, mass share)`` per block-distance octave that holds any mass:
        the share of the true mass at that distance that was selected, and the share of
        all true mass that lies at that distance."""
        mass, kept = self.mass_by_distance, self.kept_by_distance
        keep = mass > 0
        labels = [label for label, k in zip(distance_labels(mass.numel()), keep.tolist()) if k]
        return labels, (kept[keep] / mass[keep]), (mass[keep] / mass.sum())

    def __repr__(self) -> str:
        s = self.summary()
        r, rel, ov = s["recall"], s["relative_recall"], s["overlap"]
        below = r[f"share_below_{self.threshold:g}"]
        return (
            f"CoverageReport(per={self.per!r}, block_size={self.block_size}, top_k={self.top_k}, "
            f"rows={s['rows']:,}: recall mean {r['mean']:.3f} p5 {r['p5']:.3f}, "
            f"{100 * below:.1f}% of rows < {self.threshold:g}; "
            f"vs oracle {rel['mean']:.3f}; overlap {ov['mean']:.3f})"
        )


def _sample_positions(seq_len: int, rows, seed: int, device) -> torch.Tensor:
    if rows is None:
        return torch.arange(seq_len, device=device)
    if isinstance(rows, torch.Tensor):
        if rows.dtype.is_floating_point or rows.dtype == torch.bool or rows.is_complex():
            raise TypeError(f"rows must be an integer tensor of query positions, got {rows.dtype}")
        pos = rows.to(device=device, dtype=torch.long).flatten()
        if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= seq_len:
            raise ValueError(f"rows must be query positions in [0, {seq_len - 1}]")
        return pos
    rows = check_positive_int(rows, "rows")
    if rows >= seq_len:
        return torch.arange(seq_len, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(seq_len, generator=gen)[:rows].sort().values.to(device)


def evenly_spaced_rows(seq_len: int, rows: int, device=None) -> torch.Tensor:
    """``min(rows, seq_len)`` query positions spread evenly over ``[0, seq_len)``, first and
    last included (sorted, distinct): the rows the sweeps and the explorer measure."""
    return torch.linspace(0, seq_len - 1, min(rows, seq_len), device=device).round().long().unique()


def distance_octave(distance: torch.Tensor) -> torch.Tensor:
    """Block distance ``d >= 0`` to its octave: 0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ..."""
    d = distance.clamp_min(0)
    return torch.where(d > 0, torch.floor(torch.log2(d.clamp_min(1).double())).long() + 1, 0)


def distance_labels(num_bins: int) -> list[str]:
    """Labels of the octaves of ``distance_octave``, in blocks: '0', '1', '2-3', '4-7', ..."""
    labels = ["0", "1"]
    labels += [f"{2 ** (b - 1)}-{2 ** b - 1}" for b in range(2, num_bins)]
    return labels[:num_bins]


def mass_by_distance(mass: torch.Tensor, ids: torch.Tensor | None, positions: torch.Tensor, *,
                     block_size: int, group_size: int, per: str) -> torch.Tensor:
    """``float64 [num_octaves]``: true mass ``[B, Hq, C, nb]`` of rows at ``positions`` summed
    per distance octave (query block minus key block), over every block (``ids=None``) or
    only over the selected ones (``ids [B, Hs, C, K]``)."""
    nb = mass.shape[-1]
    distance = positions.view(-1, 1) // block_size - torch.arange(nb, device=mass.device)
    octave = distance_octave(distance)  # [C, nb]; future blocks hold no mass
    if ids is not None:
        chosen = _block_one_hot(ids, nb)
        if per == "group":
            chosen = chosen.repeat_interleave(group_size, dim=1)
        mass = mass * chosen
    per_block = mass.double().sum(dim=(0, 1))  # [C, nb]
    bins = distance_octave(torch.tensor(max(nb - 1, 0))).item() + 1
    return torch.zeros(bins, dtype=torch.float64, device=mass.device).index_add_(
        0, octave.flatten(), per_block.flatten()).cpu()


def oracle_blocks(mass: torch.Tensor, positions: torch.Tensor, *, block_size: int, top_k: int,
                  per: str, group_size: int) -> torch.Tensor:
    """The oracle's block ids ``[B, Hs, C, top_k]`` for rows at ``positions`` from their true
    block mass ``[B, Hq, C, nb]``: the ``top_k`` blocks with the most mass (summed over the
    group's heads for per-group selections), no block forced."""
    score = mass.unflatten(1, (-1, group_size)).sum(2) if per == "group" else mass
    return select_top_blocks(score, positions, block_size=block_size, top_k=top_k, force_local=False)


def block_overlap(ids: torch.Tensor, oracle_ids: torch.Tensor, num_blocks: int, top_k: int) -> torch.Tensor:
    """|selected ∩ oracle| / top_k per row."""
    return (_block_one_hot(ids, num_blocks) & _block_one_hot(oracle_ids, num_blocks)).sum(-1) / top_k


def recall_of_blocks(mass: torch.Tensor, ids: torch.Tensor, group_size: int, per: str) -> torch.Tensor:
    """Mass on the selected blocks ``[B, Hq, C]``: ``mass [B, Hq, C, nb]``, ``ids [B, Hs, C, K]``."""
    if per == "group":
        ids = ids.repeat_interleave(group_size, dim=1)
    valid = ids >= 0
    picked = mass.gather(-1, torch.where(valid, ids.long(), torch.zeros_like(ids, dtype=torch.long)))
    return (picked * valid).sum(-1)


def coverage(q: torch.Tensor, k: torch.Tensor, selection, *, scale: float | None = None,
             rows=None, seed: int = 0, threshold: float = 0.9):
    """Coverage of ``selection`` (a ``BlockSelection``, or a mapping of names to
    selections, which share one pass over the true attention) against full causal
    attention of ``q [B, N, Hq, D]``, ``k [B, N, Hkv, D]``.

    ``rows``: ``None`` for every query, an int to sample that many query positions
    (uniformly, reproducible from ``seed``), or a tensor of positions. Normalisers are
    always exact. Returns a ``CoverageReport`` (or a dict of them).
    """
    B, N, Hq, Hkv, D = check_qkv(q, k)
    scale = check_scale(scale, D)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    named = dict(selection) if isinstance(selection, Mapping) else {None: selection}
    if not named:
        raise ValueError("selection mapping is empty")
    for name, sel in named.items():
        label = "selection" if name is None else f"selection {name!r}"
        if not isinstance(sel, BlockSelection):
            raise TypeError(f"{label} must be a BlockSelection, got {type(sel).__name__}")
        sel.check_matches(B, N, Hq, Hkv, q.device, name=label)
    G = Hq // Hkv
    positions = _sample_positions(N, rows, seed, q.device)
    block_sizes = sorted({sel.block_size for sel in named.values()})
    chunk = query_chunk_size(N, B, Hq)

    parts = {name: [] for name in named}
    for start in range(0, positions.numel(), chunk):
        pos = positions[start:start + chunk]
        masses = {bs: block_mass(q, k, pos, block_size=bs, scale=scale) for bs in block_sizes}
        oracles = {}
        for name, sel in named.items():
            mass = masses[sel.block_size]
            key = (sel.block_size, sel.top_k, sel.per)
            if key not in oracles:
                oracles[key] = oracle_blocks(mass, pos, block_size=sel.block_size, top_k=sel.top_k,
                                             per=sel.per, group_size=G)
            parts[name].append(CoverageReport.from_block_mass(
                mass, sel.indices[:, :, pos], pos, per=sel.per, group_size=G, block_size=sel.block_size,
                top_k=sel.top_k, threshold=threshold, oracle_ids=oracles[key]))
    reports = {name: CoverageReport.concat(chunks) for name, chunks in parts.items()}
    return reports[None] if None in reports else reports


def output_error(out: torch.Tensor, ref: torch.Tensor, *, per_head: bool = False):
    """``||out - ref|| / ||ref||`` in float64 over ``[B, N, H, D]`` tensors; with
    ``per_head=True`` a ``[H]`` tensor, one error per head."""
    if not isinstance(out, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise TypeError("out and ref must be torch.Tensor")
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but ref has {tuple(ref.shape)}")
    if per_head and out.dim() != 4:
        raise ValueError(f"per_head=True needs [batch, seq, heads, dim] tensors, got {tuple(out.shape)}")
    diff = (out.double() - ref.double())
    if per_head:
        dims = (0, 1, 3)
        return (diff.square().sum(dims).sqrt() / ref.double().square().sum(dims).sqrt()).float()
    return float(diff.norm() / ref.double().norm())
