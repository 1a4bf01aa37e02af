"""scripts/setup.sh, run against stand-ins for python3, apt-get and id on a PATH without a
browser: a failed Chromium step stops set-up with a non-zero exit (so `make` does not mark
the venv installed and tries again), apt-get waits for another apt's locks, and
MSA_LAB_NO_BROWSER=1 skips the step knowingly."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
# python3 -m venv DIR: a venv whose pip does nothing and whose python prints a torch version.
FAKE_PYTHON = """#!/bin/bash
mkdir -p "$3/bin"
printf '#!/bin/bash\\nexit 0\\n' > "$3/bin/pip"
printf '#!/bin/bash\\necho torch 0\\n' > "$3/bin/python"
chmod +x "$3/bin/pip" "$3/bin/python"
"""
# apt-get that logs its arguments and fails `lock_failures` times with apt's lock message,
# then exits with `final`.
FAKE_APT = """#!/bin/bash
echo "$*" >> "{log}"
n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"
if [ "$n" -lt {lock_failures} ]; then
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2; exit 100
fi
exit {final}
"""


def run_setup(tmp_path, *, apt=True, lock_failures=0, final=0, env=None):
    """Run setup.sh with only these tools on PATH (no browser); returns the finished process
    and the apt-get calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "chmod", "cat", "grep", "mktemp", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    stubs = {"python3": FAKE_PYTHON, "id": "#!/bin/bash\necho 0\n", "sleep": "#!/bin/bash\n"}
    if apt:
        stubs["apt-get"] = FAKE_APT.format(log=tmp_path / "apt.log", count=tmp_path / "apt.count",
                                           lock_failures=lock_failures, final=final)
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    full_env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "APT_LOCK_WAIT": "30", **(env or {})}
    done = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "setup.sh"), str(tmp_path / "venv")],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "apt.log").read_text().splitlines() if (tmp_path / "apt.log").exists() else []
    return done, log


def test_a_failed_chromium_install_fails_set_up_and_names_the_way_out(tmp_path):
    done, log = run_setup(tmp_path, final=100)
    assert done.returncode != 0
    assert "FAILED: apt-get" in done.stderr and "MSA_LAB_NO_BROWSER=1" in done.stderr
    assert "setup: done" not in done.stdout


def test_apt_waits_for_another_apts_locks(tmp_path):
    done, log = run_setup(tmp_path, lock_failures=1)
    assert done.returncode == 0, done.stderr
    assert "waiting for another apt" in done.stdout
    assert len(log) == 3 and log[0].endswith("update -qq") and log[2].endswith("install -y -qq chromium")
    assert all("DPkg::Lock::Timeout=30" in call for call in log)


def test_a_lock_held_past_the_wait_fails_set_up(tmp_path):
    done, log = run_setup(tmp_path, lock_failures=10**6, env={"APT_LOCK_WAIT": "0"})
    assert done.returncode != 0 and "Could not get lock" in done.stderr and len(log) == 1


def test_no_way_to_install_a_browser_fails_set_up(tmp_path):
    done, _ = run_setup(tmp_path, apt=False)
    assert done.returncode != 0 and "no Chrome/Chromium found" in done.stderr
    assert "MSA_LAB_NO_BROWSER=1" in done.stderr


def test_msa_lab_no_browser_skips_the_chromium_step_knowingly(tmp_path):
    done, log = run_setup(tmp_path, final=100, env={"MSA_LAB_NO_BROWSER": "1"})
    assert done.returncode == 0, done.stderr
    assert "MSA_LAB_NO_BROWSER=1: no Chromium step" in done.stdout and not log

