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
  whether a selector loses far context or near context;
- the MSA paper's block recall and score recall (Sec. 5.2), per (query, query head), against
  ``I*``, the ``top_k`` blocks by that head's own true mass (no block forced, ties to the
  lower id): ``|I* ∩ selected| / |I*|`` and the share of ``I*``'s mass on selected blocks.

Everything is computed blockwise in query chunks, optionally on sampled rows with exact
normalisers, so it never builds an ``N x N`` tensor and works at 1M tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass

import torch

from .reference import block_mass, query_chunk_size
from .selection import PER_CHOICES, BlockSelection, block_one_hot
from .select import select_top_blocks
from .validation import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_positions,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
)

PERCENTILES = (1, 5, 25, 50, 75, 95)
#: The per-(query, query head) metrics of a report, ``[B, Hq, R]`` each: what ``by_head``,
#: ``by_group`` and ``by_position`` can break down.
ROW_METRICS = ("recall", "oracle_recall", "relative_recall", "block_recall", "score_recall")


def _stats(x: torch.Tensor, threshold: float | None = None) -> dict:
    """Mean, min and percentiles of ``x``. A non-finite value (NaN from overflowing logits)
    ranks below every finite one and counts as under ``threshold``: a failed row is never
    reported as a good one (``min`` and the low percentiles then read NaN)."""
    x = x.flatten().double().cpu()
    finite = torch.isfinite(x)
    bad = int((~finite).sum())
    ordered = torch.cat([torch.full((bad,), float("nan"), dtype=torch.float64), x[finite].sort().values])
    n = ordered.numel()
    out = {"mean": float(x.mean()), "min": float(ordered[0])}
    for p in PERCENTILES:
        pos = (n - 1) * p / 100
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out[f"p{p}"] = float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    if threshold is not None:
        out[f"share_below_{threshold:g}"] = float(((x < threshold) | ~finite).double().mean())
    return out


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def _check_block_ids(ids, name: str, shape: tuple, num_blocks: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.is_complex() \
            or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of block ids, got "
                        f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must be [batch, selection heads, rows, top_k] = {list(shape)}, "
                         f"got {list(ids.shape)}")
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()
    if lo < -1 or hi >= num_blocks:
        raise ValueError(f"{name} must be block ids in [-1, {num_blocks - 1}], got range [{lo}, {hi}]")


