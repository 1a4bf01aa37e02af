"""Result rows that are printed and written to a JSON file as each one arrives, so an
interrupted run keeps every finished row."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def git_revision() -> str:
    """The checkout's commit (``-dirty`` when files differ from it); ``MSA_LAB_GIT_REVISION``
    overrides it, for copies of the tree without ``.git`` (the GPU machine gets one)."""
    if os.environ.get("MSA_LAB_GIT_REVISION"):
        return os.environ["MSA_LAB_GIT_REVISION"]
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def gpu_environment(**extra) -> dict:
    """What every result records: GPU name, library versions and the code's revision."""
    from .. import __version__

    env = dict(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
               torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               msa_lab=__version__, git_revision=git_revision())
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
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
