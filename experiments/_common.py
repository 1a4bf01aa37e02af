"""What the experiment scripts share: this checkout's ``msa_lab`` first on ``sys.path``, a
result file whose rows carry the environment they were measured in, and the relative error
the correctness checks report.

Import it before ``msa_lab``. ``python experiments/X.py`` puts this folder on ``sys.path``,
not the checkout, so without it the scripts would run an installed ``msa_lab`` (or none, on
the GPU machine's copy of the tree) instead of the code beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from msa_lab.bench import ResultRows  # noqa: E402
from msa_lab.environment import gpu_environment  # noqa: E402


def result_rows(path, *, announce: bool = False, **environment) -> ResultRows:
    """Rows written to the JSON file ``path`` (its folder made) as each arrives, with the
    environment (``environment`` adds keys to it); ``announce`` prints the environment first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = gpu_environment(**environment)
    if announce:
        print(json.dumps(env), flush=True)
    return ResultRows(path, env)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` (Frobenius norms, float64); inf where ``out`` is not finite."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())
