"""Result rows that are printed and written to a JSON file as each one arrives, so an
interrupted run keeps every finished row."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def gpu_environment(**extra) -> dict:
    """What every result file records: GPU name and library versions."""
    env = dict(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
               torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version())
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return dict(env, **extra)


class ResultRows(list):
    def __init__(self, path, environment: dict):
        super().__init__()
        self.path, self.environment = Path(path), environment

    def append(self, row: dict) -> None:
        super().append(row)
        print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        self.path.write_text(json.dumps(dict(environment=self.environment, rows=list(self)), indent=1,
                                        default=float) + "\n")
