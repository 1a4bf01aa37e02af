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

# Static figure export (kaleido) and the JupyterLab browser test drive a Chromium that is
# installed here, at set-up, so nothing is downloaded when a figure is exported.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
        && ! command -v google-chrome >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
        echo "setup: installing Debian's Chromium for PNG/SVG/PDF export"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
        if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
            echo "setup: could not install chromium; HTML figures work, PNG/SVG/PDF need Chrome or Chromium"
        fi
    else
        echo "setup: no Chrome/Chromium found; HTML figures work, PNG/SVG/PDF export needs one" \
             "(Debian: apt-get install chromium; or set BROWSER_PATH)"
    fi
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
