import json

from msa_lab.bench import ResultRows


def test_result_rows_are_on_disk_after_every_append(tmp_path):
    path = tmp_path / "rows.json"
    rows = ResultRows(path, {"gpu": "none"})
    rows.append({"method": "a", "median_ms": 1.5})
    assert json.loads(path.read_text())["rows"] == [{"method": "a", "median_ms": 1.5}]
    rows.append({"method": "b", "status": "OOM"})
    saved = json.loads(path.read_text())
    assert saved["environment"] == {"gpu": "none"} and [r["method"] for r in saved["rows"]] == ["a", "b"]
