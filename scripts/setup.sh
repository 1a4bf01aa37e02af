#!/usr/bin/env bash
# Create a virtual environment with msa_lab installed for development.
# On a machine without an NVIDIA GPU, PyTorch's CPU build is installed first so that
# pip does not pull several GB of CUDA wheels.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: no NVIDIA GPU found; installing the CPU build of PyTorch"
    # With torch 2.13 pin triton 3.9 (an unpinned triton may resolve to an older one).
    "$VENV/bin/pip" install --quiet "torch==2.13.0" "triton==3.9.0"
fi
"$VENV/bin/pip" install --quiet -e ".[dev,export]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