def _check_block_mass_inputs(mass, ids, positions, oracle_ids, head_oracle_ids, *, per, group_size,
                             block_size, top_k, threshold) -> None:
    """The checks of ``CoverageReport.from_block_mass``: every tensor against ``mass``."""
    check_choice(per, "per", PER_CHOICES)
    group_size = check_positive_int(group_size, "group_size")
    block_size = check_positive_int(block_size, "block_size")
    top_k = check_positive_int(top_k, "top_k")
    _check_threshold(threshold)
    check_tensor(mass, "mass", 4, "[batch, heads, rows, num_blocks]")
    B, Hq, R, nb = mass.shape
    if Hq % group_size:
        raise ValueError(f"mass has {Hq} heads, not a multiple of group_size {group_size}")
    if R == 0 or nb == 0:
        raise ValueError(f"mass must have rows and num_blocks > 0, got {tuple(mass.shape)}")
    positions = check_positions(positions, "positions", nb * block_size)
    if positions.numel() != R:
        raise ValueError(f"positions must give one position per row of mass ({R}), got {positions.numel()}")
    shape = (B, Hq // group_size if per == "group" else Hq, R, top_k)
    _check_block_ids(ids, "ids", shape, nb)
    if oracle_ids is not None:
        _check_block_ids(oracle_ids, "oracle_ids", shape, nb)
    if head_oracle_ids is not None:
        _check_block_ids(head_oracle_ids, "head_oracle_ids", (B, Hq, R, top_k), nb)
    for name, x in (("ids", ids), ("positions", positions), ("oracle_ids", oracle_ids),
                    ("head_oracle_ids", head_oracle_ids)):
        if x is not None and x.device != mass.device:
            raise ValueError(f"{name} is on {x.device} but mass is on {mass.device}")


@dataclass(frozen=True, eq=False)
class CoverageReport:
    """Per-row coverage of one selection. Tensors are float32 on the CPU:
    ``recall``, ``oracle_recall``, ``block_recall``, ``score_recall`` (the MSA paper's, against
    each head's own top-``top_k`` blocks by true mass): ``[B, Hq, R]``; ``overlap``: ``[B, Hs, R]``;
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
    block_recall: torch.Tensor
    score_recall: torch.Tensor

    @property
    def relative_recall(self) -> torch.Tensor:
        return self.recall / self.oracle_recall.clamp_min(1e-12)

    def summary(self) -> dict:
        """Mean, min and percentiles of recall, relative recall, oracle recall, overlap and
        the paper's block recall and score recall; for recall, oracle recall, block recall and
        score recall also the share of rows under ``threshold``. ``nonfinite_rows`` counts the
        rows where any of recall, oracle recall, block recall or score recall is NaN or inf
        (only possible when the logits overflow); they count as under ``threshold`` and make
        ``mean``, ``min`` and the low percentiles NaN."""
        nonfinite = ~(torch.isfinite(self.recall) & torch.isfinite(self.oracle_recall)
                      & torch.isfinite(self.block_recall) & torch.isfinite(self.score_recall))
        return {
            "recall": _stats(self.recall, self.threshold),
            "relative_recall": _stats(self.relative_recall),
            "oracle_recall": _stats(self.oracle_recall, self.threshold),
            "overlap": _stats(self.overlap),
            "block_recall": _stats(self.block_recall, self.threshold),
            "score_recall": _stats(self.score_recall, self.threshold),
            "rows": int(self.recall.numel()),
            "nonfinite_rows": int(nonfinite.sum()),
        }

    def _row_metric(self, metric: str) -> torch.Tensor:
        return getattr(self, check_choice(metric, "metric", ROW_METRICS))

    def by_head(self, metric: str = "recall") -> torch.Tensor:
        """Mean of ``metric`` (one of ``ROW_METRICS``) per query head ``[Hq]``; a NaN row
        makes its head's mean NaN."""
        return self._row_metric(metric).mean(dim=(0, 2))

    def by_group(self, metric: str = "recall") -> torch.Tensor:
        """Mean of ``metric`` per KV group ``[Hkv]``."""
        return self._row_metric(metric).unflatten(1, (-1, self.group_size)).mean(dim=(0, 2, 3))

    def by_position(self, num_bins: int = 32, metric: str = "recall") -> tuple[torch.Tensor, torch.Tensor]:
        """``(bin centres, mean of metric)`` over query position, in ``num_bins`` bins."""
        num_bins = check_positive_int(num_bins, "num_bins")
        values = self._row_metric(metric)
        pos = self.positions.double()
        edges = torch.linspace(float(pos.min()), float(pos.max()) + 1, num_bins + 1,
                               dtype=torch.float64)
        which = (torch.bucketize(pos, edges, right=True) - 1).clamp(0, num_bins - 1)
        per_row = values.double().mean(dim=(0, 1))
        sums = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, which, per_row)
        counts = torch.bincount(which, minlength=num_bins).double()
        centres = (edges[:-1] + edges[1:]) / 2
        keep = counts > 0
        return centres[keep], (sums[keep] / counts[keep])

    @classmethod
    def from_block_mass(cls, mass: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, *, per: str,
                        group_size: int, block_size: int, top_k: int, threshold: float = 0.9,
                        oracle_ids: torch.Tensor | None = None,
                        head_oracle_ids: torch.Tensor | None = None) -> CoverageReport:
        """The report of block ids ``[B, Hs, R, K]`` for rows at ``positions`` from their true
        block mass ``[B, Hq, R, nb]`` (``oracle_ids``: the oracle's ids, if already known;
        ``head_oracle_ids``: the paper's ``I*`` ``[B, Hq, R, K]``, ``oracle_blocks`` with
        ``per="head"``, if already known)."""
        _check_block_mass_inputs(mass, ids, positions, oracle_ids, head_oracle_ids, per=per,
                                 group_size=group_size, block_size=block_size, top_k=top_k,
                                 threshold=threshold)
        if oracle_ids is None:
            oracle_ids = oracle_blocks(mass, positions, block_size=block_size, top_k=top_k, per=per,
                                       group_size=group_size)
            if per == "head" and head_oracle_ids is None:  # the per-head oracle is the paper's I* itself
                head_oracle_ids = oracle_ids
        if head_oracle_ids is None:
            head_oracle_ids = oracle_blocks(mass, positions, block_size=block_size, top_k=top_k, per="head",
                                            group_size=group_size)
        block_recall, score_recall = paper_recall(mass, ids, head_oracle_ids, group_size, per)
        where = dict(block_size=block_size, group_size=group_size, per=per)
        return cls(
            recall=recall_of_blocks(mass, ids, group_size, per).float().cpu(),
            oracle_recall=recall_of_blocks(mass, oracle_ids, group_size, per).float().cpu(),
            overlap=block_overlap(ids, oracle_ids, mass.shape[-1], top_k).float().cpu(),
            positions=positions.cpu(), per=per, group_size=group_size, block_size=block_size, top_k=top_k,
            threshold=threshold, mass_by_distance=mass_by_distance(mass, None, positions, **where),
            kept_by_distance=mass_by_distance(mass, ids, positions, **where),
            block_recall=block_recall.float().cpu(), score_recall=score_recall.float().cpu())

    @staticmethod
    def concat(reports) -> CoverageReport:
        """One report from reports of the same selection on disjoint rows (query chunks)."""
        reports = list(reports)
        if not reports or not all(isinstance(r, CoverageReport) for r in reports):
            raise TypeError("reports must be a non-empty sequence of CoverageReport")
        first = reports[0]
        settings = ("per", "group_size", "block_size", "top_k", "threshold")
        for r in reports[1:]:
            differ = [f for f in settings if getattr(r, f) != getattr(first, f)]
            if differ or r.recall.shape[:2] != first.recall.shape[:2]:
                raise ValueError(f"reports must come from one selection on disjoint rows; they differ in "
                                 f"{', '.join(differ) or 'batch or heads'}")
        cat = {f: torch.cat([getattr(r, f) for r in reports], -1)
               for f in ("recall", "oracle_recall", "overlap", "positions", "block_recall", "score_recall")}
        summed = {f: sum(getattr(r, f) for r in reports) for f in ("mass_by_distance", "kept_by_distance")}
        return dataclasses.replace(first, **cat, **summed)

    def by_distance(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(labels, recall, mass share)`` per block-distance octave that holds any mass:
        the share of the true mass at that distance that was selected, and the share of
        all true mass that lies at that distance."""
        mass, kept = self.mass_by_distance, self.kept_by_distance
        keep = (mass > 0) | ~torch.isfinite(mass)  # a NaN octave shows as NaN, not as missing
        labels = [label for label, k in zip(distance_labels(mass.numel()), keep.tolist()) if k]
        return labels, (kept[keep] / mass[keep]), (mass[keep] / mass.sum())

    def __repr__(self) -> str:
        s = self.summary()
        r, rel, ov = s["recall"], s["relative_recall"], s["overlap"]
        br, sr = s["block_recall"], s["score_recall"]
        below = r[f"share_below_{self.threshold:g}"]
        return (
            f"CoverageReport(per={self.per!r}, block_size={self.block_size}, top_k={self.top_k}, "
            f"rows={s['rows']:,}: recall mean {r['mean']:.3f} p5 {r['p5']:.3f}, "
            f"{100 * below:.1f}% of rows < {self.threshold:g}; "
            f"vs oracle {rel['mean']:.3f}; overlap {ov['mean']:.3f}; "
            f"paper: block recall mean {br['mean']:.3f} p5 {br['p5']:.3f}, "
            f"score recall mean {sr['mean']:.3f} p5 {sr['p5']:.3f}"
            + (f"; {s['nonfinite_rows']:,} rows non-finite" if s["nonfinite_rows"] else "") + ")"
        )


def _sample_positions(seq_len: int, rows, seed: int, device) -> torch.Tensor:
    if rows is None:
        return torch.arange(seq_len, device=device)
    if isinstance(rows, torch.Tensor):
        return check_positions(rows, "rows", seq_len).to(device)
    rows = check_positive_int(rows, "rows")
    if rows >= seq_len:
        return torch.arange(seq_len, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(seq_len, generator=gen)[:rows].sort().values.to(device)


def evenly_spaced_rows(seq_len: int, rows: int, device=None) -> torch.Tensor:
    """``min(rows, seq_len)`` query positions spread evenly over ``[0, seq_len)``, first and
    last included (sorted, distinct): the rows the sweeps and the explorer measure."""
    seq_len = check_positive_int(seq_len, "seq_len")
    rows = check_positive_int(rows, "rows")
    return torch.linspace(0, seq_len - 1, min(rows, seq_len), device=device).round().long().unique()


def distance_octave(distance: torch.Tensor) -> torch.Tensor:
    """Block distance ``d >= 0`` to its octave: 0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ..."""
    if not isinstance(distance, torch.Tensor) or distance.is_floating_point() or distance.is_complex():
        raise TypeError("distance must be an integer tensor of block distances, got "
                        f"{distance.dtype if isinstance(distance, torch.Tensor) else type(distance).__name__}")
    d = distance.clamp_min(0)
    return torch.where(d > 0, torch.floor(torch.log2(d.clamp_min(1).double())).long() + 1, 0)


def distance_labels(num_bins: int) -> list[str]:
    """Labels of the octaves of ``distance_octave``, in blocks: '0', '1', '2-3', '4-7', ..."""
    num_bins = check_int(num_bins, "num_bins", minimum=0)
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
        chosen = block_one_hot(ids, nb)
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
    return (block_one_hot(ids, num_blocks) & block_one_hot(oracle_ids, num_blocks)).sum(-1) / top_k


def paper_recall(mass: torch.Tensor, ids: torch.Tensor, head_oracle_ids: torch.Tensor, group_size: int,
                 per: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The MSA paper's ``(block recall, score recall)`` (Sec. 5.2), ``[B, Hq, C]`` each, of the
    selection ``ids [B, Hs, C, K]`` against ``I* = head_oracle_ids [B, Hq, C, K]``, each head's
    own top-``K`` blocks by true mass ``mass [B, Hq, C, nb]`` (a group selection's row counts
    for every head of the group): ``|I* ∩ Î| / |I*|`` and
    ``sum_{b in I* ∩ Î} P_b / sum_{b in I*} P_b``. A row whose mass holds a NaN or inf has no
    true ranking: both are NaN there, never a finite value."""
    nb = mass.shape[-1]
    if per == "group":
        ids = ids.repeat_interleave(group_size, dim=1)
    best = block_one_hot(head_oracle_ids, nb)
    hit = best & block_one_hot(ids, nb)
    zero = torch.zeros((), dtype=mass.dtype, device=mass.device)
    # The same masked sum over the same blocks: a selection holding all of I* scores exactly 1.
    block = hit.sum(-1).to(mass.dtype) / best.sum(-1).to(mass.dtype)  # |I*| >= 1: the own block is visible
    score = torch.where(hit, mass, zero).sum(-1) / torch.where(best, mass, zero).sum(-1)
    broken = ~torch.isfinite(mass).all(-1)
    nan = torch.full((), float("nan"), dtype=mass.dtype, device=mass.device)
    return torch.where(broken, nan, block), torch.where(broken, nan, score)


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
    # A NaN or inf in q or k makes whole rows of the true attention NaN: there is no true
    # mass to compare against, so such inputs are refused rather than summarised.
    check_finite(q, "q")
    check_finite(k, "k")
    scale = check_scale(scale, D)
    threshold = _check_threshold(threshold)
    seed = check_int(seed, "seed")
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
        oracles = {}  # by (block size, top_k, per); the per="head" one is the paper's I*
        for name, sel in named.items():
            mass = masses[sel.block_size]
            for per in {sel.per, "head"}:
                key = (sel.block_size, sel.top_k, per)
                if key not in oracles:
                    oracles[key] = oracle_blocks(mass, pos, block_size=sel.block_size, top_k=sel.top_k,
                                                 per=per, group_size=G)
            parts[name].append(CoverageReport.from_block_mass(
                mass, sel.indices[:, :, pos], pos, per=sel.per, group_size=G, block_size=sel.block_size,
                top_k=sel.top_k, threshold=threshold, oracle_ids=oracles[(sel.block_size, sel.top_k, sel.per)],
                head_oracle_ids=oracles[(sel.block_size, sel.top_k, "head")]))
    reports = {name: CoverageReport.concat(chunks) for name, chunks in parts.items()}
    return reports[None] if None in reports else reports


def output_error(out: torch.Tensor, ref: torch.Tensor, *, per_head: bool = False):
    """``||out - ref|| / ||ref||`` in float64 over real floating-point tensors of one shape
    (``[B, N, H, D]``); with ``per_head=True`` a ``[H]`` tensor, one error per head.

    Where ``ref`` is all zero (over the whole tensor, or over a head) the error is 0 if
    ``out`` is all zero there too, and a ``ValueError`` otherwise: a relative error to
    nothing is undefined. Empty and complex inputs are refused; a NaN or inf in either
    input gives NaN (the output is broken, and the error says so)."""
    check_bool(per_head, "per_head")
    for name, x in (("out", out), ("ref", ref)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got {x.dtype}")
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but ref has {tuple(ref.shape)}")
    if out.numel() == 0:
        raise ValueError(f"out and ref must not be empty, got shape {tuple(out.shape)}")
    if per_head and out.dim() != 4:
        raise ValueError(f"per_head=True needs [batch, seq, heads, dim] tensors, got {tuple(out.shape)}")
    if out.device != ref.device:
        raise ValueError(f"out is on {out.device} but ref is on {ref.device}")
    dims = (0, 1, 3) if per_head else tuple(range(out.dim()))
    diff = out.double() - ref.double()
    err_norm = diff.square().sum(dims).sqrt()
    ref_norm = ref.double().square().sum(dims).sqrt()
    zero_ref = ref_norm == 0
    undefined = zero_ref & (err_norm != 0)
    if bool(undefined.any()):
        where = f"head {int(undefined.nonzero()[0])} of ref" if per_head else "ref"
        raise ValueError(f"{where} is all zero but out is not: the relative error is undefined")
    error = torch.where(zero_ref, torch.zeros_like(err_norm), err_norm / ref_norm)
    return error.float() if per_head else float(error)
