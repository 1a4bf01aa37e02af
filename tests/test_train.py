"""Generated tasks, the training runner (checkpoints, resume, metrics), ablations."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msa_lab import tasks
from msa_lab.files import FolderLock, FolderLocked
from msa_lab.train import (CheckpointError, load_checkpoint, parse_run_config, run_ablation, run_training,
                           save_checkpoint, summary_table)

TINY = dict(name="tiny", device="cpu", seed=3,
            model=dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, method="msa",
                       full_layers=[0], block_size=16, top_k=2, backend="reference"),
            task=dict(name="mqar", seq_len=64, options=dict(num_pairs=4)),
            train=dict(steps=6, batch=4, lr=3e-3, lr_warmup=2, index_warmup=3, log_every=1, checkpoint_every=2,
                       eval_every=3),
            eval=dict(seq_lens=[64, 96], batches=1, coverage=True))


def tiny(**changes):
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


@pytest.mark.parametrize("change, message", [
    (dict(train__step=5), "train: unknown field 'step'; did you mean 'steps'"),
    (dict(task__name="mqr"), "task.name must be one of"),
    (dict(task__options=dict(num_pair=3)), "task.options"),
    (dict(task=dict(name="text", seq_len=64, options=dict(split="val"))), "task.options.split: text trains on"),
    (dict(model__method="full"), "train.index_warmup is for model.method: msa"),
    (dict(eval__depths=[0.5]), "eval.depths is for task.name: passkey"),
    (dict(model__num_kv_heads=3), "must be a multiple of model.num_kv_heads"),
    (dict(modle={}), "did you mean 'model'"),
    # values that would train silently into garbage, or fail only after training
    (dict(train__grad_clip=-1), "train.grad_clip (or null/0 for no clipping) must be a finite number >= 0, got -1"),
    (dict(train__grad_clip=float("nan")), "train.grad_clip (or null/0 for no clipping) must be a finite number"),
    (dict(train__lr=float("inf")), "train.lr must be a finite number > 0, got inf"),
    (dict(train__lr=0), "train.lr must be a finite number > 0, got 0"),
    (dict(train__index_loss_weight=float("nan")), "train.index_loss_weight must be a finite number >= 0, got nan"),
    (dict(train__weight_decay="0.1"), "train.weight_decay must be a number >= 0, got '0.1'"),
    (dict(eval__seq_lens=[0]), "eval.seq_lens[] must be an int >= 2, got 0"),
    (dict(eval__batches=0), "eval.batches must be an int >= 1, got 0"),
    (dict(eval__seed="a"), "eval.seed must be an int >= 0, got 'a'"),
    (dict(eval__coverage="yes"), "eval.coverage must be true or false, got 'yes'"),
    (dict(model__full_layers=[2]), "model.full_layers[] must be layer indices in [0, 1] (model.num_layers is 2), got 2"),
    (dict(model__d_model=2), "the head dim (model.head_dim: null gives d_model // num_heads = 2 // 4) must be an even"),
    (dict(model__d_model=36), "d_model // num_heads = 36 // 4) must be an even int >= 2 (RoPE turns pairs of channels), got 9"),
    (dict(model__head_dim=7), "model.head_dim must be an even int >= 2 (RoPE turns pairs of channels), got 7"),
    (dict(model__index_dim=5), "model.index_dim must be an even int >= 2"),
    (dict(task=dict(name="passkey", seq_len=64), eval__depths=[1.5]), "eval.depths (1.5) at 64 tokens: depth must be in"),
])
def test_bad_training_configs_name_the_field(change, message):
    with pytest.raises(ValueError) as err:
        parse_run_config(tiny(**change))
    assert message in str(err.value)


def test_no_clipping_is_null_or_zero():
    assert parse_run_config(tiny(train__grad_clip=None))["train"]["grad_clip"] is None
    assert parse_run_config(tiny(train__grad_clip=0))["train"]["grad_clip"] == 0


def test_a_triton_backend_without_a_gpu_is_refused_before_training(monkeypatch):
    from msa_lab import triton_runtime as runtime

    monkeypatch.setattr(runtime, "interpreted", lambda: False)  # the tests run the kernels interpreted
    with pytest.raises(ValueError, match="model.backend: triton needs device: cuda"):
        parse_run_config(tiny(model__backend="triton"))
    parse_run_config(tiny(model__backend="triton", device="cuda"), check_device=False)


def test_mqar_answers_are_the_values_bound_at_the_start():
    x, y = tasks.mqar(3, 100, 128, torch.Generator().manual_seed(0), num_pairs=6)
    for b in range(3):
        bound = dict(zip(x[b, 0:12:2].tolist(), x[b, 1:12:2].tolist()))
        scored = (y[b] != -100).nonzero().flatten()
        assert len(scored) == 6
        for p in scored.tolist():
            assert y[b, p] == bound[int(x[b, p])] == x[b, p + 1]


def test_passkey_sits_at_its_depth_and_variable_chains_resolve():
    gen = torch.Generator().manual_seed(1)
    for depth in (0.0, 0.5, 1.0):
        x, y = tasks.passkey(2, 200, 64, gen, depth=depth, digits=3)
        at = int((x[0] == tasks.PASS).nonzero()[0])
        assert at == round(depth * (200 - 9))
        assert torch.equal(y[0, -4:-1], x[0, at + 1:at + 4])  # the answer is the planted key
    x, y = tasks.variable_tracking(4, 300, 128, gen, hops=3, chains=3)
    for b in range(4):
        env = {}
        row = x[b].tolist()
        for i in range(len(row) - 3):
            if row[i + 1] == tasks.ASSIGN:
                env[row[i]] = env.get(row[i + 2], row[i + 2])
        assert env[row[-2]] == y[b, -2] == row[-1]
    x, _ = tasks.passkey(64, 200, 64, gen, digits=3)  # training: a random depth per sequence
    assert len(set((x == tasks.PASS).nonzero()[:, 1].tolist())) > 20
    with pytest.raises(ValueError, match="depth must be in"):
        tasks.passkey(1, 50, 64, gen, depth=2)
    text_x, text_y = tasks.text(2, 64, 300, gen)
    assert torch.equal(text_x[:, 1:], text_y[:, :-1]) and int(text_x.max()) < 256 + tasks.FIRST_FREE
    with pytest.raises(ValueError, match="split must be one of 'train', 'val'; got 'test'"):
        tasks.text(1, 64, 300, gen, split="test")


def test_text_is_scored_on_held_out_bytes_by_position(tmp_path, monkeypatch):
    corpus = tasks._corpus()
    cut = int(0.9 * corpus.numel())
    seen = []
    real = tasks.text

    def spy(batch, seq_len, vocab_size, gen, *, split="train"):
        x, y = real(batch, seq_len, vocab_size, gen, split=split)
        seen.append((split, x))
        return x, y

    monkeypatch.setitem(tasks.GENERATORS, "text", spy)
    raw = tiny(model__vocab_size=261, task={"name": "text", "seq_len": 64}, train__steps=2, train__index_warmup=0,
               train__eval_every=0, eval__coverage=False)
    summary = json.loads((run_training(raw, tmp_path, progress=False) / "summary.json").read_text())
    splits = [split for split, _ in seen]
    # the config check (the task, then each eval length), 2 steps, then the evaluation
    assert splits[:5] == ["train", "val", "val", "train", "train"] and set(splits[5:]) == {"val"}
    held_out = bytes((corpus[cut:] - tasks.FIRST_FREE).tolist())
    for _, x in seen[5:]:
        assert all(bytes((row - tasks.FIRST_FREE).tolist()) in held_out for row in x)
    for e in summary["eval"]:
        bins = e["loss_by_position"]
        assert len(bins) == 16 and all(b is not None and b > 0 for b in bins)  # every position is scored


def test_training_writes_metrics_checkpoints_and_resumes_to_the_same_model(tmp_path):
    whole = run_training(tiny(), tmp_path / "whole", progress=False)
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[0]["phase"].startswith("index warm-up") and train[-1]["phase"] == "sparse"
    assert all(r["index_kl"] > 0 for r in train)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {(r["step"], r["seq_len"]) for r in evals} == {(3, 64), (3, 96), (6, 64), (6, 96)}
    cover = [r for r in rows if r["kind"] == "coverage"]
    assert {r["selector"] for r in cover} == {"msa (trained index)", "moba", "oracle"}
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["steps"] == 6 and 0 <= summary["eval"][0]["exact_match"] <= 1
    before = (whole / "metrics.jsonl").read_text()
    run_training(tiny(), whole, progress=False)  # finished: left as it is, no second evaluation
    assert (whole / "metrics.jsonl").read_text() == before

    parts = tmp_path / "parts"
    run_training(tiny(), parts, progress=False, max_steps=4)
    assert not (parts / "summary.json").exists()
    run_training(tiny(), parts, progress=False)  # resumes at step 4
    a = load_checkpoint(whole / "checkpoint.pt")["model"]
    b = load_checkpoint(parts / "checkpoint.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_summary_records_the_revision_read_before_training(tmp_path, monkeypatch):
    import itertools

    import msa_lab.train as train_module

    revisions = itertools.count(1)

    def environment(**extra):  # each call sees a newer commit: one lands while the run trains
        return dict(extra, git_revision=f"rev{next(revisions)}")
    monkeypatch.setattr(train_module, "gpu_environment", environment)
    real_evaluate = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: (environment(), real_evaluate(*a, **k))[1])
    out = run_training(tiny(), tmp_path / "run", progress=False)
    assert next(revisions) > 2 and json.loads((out / "summary.json").read_text())["git_revision"] == "rev1"


def test_ablation_runs_every_entry_and_tabulates(tmp_path):
    raw = tiny(train__steps=2, train__index_warmup=0, train__eval_every=0, eval__coverage=False)
    raw["runs"] = [{"name": "full", "model.method": "full"}, {"name": "msa", "model.top_k": 3}]
    out = run_ablation(raw, tmp_path, progress=False)
    table = (out / "summary.md").read_text()
    assert "| full | full |" in table and "| msa | msa | 16 | 3 |" in table
    assert table == summary_table(out) + "\n"
    with pytest.raises(ValueError, match=r"only \(--runs\): no run named 'msaa'; did you mean 'msa'\? \(the runs: full, msa\)"):
        run_ablation(raw, tmp_path / "bad", progress=False, only=["msaa"])
    with pytest.raises(ValueError, match="must not end in _seed<k>"):
        run_ablation(dict(raw, runs=[{"name": "lr_seed1"}]), tmp_path / "bad", progress=False)
    raw["runs"] = [{"name": "x", "modle.method": "full"}]
    with pytest.raises(ValueError, match="runs: 'modle.method'"):
        run_ablation(raw, tmp_path / "bad", progress=False)


def test_ablation_runs_side_by_side_train_the_same_models(tmp_path):
    raw = tiny(train__steps=2, train__index_warmup=0, train__eval_every=0, eval__coverage=False)
    raw["runs"] = [{"name": "full", "model.method": "full"}, {"name": "msa"}, {"name": "moba", "model.method": "moba"}]
    alone = run_ablation(raw, tmp_path / "alone", progress=False, only=["full", "msa"])
    assert sorted(p.parent.name for p in alone.glob("*/summary.json")) == ["full", "msa"]
    shared = run_ablation(raw, tmp_path / "shared", progress=False, jobs=2, only=["full", "msa"])
    for run in ("full", "msa"):
        a = load_checkpoint(alone / run / "checkpoint.pt")["model"]
        b = load_checkpoint(shared / run / "checkpoint.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (alone / "summary.md").read_text() == (shared / "summary.md").read_text()



def test_ablation_over_seeds_tabulates_mean_and_spread(tmp_path):
    raw = tiny(train__steps=2, train__index_warmup=0, train__eval_every=0, eval__coverage=False, seeds=[0, 5])
    raw["runs"] = [{"name": "full", "model.method": "full"}, {"name": "msa"}]
    out = run_ablation(raw, tmp_path, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["full_seed0", "full_seed5", "msa_seed0", "msa_seed5"]
    acc = [json.loads((out / f"msa_seed{k}" / "summary.json").read_text())["eval"][0]["token_accuracy"] for k in (0, 5)]
    row = next(line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| msa |"))
    mean, spread = float(np.mean(acc)), float(np.std(acc, ddof=1))
    assert "| 2 |" in row and f"{mean:.3f} ± {spread:.3f}" in row
    again = run_ablation(raw, tmp_path / "one", progress=False, seeds=[5], only=["msa"])
    assert [p.name for p in again.iterdir() if p.is_dir()] == ["msa_seed5"]
    a = load_checkpoint(again / "msa_seed5" / "checkpoint.pt")["model"]
    b = load_checkpoint(out / "msa_seed5" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        parse_run_config(tiny(seeds=[1, 1]))
    with pytest.raises(ValueError, match=r"seeds\[\] must be an int >= 0, got \[0\]"):
        parse_run_config(tiny(seeds=[[0]]))
    # an unseeded run beside its seeds is seed 0 twice: an error, not a fourth seed
    shutil.copytree(out / "msa_seed0", out / "msa")
    with pytest.raises(ValueError, match="are both seed 0 of run 'msa'"):
        summary_table(out)
    shutil.rmtree(out / "msa")
    # folders named like seeds of one run but trained with different configs are not averaged
    shutil.copytree(out / "full_seed0", out / "msa_seed7")
    config = json.loads((out / "msa_seed7" / "config.json").read_text())
    (out / "msa_seed7" / "config.json").write_text(json.dumps(dict(config, seed=7)))
    with pytest.raises(ValueError, match=r"configs differ in model.method \('msa' vs 'full'\)"):
        summary_table(out)


def test_a_failing_run_side_by_side_is_named(tmp_path):
    raw = tiny(train__steps=2, train__index_warmup=0, train__eval_every=0, eval__coverage=False)
    raw["runs"] = [{"name": "ok", "model.method": "full"}, {"name": "bad"}]
    # every config is checked before any run starts, so the failure in the child is its run
    # folder, held by another writer (this test)
    with FolderLock(tmp_path / "bad"):
        with pytest.raises(RuntimeError, match=r"run 'bad' failed \(FolderLocked: .*bad is in use by another process"):
            run_ablation(raw, tmp_path, progress=False, jobs=2)
    with pytest.raises(ValueError, match=r"eval.seq_lens \(8\): num_pairs=4 needs seq_len >= 16, got 8"):
        run_ablation(dict(raw, runs=[{"name": "bad", "eval.seq_lens": [8]}]), tmp_path, progress=False, jobs=2)

def test_cli_train_reports_a_typo(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {stesp: 3}\n")
    done = subprocess.run([sys.executable, "-m", "msa_lab.cli", "train", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "did you mean 'steps'" in done.stderr


def test_every_shipped_training_config_and_its_runs_are_valid():
    import yaml

    from msa_lab.train import _override

    paths = sorted((Path(__file__).parent.parent / "experiments/configs").glob("train_*.yaml"))
    assert {p.name for p in paths} >= {"train_smoke_cpu.yaml", "train_ablation_gpu.yaml"}
    for path in paths:
        cfg = parse_run_config(yaml.safe_load(path.read_text()), check_device=False)
        for run in cfg["runs"]:
            parse_run_config(_override(cfg, run), check_device=False)


def test_training_figures(tmp_path):
    from msa_lab.viz import training

    raw = tiny(task={"name": "passkey", "seq_len": 64, "options": {"digits": 2}}, train__steps=2,
               train__index_warmup=1, train__eval_every=0, eval__depths=[0.0, 1.0], eval__seq_lens=[64, 80])
    run = run_training(raw, tmp_path / "passkey", progress=False)
    heat = training.needle_heatmap_figure(run)
    assert len(heat.data[0].z) == 2 and len(heat.data[0].z[0]) == 2  # depths x lengths
    loss = training.loss_figure(tmp_path)
    assert {t.name for t in loss.data} >= {training.run_label(json.loads((run / "config.json").read_text()))}
    assert training.index_coverage_figure(run).data
    by_position = training.loss_by_position_figure(run)
    assert [a.text for a in by_position.layout.annotations] == ["64 tokens", "80 tokens"]
    summary = json.loads((run / "summary.json").read_text())
    for trace, n in zip(by_position.data, (64, 80)):
        rows = [e["loss_by_position"] for e in summary["eval"] if e["seq_len"] == n]
        scored = [i for i in range(16) if any(r[i] is not None for r in rows)]  # the passkey's answer only
        assert 0 < len(scored) < 16 and list(trace.x) == [(i + 0.5) * n / 16 for i in scored]
        assert trace.y[-1] == pytest.approx(np.mean([r[scored[-1]] for r in rows]))
    with pytest.raises(ValueError, match="no passkey evaluation by depth"):
        training.needle_heatmap_figure(run_training(tiny(train__steps=1, train__index_warmup=0,
                                                         eval__coverage=False), tmp_path / "m", progress=False))
    with pytest.raises(ValueError, match="metric must be"):
        training.accuracy_figure(tmp_path, "recall")



def test_training_figures_average_over_seeds():
    from msa_lab.viz import training

    gpu = Path(__file__).parent.parent / "experiments/results/train/ablation_gpu_h200"
    seeds = [json.loads((gpu / f"msa_seed{k}" / "summary.json").read_text()) for k in range(3)]
    per_seed = [np.mean([e["token_accuracy"] for e in s["eval"] if e["seq_len"] == 1024]) for s in seeds]
    msa = "MSA, block 16 x top-4, 800 warm-up steps"  # the run msa, by its readable name
    line = next(t for t in training.accuracy_figure(gpu).data if t.name == msa)
    at = list(line.x).index(1024)
    assert line.y[at] == pytest.approx(np.mean(per_seed))
    # the bars span the seeds: from the lowest to the highest
    assert line.error_y.array[at] == pytest.approx(max(per_seed) - np.mean(per_seed))
    assert line.error_y.arrayminus[at] == pytest.approx(np.mean(per_seed) - min(per_seed))
    grid = training.needle_grid_figure(gpu)
    assert [a.text for a in grid.layout.annotations] == ["full attention", "MoBA", "MSA<br>from scratch",
                                                         "MSA<br>800 warm-up steps", "MSA<br>200 warm-up steps"]
    with pytest.raises(ValueError, match="run: name one of full, moba"):
        training.needle_heatmap_figure(gpu)
    heat = training.needle_heatmap_figure(gpu, metric="token_accuracy", run="msa")
    cell = np.mean([e["token_accuracy"] for s in seeds for e in s["eval"] if e["seq_len"] == 2048 and e.get("depth") == 0.0])
    assert heat.data[0].z[0][-1] == pytest.approx(cell) and "mean of 3 seeds" in heat.layout.title.text
    loss = training.loss_figure(gpu)
    assert sum(t.name == msa for t in loss.data) == 1
    # runs of the same readable name from two ablations stay apart, named by their folder too
    results = gpu.parent
    names = {t.name for t in training.accuracy_figure([results / "smoke_cpu", results / "passkey_cpu"]).data}
    assert {"full attention (smoke_cpu/full)", "full attention (passkey_cpu/full)",
            "MoBA, block 16 x top-4, all layers sparse"} <= names and len(names) == 8


def test_sparse_from_step_0_leaves_out_the_index_warm_up_runs():
    from msa_lab.runs import sparse_from_step_0

    results = Path(__file__).parent.parent / "experiments/results/train"
    kept = {p.parent.name + "/" + re.sub(r"_seed\d+$", "", p.name)
            for p in sparse_from_step_0([results / "ablation_gpu_h200", results / "block_topk_gpu_h200"])}
    assert kept == {"ablation_gpu_h200/full", "ablation_gpu_h200/moba", "ablation_gpu_h200/msa_no_warmup",
                    "block_topk_gpu_h200/moba_b8_k8", "block_topk_gpu_h200/moba_b32_k2",
                    "block_topk_gpu_h200/msa_b8_k8_scratch", "block_topk_gpu_h200/msa_b32_k2_scratch"}
    one = results / "ablation_gpu_h200" / "msa_seed0"  # 800 warm-up steps
    assert sparse_from_step_0([one]) == [] and sparse_from_step_0(one.parent / "full_seed0") == [one.parent / "full_seed0"]


def test_loss_by_position_of_the_committed_text_runs(tmp_path):
    from msa_lab.viz import training

    text = tmp_path / "text_cpu"
    shutil.copytree(Path(__file__).parent.parent / "experiments/results/train/text_cpu", text)
    fig = training.loss_by_position_figure(text)
    summary = json.loads((text / "msa/summary.json").read_text())
    bins = next(e["loss_by_position"] for e in summary["eval"] if e["seq_len"] == 1024)
    label = "MSA, block 32 x top-4, from scratch"  # the run msa, by its readable name
    msa = [t for t in fig.data if t.name == label]
    assert len(msa) == 2 and list(msa[1].y) == pytest.approx(bins) and msa[1].x[-1] == pytest.approx(1024 - 32)
    assert [t.showlegend for t in msa] == [True, False]
    # a run with nothing scored at the first length still gets its legend entry, on its first trace
    for e in summary["eval"]:
        if e["seq_len"] == 512:
            e["loss_by_position"] = [None] * 16
    (text / "msa/summary.json").write_text(json.dumps(summary))
    msa = [t for t in training.loss_by_position_figure(text).data if t.name == label]
    assert len(msa) == 1 and msa[0].showlegend and msa[0].yaxis == "y2"  # the 1024-token panel
    summary["eval"].append(dict(summary["eval"][-1], loss_by_position=[1.0] * 8))  # a second row at 1024
    (text / "msa/summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="different numbers of bins"):
        training.loss_by_position_figure(text)


def test_bf16_mixed_keeps_float32_weights_and_trains(tmp_path):
    raw = tiny(train__steps=3, train__dtype="bf16-mixed", train__eval_every=0, train__index_warmup=1,
               eval__coverage=True)
    out = run_training(raw, tmp_path, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) and math.isfinite(r["index_kl"]) for r in train)
    assert train[1]["index_kl"] > 0  # the sparse phase's KL over the selected tokens
    assert any(r["kind"] == "coverage" for r in rows)


def test_gradient_clipping_keeps_the_index_branch_and_the_backbone_apart():
    """A larger index-KL gradient must not shrink the backbone's clipped update (nor the
    reverse): the two groups are clipped on their own norms."""
    from msa_lab.nn import TinyLM
    from msa_lab.train import clip_gradients

    model = TinyLM(vocab_size=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, method="msa",
                   block_size=16, top_k=2)
    index = {name for name, _ in model.named_parameters() if "indexer." in name}
    assert index

    def clipped(index_scale):
        for name, p in model.named_parameters():
            p.grad = torch.full_like(p, index_scale if name in index else 1.0)
        clip_gradients(model, 1.0)
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    small, large = clipped(0.01), clipped(100.0)
    for name in small:
        if name not in index:
            assert torch.equal(small[name], large[name]), name
    norm = torch.stack([large[name].norm() for name in index]).norm()
    assert norm == pytest.approx(1.0, rel=1e-5)


class RunsCode:
    """Unpickling this makes a folder: a stand-in for a crafted checkpoint's payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _checkpointed_run(folder, **changes):
    """A tiny run stopped after its first step (its checkpoint), and its config."""
    raw = tiny(**dict(dict(train__steps=2, train__index_warmup=0, train__eval_every=0, eval__coverage=False,
                           eval__seq_lens=[64]), **changes))
    run_training(raw, folder, progress=False, max_steps=1)
    return raw


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    raw = _checkpointed_run(tmp_path / "run")
    ckpt, marker = tmp_path / "run/checkpoint.pt", tmp_path / "code_ran"
    state = load_checkpoint(ckpt)
    state["optimizer"]["extra"] = RunsCode(marker)
    save_checkpoint(ckpt, state)  # a valid header and checksum: only weights_only stands in the way
    with pytest.raises(CheckpointError, match=r"checkpoint.pt holds objects other than tensors and plain containers"):
        run_training(raw, tmp_path / "run", progress=False)
    torch.save({"model": RunsCode(marker)}, ckpt)  # a plain torch.save file, without the header
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is not a msa_lab training checkpoint"):
        run_training(raw, tmp_path / "run", progress=False)
    assert not marker.exists()


