"""The file helpers of long work: folder lock, writability check, atomic rows, cut lines."""

import json
import multiprocessing

import pytest

from msa_lab.files import FolderLock, FolderLocked, append_json_lines, check_writable, repair_last_line


def _hold_lock(folder, ready, release):
    with FolderLock(folder):
        ready.set()
        release.wait(30)


def test_a_second_process_cannot_take_a_held_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FolderLocked, match=f"PID {holder.pid}"):
            FolderLock(tmp_path, "a sweep").acquire()
    finally:
        release.set()
        holder.join(30)
    with FolderLock(tmp_path):  # released when the holder ends
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    with FolderLock(tmp_path):
        pass


def test_read_only_folder_is_refused_before_work(tmp_path, monkeypatch):
    # CI runs as root, which ignores permission bits: fake the failing write the check must catch.
    def refuse(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.write_bytes", refuse)
    with pytest.raises(PermissionError, match=str(tmp_path)):
        check_writable(tmp_path)


def test_rows_append_whole_and_a_cut_line_is_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    append_json_lines(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3, "b"')  # a write cut by a crash
    assert repair_last_line(path)
    assert not repair_last_line(path)
    append_json_lines(path, [{"a": 4}])
    assert [json.loads(line)["a"] for line in path.read_text().splitlines()] == [1, 2, 4]


def test_a_file_of_one_cut_line_is_emptied(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": ')
    assert repair_last_line(path)
    assert path.read_text() == ""
