"""Files that long work writes: one writer per output folder, a writability check before
any work starts, whole JSON lines appended atomically, and a cut last line repaired.

The sweep runner and the training runner both write results as they go and resume from
what is on disk; these helpers are what keeps a finished row from being lost or doubled
when a run is killed, or when two runs are pointed at one folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from pathlib import Path

LOCK_NAME = ".msa_lab.lock"


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (``flock`` on ``folder/.msa_lab.lock``),
    held until ``release()`` or the end of a ``with`` block. The kernel drops it when the
    holder dies, so a killed run never leaves a stale lock behind. The lock file records the
    holder's PID for the error message."""

    def __init__(self, folder, what: str = "this folder"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        check_writable(self.folder)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise FolderLocked(f"{self.folder} is in use by another process (PID {holder}) writing "
                                   f"{self.what}; wait for it to finish or stop it, then run again") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(folder) -> None:
    """Raise a ``PermissionError`` naming ``folder`` unless a file can be created in it;
    called before any work so a read-only folder fails at once, not after the first point."""
    folder = Path(folder)
    probe = folder / f".msa_lab.write_check.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write to {folder} ({err.strerror}); choose a writable output "
                              "folder") from None


def append_json_lines(path, rows: list[dict]) -> None:
    """Append ``rows`` as JSON lines in one ``write`` on an ``O_APPEND`` descriptor, then
    ``fsync``: a reader sees all of the rows or none of them unless the machine dies
    mid-write, and then ``repair_last_line`` drops the cut tail on the next open."""
    if not rows:
        return
    data = "".join(json.dumps(row, default=float) + "\n" for row in rows).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk: undo the partial line rather than leave it
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(errno.ENOSPC, f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_last_line(path) -> bool:
    """Cut a last line that has no newline (a write interrupted by a crash) off ``path``;
    returns whether anything was cut. Every complete line is kept."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # Walk back to the last newline; everything after it is the cut line.
        block, end = 1 << 16, size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                break
            end = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
    return True


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename, so a reader never sees half."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def check_file_writable(path) -> None:
    """Like ``check_writable`` for an existing file (opened for appending, nothing written):
    a read-only results file fails before any work, not at the first row."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as err:
        raise PermissionError(f"cannot write to {path} ({err.strerror}); make it writable or choose "
                              "another output folder") from None


def safe_file_name(text: str) -> str:
    """``text`` made into one plain file name: every character but letters, digits, ``_``
    and ``-`` becomes ``_`` (no separators, no ``..``, no dots a suffix could be read from),
    for names built from values read out of files."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(text))
    if not name:
        raise ValueError(f"cannot make a file name of {text!r}")
    return name


def path_inside(folder, name: str) -> Path:
    """``folder / safe_file_name(name)``, checked to resolve inside ``folder`` (a link out
    of it is refused)."""
    folder = Path(folder)
    path = folder / safe_file_name(name)
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{path} resolves to {path.resolve()}, outside {folder}; refusing to write there")
    return path
