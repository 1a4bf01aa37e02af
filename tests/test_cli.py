import json
import re

import pytest

from msa_lab.cli import main


def test_demo_writes_results_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seq-len", "700", "--heads", "4", "--kv-heads", "4",
                 "--head-dim", "32", "--block-size", "64", "--top-k", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    # One right-aligned row per method, whatever the widest method name makes the column.
    for method in ("full", "msa", "moba", "quest", "oracle", "window", "random", "window+sinks"):
        assert re.search(rf"^ *{re.escape(method)}  ", text, flags=re.M), method
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["oracle"]["recall_vs_oracle"] == pytest.approx(1.0)
    assert 0 < rows["msa"]["recall_mean"] <= 1 and rows["msa"]["output_error"] > 0
    assert summary["config"]["seq_len"] == 700 and summary["environment"]["torch"]
    assert (out / "coverage.csv").read_text().startswith("method,")
    html = (out / "demo.html").read_text()
    assert html.count("Plotly.newPlot") == 5  # by position, distribution, by distance, two maps


def test_bad_arguments_exit_with_a_named_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--out", str(tmp_path), "--seq-len", "256", "--block-size", "0", "--quiet"])
    assert err.value.code == 2
    assert "block_size must be a positive int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--heads", "6", "--kv-heads", "4", "--out", str(tmp_path), "--quiet"])
    assert "multiple of num_kv_heads" in capsys.readouterr().err


def test_demo_on_a_missing_gpu_is_a_one_line_error(tmp_path, capsys):
    # Issue 14: "--device cuda" without a GPU printed a raw traceback (the tests hide the GPU).
    for device, message in [("cuda", "--device cuda: no CUDA device is visible here; use --device cpu"),
                            ("tpu", "--device: expected cpu or cuda (or cuda:N), got 'tpu'")]:
        with pytest.raises(SystemExit) as err:
            main(["demo", "--out", str(tmp_path), "--device", device, "--quiet"])
        text = capsys.readouterr().err
        assert err.value.code == 2 and message in text and text.count("\n") == 1
    assert not any(tmp_path.iterdir())  # refused before any work
