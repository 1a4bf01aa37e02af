#!/usr/bin/env bash
# Create a virtual environment with msa_lab installed for development.
# On a machine without an NVIDIA GPU, PyTorch's CPU build is installed first so that
# pip does not pull several GB of CUDA wheels.
#
# Every step that fails stops the script with a non-zero exit, so `make` does not mark the
# venv installed and the next `make` tries again. MSA_LAB_NO_BROWSER=1 skips the Chromium
# step knowingly (HTML figures still work; PNG/SVG/PDF export and the JupyterLab browser
# test then cannot run, and the test report says so).
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
# Seconds to wait for another apt/dpkg (an unattended upgrade, a second set-up) to let go.
APT_LOCK_WAIT="${APT_LOCK_WAIT:-300}"

"$PYTHON" -m venv "$VENV"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: no NVIDIA GPU found; installing the CPU build of PyTorch"
    # With torch 2.13 pin triton 3.9 (an unpinned triton may resolve to an older one).
    "$VENV/bin/pip" install --quiet "torch==2.13.0" "triton==3.9.0"
fi
"$VENV/bin/pip" install --quiet -e ".[dev,export]"

browser_failed() {
    echo "setup: FAILED: $1" >&2
    echo "setup: PNG/SVG/PDF export and the JupyterLab browser test need Chrome or Chromium." >&2
    echo "setup: fix that and run make again, or set MSA_LAB_NO_BROWSER=1 to set up without a browser." >&2
    exit 1
}

# apt-get waiting for the locks of another apt: DPkg::Lock::Timeout covers dpkg's lock;
# `apt-get update` takes the lists lock without a timeout of its own, so it is retried
# until APT_LOCK_WAIT seconds have passed while its error names a lock.
apt_get() {
    local deadline=$((SECONDS + APT_LOCK_WAIT)) log
    log="$(mktemp)"
    until $SUDO apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" 2>"$log"; do
        if ! grep -qi "lock" "$log" || ((SECONDS >= deadline)); then
            cat "$log" >&2
            rm -f "$log"
            return 1
        fi
        echo "setup: waiting for another apt to release its lock ($*)"
        sleep 5
    done
    rm -f "$log"
}

# Static figure export (kaleido) and the JupyterLab browser test drive a Chromium that is
# installed here, at set-up, so nothing is downloaded when a figure is exported.
if [ "${MSA_LAB_NO_BROWSER:-0}" = 1 ]; then
    echo "setup: MSA_LAB_NO_BROWSER=1: no Chromium step (PNG/SVG/PDF export and the JupyterLab browser test will not run)"
elif [ -n "${BROWSER_PATH:-}" ] || command -v chromium >/dev/null 2>&1 \
        || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then
    :  # a browser is there already
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing Debian's Chromium for PNG/SVG/PDF export"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    apt_get update -qq || browser_failed "apt-get update did not succeed (see above)"
    apt_get install -y -qq chromium >/dev/null || browser_failed "apt-get install chromium did not succeed (see above)"
else
    browser_failed "no Chrome/Chromium found, and apt-get as root (or with passwordless sudo) is not available to \
install one (Debian: apt-get install chromium; elsewhere install Chrome or Chromium, or set BROWSER_PATH to one)"
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