def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path):
    raw = _checkpointed_run(tmp_path / "run")
    ckpt = tmp_path / "run/checkpoint.pt"
    good = ckpt.read_bytes()
    flipped = bytearray(good)
    for at in (len(good) // 2, len(good) // 2 + 101):
        flipped[at] ^= 0xFF
    state = load_checkpoint(ckpt)
    cases = [(bytes(flipped), "is corrupted: its payload does not match the sha256"),
             (good[:-100], "is truncated (a cut write): "),
             (good.replace(b'"version": 1', b'"version": 7', 1), "has checkpoint format version 7"),
             (good[:10], "is not a msa_lab training checkpoint")]
    for data, message in cases:
        ckpt.write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(str(ckpt)) + " " + re.escape(message)):
            run_training(raw, tmp_path / "run", progress=False)
    save_checkpoint(ckpt, dict(state, step=-1))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: checkpoint field 'step' must be an int >= 0, got -1"):
        load_checkpoint(ckpt)
    save_checkpoint(ckpt, dict(state, generator=[1, 2]))
    with pytest.raises(CheckpointError, match=r"field 'generator' must be Tensor, got \[1, 2\]"):
        load_checkpoint(ckpt)
    ckpt.write_bytes(good)  # the real one still resumes
    assert json.loads((run_training(raw, tmp_path / "run", progress=False) / "summary.json").read_text())["steps"] == 2


