"""Result rows that are printed and written to a JSON file as each one arrives, so an
interrupted run keeps every finished row."""

from __future__ import annotations

import json
from pathlib import Path

# Where results were measured lives in msa_lab/environment.py; re-exported for code that imports it from here.
from ..environment import PROCESS_ID, gpu_environment, package_hash  # noqa: F401


class ResultRows(list):
    def __init__(self, path, environment: dict):
        super().__init__()
        self.path, self.environment = Path(path), environment

    def append(self, row: dict) -> None:
        super().append(row)
        print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        self.path.write_text(json.dumps(dict(environment=self.environment, rows=list(self)), indent=1,
                                        default=float) + "\n")
