"""What every result records about where it was measured: the GPU, the library versions,
the code (git revision and package hash) and the process."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import uuid
from pathlib import Path

import torch


def git_revision() -> str:
    """The checkout's commit (``-dirty`` when files differ from it); ``MSA_LAB_GIT_REVISION``
    overrides it, for copies of the tree without ``.git`` (the GPU machine gets one)."""
    if os.environ.get("MSA_LAB_GIT_REVISION"):
        return os.environ["MSA_LAB_GIT_REVISION"]
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


#: One id per Python process: rows that share it were timed in the same process, the only
#: rows whose timings may be divided into a ratio (SPEC, benchmark protocol).
PROCESS_ID = uuid.uuid4().hex[:12]


def package_hash() -> str:
    """sha256 (first 16 hex digits) of every ``.py`` file of the installed ``msa_lab``, its
    subpackages included, by relative path and contents: it names the code that ran even when
    the git revision is ``-dirty`` or the tree has no ``.git`` (the GPU machine's copy)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def gpu_environment(**extra) -> dict:
    """What every result records: GPU name, library versions (cuDNN's too), the code's
    revision and package hash, and the id of the process that measured it."""
    from . import __version__

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env = dict(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
               torch=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn, python=platform.python_version(),
               msa_lab=__version__, git_revision=git_revision(), package_hash=package_hash(),
               process=PROCESS_ID)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return dict(env, **extra)