def test_resume_writes_no_row_twice(tmp_path):
    run = tmp_path / "run"
    run_training(tiny(), run, progress=False, max_steps=4)  # checkpoint at step 4
    with (run / "metrics.jsonl").open("a") as f:  # a killed run's rows after its checkpoint, and a cut one
        f.write(json.dumps(dict(kind="train", step=5, loss=1.0)) + "\n")
        f.write(json.dumps(dict(kind="train", step=6, loss=1.0)) + "\n" + '{"kind": "tr')
    run_training(tiny(), run, progress=False)
    (run / "summary.json").unlink()  # killed after the final evaluation's rows, before the summary
    run_training(tiny(), run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] != 1.0 for r in rows if r["kind"] == "train")
    evals = [(r["step"], r["seq_len"]) for r in rows if r["kind"] == "eval"]
    assert sorted(evals) == [(3, 64), (3, 96), (6, 64), (6, 96)]
    assert len([r for r in rows if r["kind"] == "coverage"]) == 3  # one layer of MSA, three selectors


def test_resume_repairs_a_cut_last_line(tmp_path):
    raw = _checkpointed_run(tmp_path / "run")  # its checkpoint counts one row
    (tmp_path / "run/metrics.jsonl").write_text('{"kind": "tr')  # that row lost, a write cut
    run_training(raw, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2]


