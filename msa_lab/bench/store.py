"""Sweep results on disk: one JSON object per line, a point's rows appended in one write
(``msa_lab.files.append_json_lines``), so an interrupted sweep loses at most the point in
flight and a re-run knows what is finished.

Rows of one measured point share an ``attempt`` id and record how many rows the point has
(``point_rows``): a point counts as finished only when all of them are on disk. Rows written
before these fields existed (the committed GPU results) count as one attempt per ``total``
row, as they always did.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import append_json_lines, check_file_writable, check_writable, repair_last_line

#: Statuses of a point that ran to an end; "error" points are re-run with retry_failed.
FINISHED = ("ok", "oom", "unsupported", "skipped")


def measurement_key(row: dict) -> tuple:
    """What a row measured and where: the point (its parameters' hash), the GPU, the device,
    the input seed and whether CUDA-graph replays were timed. Rows from before the seed and
    ``cuda_graph`` were recorded count as seed 0 (no committed config set another) and
    ``cuda_graph`` as what their ``timing`` says."""
    return (row.get("point_id"), row.get("gpu"), row.get("device"), row.get("seed", 0),
            row.get("cuda_graph", row.get("timing") == "cuda graph replay"))


def _latest_attempts(rows) -> dict[tuple, list[dict]]:
    """The rows of the latest attempt at each measurement, in file order."""
    latest: dict[tuple, list[dict]] = {}
    attempt_of: dict[tuple, object] = {}
    for row in rows:
        key, attempt = measurement_key(row), row.get("attempt")
        legacy_start = attempt is None and row.get("stage") == "total"
        if key not in latest or legacy_start or attempt != attempt_of[key]:
            latest.pop(key, None)  # a new attempt goes last, as the file has it
            latest[key], attempt_of[key] = [], attempt
        latest[key].append(row)
    return latest


def _complete(rows: list[dict]) -> bool:
    expected = rows[0].get("point_rows")
    if expected is None:  # a legacy attempt: its total row is what marked it finished
        return any(r.get("stage") == "total" for r in rows)
    return len(rows) == expected


def _point_status(rows: list[dict]) -> str:
    """``ok`` when every row of the point is, else the first other status (a stage that ran
    out of memory makes the point ``oom``)."""
    return next((r.get("status") for r in rows if r.get("status") != "ok"), "ok")


class ResultStore:
    def __init__(self, path):
        self.path = Path(path)

    def open_for_writing(self) -> bool:
        """Check the file (or its folder) can be written, before any work, and cut a last
        line left partial by a killed write; returns whether one was cut."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(self.path.parent)
        if self.path.exists():
            check_file_writable(self.path)
        return repair_last_line(self.path)

    def append(self, row: dict) -> None:
        self.append_point([row])

    def append_point(self, rows: list[dict]) -> None:
        """All rows of one point in one write: a reader sees the whole point or none of it."""
        append_json_lines(self.path, rows)

    def rows(self) -> list[dict]:
        return list(_read_rows(self.path)) if self.path.exists() else []

    def point_statuses(self, **context) -> dict[str, str]:
        """``{point_id: status}`` of the points whose latest attempt is complete on disk,
        among the rows whose ``measurement_key`` fields match ``context`` (``gpu``,
        ``device``, ``seed``, ``cuda_graph``): another GPU's or seed's rows are not this
        sweep's."""
        names = ("point_id", "gpu", "device", "seed", "cuda_graph")
        unknown = set(context) - set(names[1:])
        if unknown:
            raise ValueError(f"point_statuses: unknown context field(s) {sorted(unknown)}; known: {names[1:]}")
        wanted = {names.index(k): v for k, v in context.items()}
        statuses = {}
        for key, rows in _latest_attempts(self.rows()).items():
            if all(key[i] == v for i, v in wanted.items()) and _complete(rows):
                statuses[key[0]] = _point_status(rows)
        return statuses

    def finished(self, retry_failed: bool = False, **context) -> set[str]:
        """Point ids finished on disk for ``context`` (see ``point_statuses``); with
        retry_failed only those that did not fail."""
        done = FINISHED[:1] if retry_failed else FINISHED + ("error",)
        return {pid for pid, status in self.point_statuses(**context).items() if status in done}


def _read_rows(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted write (repaired when next written)
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object (a results row), got {line[:80]!r}")
        yield row


def load_results(*paths) -> list[dict]:
    """Rows of one or more results files (a file or a folder holding results.jsonl). A
    point measured again replaces its earlier rows (per GPU, device, seed and timing mode);
    a line cut short by an interrupted write is skipped."""
    rows = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.jsonl"
        if not path.is_file():
            raise ValueError(f"no results file at {str(path)!r}")
        rows += _read_rows(path)
    out = []
    for attempt in _latest_attempts(rows).values():
        by_stage = {}  # a stage written twice in one legacy attempt: the later row
        for row in attempt:
            by_stage[row.get("stage")] = row
        out += by_stage.values()
    return out


def checkout_path(*parts) -> Path:
    """A path inside the msa_lab checkout, e.g. ``checkout_path("experiments", "results",
    "sweeps", "prefill_1m_h200")``: the committed configs and GPU results ship with the git
    checkout (``pip install -e .``), not with a wheel."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    if not path.exists():
        raise ValueError(f"{path} does not exist: committed results and configs come with a git checkout "
                         "of msa_lab installed with pip install -e .")
    return path
