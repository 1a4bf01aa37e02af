"""The sweep runner: every point of a config, timed whole and stage by stage, the rows of
each point written in one append the moment they exist.

Re-running a config skips the points already on disk for the same GPU, device and seed
(resume); every failure of one point (out of memory, a shape a kernel refuses, a Triton
compile error) becomes a row with its status and the sweep goes on. Rows are tidy:
every parameter, the GPU and library versions, the git revision, the timing statistics,
dense-equivalent and useful FLOPs, TFLOP/s both ways, the roofline bound from the cost
model with the ceilings measured at the start of the run, peak memory and a status.
"""

from __future__ import annotations

import errno
import gc
import json
import math
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..environment import gpu_environment
from ..files import FolderLock, check_file_writable, write_text_atomic
from .config import Point, SweepConfig, load_config
from .costs import Ceilings, dense_equiv_flop, measure_ceilings, stage_costs
from .store import ResultStore
from .timing import time_call
from .workloads import build_workload, measure_coverage

STAGE_ORDER = ("total", "selection", "metadata", "attention", "merge")


def _failure(err: Exception) -> str:
    """The status of a point that raised: every failure of one point is a row of it."""
    text = str(err).lower()
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if (isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text
            or "can't allocate memory" in text  # the CPU allocator's RuntimeError
            or (isinstance(err, OSError) and err.errno == errno.ENOMEM)):
        return "oom"
    if "OutOfResources" in kinds:  # Triton: tile needs more shared memory
        return "unsupported"
    if isinstance(err, (ValueError, TypeError, NotImplementedError)) or "no available kernel" in text:
        return "unsupported"
    return "error"  # Triton compile or interpreter errors, runtime errors, bugs: with their message


def _message(err: Exception) -> str:
    """``Type: first line`` of the error, and its last line where that differs (a Triton
    CompilationError opens with the source position and ends with the cause)."""
    detail = getattr(err, "error_message", None) or (str(err.__cause__) if err.__cause__ else "")
    lines = [line.strip() for line in f"{err}\n{detail}".splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and lines[-1] != lines[0]:
        text += f" ... {lines[-1]}"
    return f"{type(err).__name__}: {text[:300]}"


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
              synchronised=p.per_call)
    base = dict(base, point_id=p.point_id, **p.params, cuda_graph=p.cuda_graph)
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
    except Exception as err:  # noqa: BLE001 - a failed point is a result (KeyboardInterrupt is not an Exception)
        stage = "total" if not rows else "stages"
        rows.append(_row(base, p, stage, None, ceilings, None, _failure(err), _message(err)))
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
    wanted = _redo_spec(redo)
    found = {p.point_id for p in points if all(str(getattr(p, k)) in v for k, v in wanted.items())}
    if not found:
        spec = " ".join(f"{k}={','.join(v)}" for k, v in wanted.items())
        raise ValueError(f"redo: no point of the config matches {spec}")
    return found


def _redo_spec(redo: dict) -> dict[str, list[str]]:
    return {k: sorted(str(v).split(",")) for k, v in sorted(redo.items())}


class PendingRedo:
    """The points a ``redo`` has still to re-measure, kept in ``<out>/redo_pending.json``
    under the redo's filters and the measurement context, so that an interrupted redo (or
    one stopped by ``max_minutes``) resumes with the points it has not re-measured yet. A
    redo that finishes drops its entry: the same command then starts a new redo."""

    FILE = "redo_pending.json"

    def __init__(self, out: Path, redo: dict, context: dict, matched: set[str]):
        self.path = out / self.FILE
        self.key = json.dumps(dict(redo=_redo_spec(redo), **context), sort_keys=True)
        entries = self._entries()
        self.resumed = self.key in entries
        self.pending = set(entries[self.key]) & matched if self.resumed else set(matched)
        self.matched = len(matched)
        self._save()

    def _entries(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ValueError(f"{self.path} is not valid JSON: delete it to start the redo over") from None
        if not isinstance(entries, dict) or not all(isinstance(v, list) for v in entries.values()):
            raise ValueError(f"{self.path} is not a mapping of redo filters to point ids: delete it to "
                             "start the redo over")
        return entries

    def done(self, point_id: str) -> None:
        if point_id in self.pending:
            self.pending.discard(point_id)
            self._save()

    def _save(self) -> None:
        entries = self._entries()
        if self.pending:
            entries[self.key] = sorted(self.pending)
        else:
            entries.pop(self.key, None)
        if entries:
            write_text_atomic(self.path, json.dumps(entries, indent=1) + "\n")
        elif self.path.exists():
            self.path.unlink()


def _check_max_minutes(max_minutes) -> None:
    if max_minutes is None:
        return
    if isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float)) or not 0 < max_minutes < math.inf:
        raise ValueError(f"max_minutes must be a finite number of minutes > 0, got {max_minutes!r}")