def test_resume_refuses_a_changed_config_and_keeps_its_config_json(tmp_path):
    run = tmp_path / "run"
    raw = _checkpointed_run(run)
    stored = (run / "config.json").read_text()
    with pytest.raises(ValueError, match=r"another config: task.seq_len \(64 -> 96\), train.lr \(0.003 -> 0.01\)\."):
        run_training(tiny(**dict(_changes(raw), train__lr=0.01, task__seq_len=96)), run, progress=False)
    for change, named in ((dict(model__d_model=64), r"model.d_model \(32 -> 64\)"),
                          (dict(model__method="moba"), r"model.method \('msa' -> 'moba'\)")):
        with pytest.raises(ValueError, match=named):
            run_training(tiny(**dict(_changes(raw), **change)), run, progress=False)
    assert (run / "config.json").read_text() == stored
    run_training(raw, run, progress=False)  # finished at step 2
    # a longer run and a new description are a resume; config.json then says what ran
    longer = tiny(**dict(_changes(raw), train__steps=3))
    longer["description"] = "three steps"
    summary = json.loads((run_training(longer, run, progress=False) / "summary.json").read_text())
    assert summary["steps"] == 3 and json.loads((run / "config.json").read_text())["train"]["steps"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3]  # the 2-step run's evaluation is gone
    with pytest.raises(ValueError, match="train.steps is 2, but the run's checkpoint is at step 3"):
        run_training(raw, run, progress=False)
    (run / "checkpoint.pt").unlink()  # without a checkpoint the folder still holds another run
    with pytest.raises(ValueError, match=r"another config: train.lr"):
        run_training(tiny(**dict(_changes(longer), train__lr=0.01)), run, progress=False)


