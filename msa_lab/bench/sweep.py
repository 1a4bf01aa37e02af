"""The sweep runner: every point of a config, timed whole and stage by stage, each row
written the moment it exists.

Re-running a config skips the points already on disk (resume); an out-of-memory or
unsupported point becomes a row with its status and the sweep goes on. Rows are tidy:
every parameter, the GPU and library versions, the git revision, the timing statistics,
dense-equivalent and useful FLOPs, TFLOP/s both ways, the roofline bound from the cost
model with the ceilings measured at the start of the run, peak memory and a status.
"""

from __future__ import annotations

import gc
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .config import Point, SweepConfig, load_config
from .costs import Ceilings, dense_equiv_flop, measure_ceilings, stage_costs
from .results import gpu_environment
from .store import ResultStore
from .timing import time_call
from .workloads import build_workload, measure_coverage

STAGE_ORDER = ("total", "selection", "metadata", "attention", "merge")


def _failure(err: BaseException) -> str | None:
    """The status of a point that raised, or None for a bug that must propagate."""
    text = str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return "oom"
    if type(err).__name__ == "OutOfResources":  # Triton: tile needs more shared memory
        return "unsupported"
    if isinstance(err, (ValueError, TypeError, NotImplementedError)) or "No available kernel" in text:
        return "unsupported"
    if isinstance(err, RuntimeError):
        return "error"
    return None


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _row(base: dict, p, stage: str, timing: dict | None, ceilings: Ceilings, peak_bytes, status="ok",
         message="") -> dict:
    cost = None if p.mode == "coverage" else stage_costs(p).get(stage)
    row = dict(base, stage=stage, status=status, message=message)
    if cost is not None:
        row.update(useful_flop=cost.flop, min_bytes=cost.bytes)
        if stage == "total":
            row["dense_equiv_flop"] = dense_equiv_flop(p)
        bound, limit = ceilings.bound_ms(cost, p.dtype)
        row.update(bound_ms=bound, bound_by=limit)
    if timing is not None:
        row.update(timing)
        ms = timing["median_ms"]
        if cost is not None:
            row["tflops_useful"] = cost.flop / ms / 1e9
            row["pct_of_bound"] = 100.0 * row["bound_ms"] / ms
        if stage == "total":
            row["tflops_dense_equiv"] = row["dense_equiv_flop"] / ms / 1e9
    row["peak_mem_gb"] = None if peak_bytes is None else peak_bytes / 1e9
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def run_point(p, config: SweepConfig, base: dict, ceilings: Ceilings) -> list[dict]:
    """Rows of one point: the whole operator, then its stages; a failure becomes a row."""
    device = config.device
    cuda = device == "cuda"
    # Decode without graphs is timed per synchronised call: a generation loop of single
    # calls pays each call's launches and host work.
    kw = dict(repeats=config.repeats, max_seconds=config.max_seconds_per_point, cuda_graph=p.cuda_graph,
              synchronised=p.mode == "decode" and not p.cuda_graph)
    base = dict(base, point_id=p.point_id, **p.params)
    if p.max_seq_len is not None and p.seq_len > p.max_seq_len:
        return [_row(base, p, "total", None, ceilings, None, "skipped",
                     f"seq_len above this method's max_seq_len ({p.max_seq_len}) in the config")]
    rows: list[dict] = []
    workload = None
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if p.mode == "coverage":
            metrics = measure_coverage(p, device, config.seed)
            peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
            finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
            return [dict(base, stage="total", status="ok", message="", **metrics, peak_mem_gb=peak,
                         finished_at=finished)]
        workload = build_workload(p, device, config.seed)
        timing = time_call(workload.total, device, **kw)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        rows.append(_row(base, p, "total", timing, ceilings, peak))
        if p.stages:
            stages = workload.stages()
            for name in sorted(stages, key=STAGE_ORDER.index):
                rows.append(_row(base, p, name, time_call(stages[name], device, **kw), ceilings, None))
    except Exception as err:  # noqa: BLE001 - a failed point is a result; a bug re-raises
        status = _failure(err)
        if status is None:
            raise
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
        stage = "total" if not rows else "stages"
        rows.append(_row(base, p, stage, None, ceilings, None, status, message))
    finally:
        del workload
        _free(device)
    return rows


def matching(points, redo: dict) -> set[str]:
    """Ids of the points whose parameters match every ``key: value`` of ``redo``; values
    are compared as text and a comma separates alternatives, so ``{"seq_len":
    "524288,1048576"}`` works from the command line."""
    known = Point.__dataclass_fields__
    for key in redo:
        if key not in known:
            raise ValueError(f"redo: unknown point field {key!r} (known: {', '.join(known)})")
    wanted = {k: str(v).split(",") for k, v in redo.items()}
    return {p.point_id for p in points if all(str(getattr(p, k)) in v for k, v in wanted.items())}


def run_sweep(config: SweepConfig | str | Path, out_dir=None, *, retry_failed: bool = False,
              redo: dict | None = None, max_minutes: float | None = None, progress: bool = True) -> Path:
    """Run (or resume) a sweep; returns the results file. ``out_dir`` defaults to
    ``results/sweeps/<name>``; ``max_minutes`` stops before starting a point past that
    time (a re-run resumes); ``retry_failed`` re-runs points recorded as errors, OOMs or
    unsupported; ``redo`` (e.g. ``{"method": "msa"}``) re-measures the finished points it
    matches, e.g. after a kernel change (their new rows replace the old ones)."""
    from tqdm.auto import tqdm

    if not isinstance(config, SweepConfig):
        source = Path(config)
        config = load_config(source)
    else:
        source = None
    out = Path(out_dir) if out_dir is not None else Path("results") / "sweeps" / config.name
    out.mkdir(parents=True, exist_ok=True)
    if source is not None and source.resolve() != (out / "config.yaml").resolve():
        shutil.copyfile(source, out / "config.yaml")
    store = ResultStore(out / "results.jsonl")
    done = store.finished(retry_failed=retry_failed) - (matching(config.points, redo) if redo else set())
    todo = [p for p in config.points if p.point_id not in done]
    # Short points first, so a stopped sweep still has every method at the lengths it reached.
    todo.sort(key=lambda p: (p.seq_len, p.batch))
    if not todo:
        print(f"{config.name}: all {len(config.points)} points are in {store.path}")
        return store.path
    print(f"{config.name}: {len(todo)} of {len(config.points)} points to run "
          f"({len(config.points) - len(todo)} already in {store.path})", flush=True)
    base = dict(sweep=config.name, device=config.device, **gpu_environment())
    if config.mode == "coverage":  # nothing is timed: no ceilings to measure
        ceilings = Ceilings({}, 0.0)
    else:
        ceilings = measure_ceilings(config.device, sorted({p.dtype for p in todo}))
        base.update(peak_tflops={k: round(v, 1) for k, v in ceilings.matmul_tflops.items()},
                    copy_tb_per_s=round(ceilings.copy_tb_per_s, 3))
    start = time.monotonic()
    bar = tqdm(todo, desc=config.name, unit="point", disable=not progress, dynamic_ncols=True)
    for i, p in enumerate(bar):
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            bar.close()
            print(f"stopped after {max_minutes} min with {len(todo) - i} points left; "
                  "run the same command again to resume", flush=True)
            break
        bar.set_postfix_str(p.describe())
        t0 = time.monotonic()
        for row in run_point(p, config, base, ceilings):
            store.append(row)
            if row["status"] != "ok":
                bar.write(f"{p.describe()}: {row['status']} {row['message']}")
        bar.set_postfix_str(f"last point {time.monotonic() - t0:.1f} s")
    return store.path