def run_sweep(config: SweepConfig | str | Path, out_dir=None, *, retry_failed: bool = False,
              redo: dict | None = None, max_minutes: float | None = None, progress: bool = True) -> Path:
    """Run (or resume) a sweep; returns the results file. ``out_dir`` defaults to
    ``results/sweeps/<name>``; ``max_minutes`` stops before starting a point past that
    time (a re-run resumes); ``retry_failed`` re-runs points recorded as errors, OOMs or
    unsupported; ``redo`` (e.g. ``{"method": "msa"}``) re-measures the finished points it
    matches, e.g. after a kernel change (their new rows replace the old ones; an interrupted
    redo resumes with the points it has not re-measured).

    Finished points are those whose rows are all on disk for this GPU, device, seed and
    timing mode. The output folder is locked while the sweep runs (a second sweep on it
    fails at once) and checked writable before any work."""
    if not isinstance(config, SweepConfig):
        source = Path(config)
        config = load_config(source)
    else:
        source = None
    _check_max_minutes(max_minutes)
    matched = matching(config.points, redo) if redo else set()
    out = Path(out_dir) if out_dir is not None else Path("results") / "sweeps" / config.name
    with FolderLock(out, f"the sweep results of {config.name}"):
        store = ResultStore(out / "results.jsonl")
        if store.open_for_writing():
            print(f"{store.path}: cut a partial last line (a write interrupted by a kill); "
                  "its point runs again", flush=True)
        if source is not None and source.resolve() != (out / "config.yaml").resolve():
            if (out / "config.yaml").exists():  # the folder itself was checked by the lock
                check_file_writable(out / "config.yaml")
            shutil.copyfile(source, out / "config.yaml")
        environment = gpu_environment()
        # A decode point's timing (graph replays or synchronised calls) is part of its point id.
        context = dict(gpu=environment["gpu"], device=config.device, seed=config.seed)
        done = store.finished(retry_failed=retry_failed, **context)
        pending = PendingRedo(out, redo, context, matched) if redo else None
        if pending is not None:
            verb = "resuming the redo" if pending.resumed else "redo"
            print(f"{verb} {' '.join(f'{k}={v}' for k, v in redo.items())}: {len(pending.pending)} of "
                  f"{pending.matched} matching points to re-measure", flush=True)
            done -= pending.pending
        todo = [p for p in config.points if p.point_id not in done]
        if not todo:
            print(f"{config.name}: all {len(config.points)} points are in {store.path}")
            return store.path
        print(f"{config.name}: {len(todo)} of {len(config.points)} points to run "
              f"({len(config.points) - len(todo)} already in {store.path})", flush=True)
        _run_points(config, todo, store, pending, {"sweep": config.name, **context, **environment},
                    max_minutes, progress)
    return store.path


def _run_points(config: SweepConfig, todo: list[Point], store: ResultStore, pending: PendingRedo | None,
                base: dict, max_minutes: float | None, progress: bool) -> None:
    """Measure ``todo``, short points first (a stopped sweep still has every method at the
    lengths it reached), appending each point's rows in one write."""
    from tqdm.auto import tqdm

    todo = sorted(todo, key=lambda p: (p.seq_len, p.batch))
    if config.mode == "coverage":  # nothing is timed: no ceilings to measure
        ceilings = Ceilings({}, 0.0)
    else:
        ceilings = measure_ceilings(config.device, sorted({p.dtype for p in todo}))
        base.update(peak_tflops={k: round(v, 1) for k, v in ceilings.matmul_tflops.items()},
                    copy_tb_per_s=round(ceilings.copy_tb_per_s, 3))
    start = time.monotonic()
    failed = 0
    bar = tqdm(todo, desc=config.name, unit="point", disable=not progress, dynamic_ncols=True)
    for i, p in enumerate(bar):
        # Past the time limit, stop before the next point; the first always runs, so that
        # each call makes progress.
        if i and max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            bar.close()
            print(f"stopped after {max_minutes} min with {len(todo) - i} points left; "
                  "run the same command again to resume", flush=True)
            break
        bar.set_postfix_str(p.describe())
        t0 = time.monotonic()
        rows = run_point(p, config, base, ceilings)
        attempt = uuid.uuid4().hex[:12]
        store.append_point([dict(row, attempt=attempt, point_rows=len(rows)) for row in rows])
        if pending is not None:
            pending.done(p.point_id)
        for row in rows:
            if row["status"] != "ok":
                bar.write(f"{p.describe()}: {row['status']} {row['message']}")
                failed += row["status"] == "error"
        bar.set_postfix_str(f"last point {time.monotonic() - t0:.1f} s")
    if failed:
        print(f"{failed} point(s) failed with an error (messages above and in the rows); "
              "--retry-failed runs them again", flush=True)
