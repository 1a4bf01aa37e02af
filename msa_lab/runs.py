"""Finished training runs on disk (folders written by ``msa_lab.train``), read back for tables
and figures, with the seeds of a run grouped together.

A run folder holds ``config.json``, ``metrics.jsonl`` and, once finished, ``summary.json``.
``msa-lab ablate`` with several seeds writes one folder per seed, ``<run>_seed<k>``; those
folders are the seeds of one run when their configs differ only in the seed. Two folders
that claim the same run and seed (an unseeded ``msa`` next to ``msa_seed0``, say) or the same
run with different configs are an error, never an average.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

SEED_SUFFIX = re.compile(r"_seed\d+$")


def load_run(path) -> dict:
    """``{"name", "group", "path", "method", "seed", "config", "rows", "summary"}`` of a run
    folder; ``rows`` are its metrics, ``summary`` is None until it finished."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"no metrics.jsonl in {path} (not a training run folder)")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    method = (summary or {}).get("method") or config.get("model", {}).get("method", "?")
    return dict(name=path.name, group=SEED_SUFFIX.sub("", path.name), path=path, method=method,
                seed=config.get("seed"), config=config, rows=rows, summary=summary)


def find_runs(paths) -> list[dict]:
    """The runs of ``paths``: run folders, or folders of run folders (an ablation's output)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    runs = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            runs.append(load_run(p))
        elif p.is_dir():
            runs += [load_run(d) for d in sorted(p.iterdir()) if (d / "metrics.jsonl").is_file()]
        else:
            raise ValueError(f"{p}: no such folder")
    if not runs:
        raise ValueError(f"no training runs in {', '.join(map(str, paths))}")
    return runs


def sparse_from_step_0(paths) -> list[Path]:
    """The run folders of ``paths`` (as ``find_runs`` takes them) trained without an index
    warm-up: full attention, MoBA, and MSA sparse from the first step. Comparing methods on
    these leaves out MSA's dense-to-sparse variants, whose early steps are full attention."""
    return [r["path"] for r in find_runs(paths) if r["config"].get("train", {}).get("index_warmup", 0) == 0]


def group_seeds(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs by name (folder order), the seeds of a run together. A name that two parent
    folders both hold (``full`` of two ablations) is shown as ``<parent>/<name>``."""
    parents: dict[str, set] = {}
    for run in runs:
        parents.setdefault(run["group"], set()).add(run["path"].parent)
    groups: dict[str, list[dict]] = {}
    for run in runs:
        key = run["group"] if len(parents[run["group"]]) == 1 else f"{run['path'].parent.name}/{run['group']}"
        groups.setdefault(key, []).append(run)
    for key, members in groups.items():
        first = members[0]
        for other in members[1:]:
            if other["seed"] == first["seed"]:
                raise ValueError(f"{first['path']} and {other['path']} are both seed {first['seed']} of run "
                                 f"{key!r}; move one away")
            differs = _config_difference(first["config"], other["config"])
            if differs:
                raise ValueError(f"{first['path']} and {other['path']} look like seeds of one run but their "
                                 f"configs differ in {differs}")
    return groups


def _config_difference(a: dict, b: dict) -> str | None:
    """The first field (dotted) where two run configs differ, the seed aside."""
    for field, x, y in config_differences(a, b):
        if field != "seed":
            return f"{field} ({x!r} vs {y!r})"
    return None


def config_differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """Every field where two run configs differ, as ``(dotted field, value in a, value in b)``
    in sorted field order; a field one config lacks has the value None there, and a mapping it
    lacks is an empty one (a run stored before a mapping field such as ``model.options``
    existed has that field's empty default)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        mappings = all(isinstance(v, dict) or v is None for v in (x, y)) and (x is not None or y is not None)
        if mappings:
            out += config_differences(x or {}, y or {}, f"{prefix}{key}.")
        elif x != y:
            out.append((f"{prefix}{key}", x, y))
    return out


def finished(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The groups with their finished seeds only; groups with none are left out."""
    done = {name: [r for r in runs if r["summary"] is not None] for name, runs in groups.items()}
    return {name: runs for name, runs in done.items() if runs}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_range(values: list[float]) -> tuple[float, float, float]:
    """Mean, minimum and maximum over the seeds. Figures draw the range, not ± one standard
    deviation: on bimodal accuracies (a seed that failed beside two that learned) mean ± s.d.
    reaches below 0 and above 1, values no seed can have."""
    return statistics.mean(values), min(values), max(values)


def seeds_cell(values: list[float], low: float = 0.0, high: float = 1.0) -> str:
    """A table cell for one metric over the seeds: ``mean ± s.d.`` while that stays inside
    ``[low, high]``, else every seed's value (``0.932 / 0.998 / 0.008``), which is what a reader
    of a bimodal result needs."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean, sd = mean_sd(values)
    if mean - sd < low or mean + sd > high:
        return " / ".join(f"{v:.3f}" for v in values)
    return f"{mean:.3f} ± {sd:.3f}"