def _changes(raw):
    """``raw`` as the keyword changes of ``tiny``."""
    return {f"{section}__{field}": value for section in ("model", "task", "train", "eval")
            for field, value in raw[section].items()}


def test_a_run_folder_has_one_writer_and_must_be_writable(tmp_path, monkeypatch):
    raw = tiny(train__steps=1, train__index_warmup=0, train__eval_every=0, eval__coverage=False)
    with FolderLock(tmp_path / "run", "a trainer"):
        with pytest.raises(FolderLocked, match=r"run is in use by another process \(PID \d+\)"):
            run_training(raw, tmp_path / "run", progress=False)
    assert not (tmp_path / "run/metrics.jsonl").exists()

    def refuse(self, data):  # the tests run as root, which ignores permission bits
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.write_bytes", refuse)
    with pytest.raises(PermissionError, match="cannot write to .*readonly"):
        run_training(raw, tmp_path / "readonly", progress=False)
    assert list((tmp_path / "readonly").iterdir()) == []


ABLATE_SCRIPT = """
import json, sys
from msa_lab.train import run_ablation
if __name__ == "__main__":
    run_ablation(json.loads(sys.argv[1]), sys.argv[2], progress=False, jobs=2)
"""


def _alive(pid: int) -> bool:
    """Whether any thread of ``pid`` runs. A killed process whose leader is a zombie (this
    container's init reaps nothing) still holds its files until its last thread has ended."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return any(state != "Z" for state in states)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_side_by_side_trainers_die_with_their_parent(tmp_path):
    import time

    raw = tiny(train__steps=100_000, train__index_warmup=0, train__eval_every=0, train__log_every=1000,
               train__checkpoint_every=100_000, eval__coverage=False)
    raw["runs"] = [{"name": "a"}, {"name": "b", "model.method": "full"}]
    (tmp_path / "ablate.py").write_text(ABLATE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "ablate.py"), json.dumps(raw), str(tmp_path / "out")],
                              env=env)
    locks = [tmp_path / "out" / run / ".msa_lab.lock" for run in ("a", "b")]
    trainers = []
    try:
        deadline = time.monotonic() + 120
        while not all(lock.is_file() and lock.read_text().strip() for lock in locks):
            assert parent.poll() is None and time.monotonic() < deadline, "the trainers did not start"
            time.sleep(0.2)
        trainers = [int(lock.read_text()) for lock in locks]  # each run folder's writer
        assert all(map(_alive, trainers)) and os.getpid() not in trainers
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 15
        while any(map(_alive, trainers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, trainers)), "a trainer outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in filter(_alive, trainers):  # when the fix is broken: end the orphans this test made
            os.kill(pid, 9)
    for run in ("a", "b"):  # and their folders are free for the resume
        with FolderLock(tmp_path / "out" / run):
            pass


def test_index_coverage_of_a_diverged_model_is_recorded_empty_not_raised():
    from msa_lab.train import build_model, index_coverage, parse_run_config

    cfg = parse_run_config(tiny())
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    rows = index_coverage(model, cfg)
    assert rows and all(r["recall_mean"] is None and "diverged" in r["note"] for r in rows)


def test_bimodal_seeds_are_shown_seed_by_seed_not_as_a_mean_sd_leaving_the_range():
    from msa_lab.runs import seed_range, seeds_cell

    assert seeds_cell([0.932, 0.998, 0.008]) == "0.932 / 0.998 / 0.008"  # 0.646 ± 0.554 would reach 1.2
    assert seeds_cell([0.97, 0.98, 0.99]) == "0.980 ± 0.010"
    assert seeds_cell([1.3, 1.5, 1.4], high=float("inf")) == "1.400 ± 0.100"
    assert seed_range([0.932, 0.998, 0.008]) == (pytest.approx(0.646), 0.008, 0.998)


def test_accuracy_figure_bars_span_the_seeds_and_stay_inside_0_1():
    from msa_lab.viz.training import accuracy_figure

    fig = accuracy_figure(Path(__file__).parent.parent / "experiments/results/train/ablation_gpu_h200")
    for trace in fig.data:
        if trace.error_y.visible:
            for y, up, down in zip(trace.y, trace.error_y.array, trace.error_y.arrayminus):
                assert 0.0 <= y - down and y + up <= 1.0


def test_model_options_are_checked_stored_without_defaults_and_resume_runs_stored_before_them(tmp_path):
    assert parse_run_config(tiny(model__options={"pooling": "lse", "sink_blocks": 1}))["model"]["options"] == \
        {"pooling": "lse", "sink_blocks": 1}
    assert parse_run_config(tiny(model__options={"pooling": "max"}))["model"]["options"] == {}  # the default
    for options, named in (({"poolng": "lse"}, r"model.options: unknown field 'poolng'.*did you mean 'pooling'"),
                           ({"pooling": "softmax"}, r"model.options: .*pooling"),
                           ({"sink_blocks": 1.5}, r"model.options.sink_blocks must be a int like its default 0"),
                           ({"sink_blocks": -1}, r"model.options: .*sink_blocks")):
        with pytest.raises(ValueError, match=named):
            parse_run_config(tiny(model__options=options))
    with pytest.raises(ValueError, match="full takes none"):
        parse_run_config(tiny(model__method="full", model__options={"pooling": "lse"}))
    # A run checkpointed by a version without model.options resumes under a config without them
    # (and with a default spelled out), and not under another pooling.
    run = tmp_path / "run"
    raw = _checkpointed_run(run)
    for path in (run / "config.json",):
        stored = json.loads(path.read_text())
        del stored["model"]["options"]
        path.write_text(json.dumps(stored))
    state = load_checkpoint(run / "checkpoint.pt")
    del state["config"]["model"]["options"]
    save_checkpoint(run / "checkpoint.pt", state)
    with pytest.raises(ValueError, match=r"model.options.pooling \(None -> 'lse'\)"):
        run_training(tiny(**dict(_changes(raw), model__options={"pooling": "lse"})), run, progress=False)
    summary = run_training(tiny(**dict(_changes(raw), model__options={"pooling": "max"})), run, progress=False)
    assert json.loads((summary / "summary.json").read_text())["steps"] == 2


def test_a_model_with_options_selects_with_them():
    from msa_lab.train import build_model

    model = build_model(parse_run_config(tiny(model__options={"pooling": "mean", "sink_blocks": 1})))
    sparse = [layer for layer in model.attention_layers if layer.method == "msa"]
    assert sparse and all(layer.options == {"pooling": "mean", "sink_blocks": 1} for layer in sparse)
    assert all(layer.options == {} for layer in model.attention_layers if layer.method == "full")
    model.set_sparse(True)
    model(torch.randint(0, 64, (1, 64)))
    assert bool((sparse[0].last_selection.indices[..., 1][:, :, 16:] == 0).all())  # the sink block, slot 1
