"""Sweep results on disk: one JSON object per line, appended and flushed as each row
arrives, so an interrupted sweep loses nothing and a re-run knows what is finished."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Statuses of a point that ran to an end; "error" points are re-run with retry_failed.
FINISHED = ("ok", "oom", "unsupported", "skipped")


class ResultStore:
    def __init__(self, path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict]:
        return load_results(self.path) if self.path.exists() else []

    def finished(self, retry_failed: bool = False) -> set[str]:
        """Point ids whose whole-operator row is on disk (with retry_failed: only those
        that did not fail)."""
        done = FINISHED[:1] if retry_failed else FINISHED + ("error",)
        return {r["point_id"] for r in self.rows() if r.get("stage") == "total" and r.get("status") in done}


def load_results(*paths) -> list[dict]:
    """Rows of one or more results files (a file or a folder holding results.jsonl). A
    point measured again replaces its earlier rows; a line cut short by an interrupted
    write is skipped."""
    latest: dict[tuple, dict] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.jsonl"
        if not path.is_file():
            raise ValueError(f"no results file at {str(path)!r}")
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (row.get("gpu"), row.get("point_id"), row.get("stage"))
            if row.get("stage") == "total":  # a re-run point drops its old stage rows
                for old in [k for k in latest if k[:2] == key[:2]]:
                    del latest[old]
            latest[key] = row
    return list(latest.values())


def checkout_path(*parts) -> Path:
    """A path inside the msa_lab checkout, e.g. ``checkout_path("experiments", "results",
    "sweeps", "prefill_1m_h200")``: the committed configs and GPU results ship with the git
    checkout (``pip install -e .``), not with a wheel."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    if not path.exists():
        raise ValueError(f"{path} does not exist: committed results and configs come with a git checkout "
                         "of msa_lab installed with pip install -e .")
    return path
