"""Train a ``TinyLM`` on a generated task, evaluate it, and run ablations of such runs.

A run is one YAML config (``experiments/configs/train_*.yaml``)::

    name: mqar_cpu
    seed: 0
    device: cpu
    model: {vocab_size: 512, d_model: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2,
            method: msa, full_layers: [], block_size: 32, top_k: 4, backend: auto}
    task: {name: mqar, seq_len: 512, options: {num_pairs: 16}}
    train: {steps: 300, batch: 16, lr: 0.003, index_warmup: 50}
    eval: {seq_lens: [512, 1024], batches: 4}
    runs: [{name: full, model.method: full}, {name: msa}]   # msa-lab ablate only

``msa-lab train CONFIG`` writes into ``results/train/<name>/``: ``metrics.jsonl`` (a row per
logged step and per evaluation, written as they come), ``checkpoint.pt`` (model, optimiser,
step, data generator; a re-run resumes from it) and ``summary.json``. MSA runs start with
``index_warmup`` steps of full attention in which only the index branch's KL loss over every
visible token trains the indexer on top of the usual loss, then route sparsely.
``msa-lab ablate CONFIG`` runs every entry of ``runs`` (dotted keys override the config)
into ``<out>/<run name>/`` and writes ``summary.md``, one row per run. With ``seeds: [0, 1, 2]``
(or ``--seeds``) every run trains once per seed into ``<out>/<run name>_seed<k>/`` and the
table gives the mean and the spread over the seeds.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .bench.config import _as_list, _choice, _did_you_mean, _int, _unknown
from .bench.results import gpu_environment
from .nn import TinyLM
from .runs import SEED_SUFFIX, find_runs, finished, group_seeds, mean_sd
from .tasks import TASKS, make_batch

DEFAULTS = {
    "model": dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=None,
                  method="full", full_layers=[], block_size=32, top_k=4, index_dim=None, backend="auto",
                  deterministic=False),
    "task": dict(name="mqar", seq_len=512, options={}),
    "train": dict(steps=200, batch=16, lr=3e-3, weight_decay=0.0, lr_warmup=20, index_warmup=0,
                  index_loss_weight=1.0, grad_clip=1.0, log_every=10, eval_every=0, checkpoint_every=100,
                  dtype="fp32"),
    "eval": dict(seq_lens=None, depths=None, batches=4, batch=None, seed=1234, coverage=True),
}
TOP = ("name", "description", "seed", "seeds", "device", "model", "task", "train", "eval", "runs")
#: train.dtype -> (parameter dtype, autocast dtype or None). "bf16-mixed" keeps float32
#: weights and optimiser state and runs the forward under bf16 autocast: the fast kernels
#: (flash SDPA, the Triton KV-outer path) at bf16 without bf16 weight updates.
DTYPES = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "bf16-mixed": (torch.float32, torch.bfloat16)}


def parse_run_config(raw: dict, *, check_device: bool = True) -> dict:
    """The config with defaults filled in, every field checked (a typo names the closest field);
    ``check_device=False`` accepts ``device: cuda`` on a machine without a GPU."""
    if not isinstance(raw, dict):
        raise ValueError("a training config must be a mapping")
    _unknown(raw, TOP, "config")
    if "name" not in raw or not isinstance(raw["name"], str) or not raw["name"].replace("_", "").replace("-", "").isalnum():
        raise ValueError("name must be letters, digits, '-' or '_' (it names the output folder)")
    cfg = {"name": raw["name"], "description": raw.get("description", ""), "seed": raw.get("seed", 0),
           "device": _choice(raw.get("device", "cpu"), "device", ("cpu", "cuda"))}
    _int(cfg["seed"], "seed", 0)
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {}) or {}
        if not isinstance(given, dict):
            raise ValueError(f"{section} must be a mapping")
        _unknown(given, tuple(defaults), section)
        cfg[section] = dict(copy.deepcopy(defaults), **given)
    m, t, tr = cfg["model"], cfg["task"], cfg["train"]
    _choice(m["method"], "model.method", ("full", "moba", "msa"))
    _choice(m["backend"], "model.backend", ("auto", "reference", "triton"))
    _choice(t["name"], "task.name", TASKS)
    _choice(tr["dtype"], "train.dtype", tuple(DTYPES))
    for key in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "block_size", "top_k"):
        _int(m[key], f"model.{key}")
    for key in ("steps", "batch", "log_every", "checkpoint_every"):
        _int(tr[key], f"train.{key}")
    for key in ("lr_warmup", "index_warmup", "eval_every"):
        _int(tr[key], f"train.{key}", 0)
    _int(t["seq_len"], "task.seq_len", 2)
    if m["num_heads"] % m["num_kv_heads"]:
        raise ValueError(f"model.num_heads ({m['num_heads']}) must be a multiple of model.num_kv_heads "
                         f"({m['num_kv_heads']})")
    if tr["index_warmup"] and m["method"] != "msa":
        raise ValueError("train.index_warmup is for model.method: msa (the warm-up trains its index branch)")
    if check_device and cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda, but no CUDA GPU is visible here; use device: cpu")
    ev = cfg["eval"]
    ev["seq_lens"] = ev["seq_lens"] or [t["seq_len"]]
    ev["batch"] = ev["batch"] or tr["batch"]
    if ev["depths"] is not None and t["name"] != "passkey":
        raise ValueError("eval.depths is for task.name: passkey (the needle's depth)")
    if t["name"] == "text" and "split" in t["options"]:
        raise ValueError("task.options.split: text trains on its 'train' split and is scored on 'val'; "
                         "leave split out")
    # A typo in the task options fails now, not after training: draw one tiny batch.
    try:
        make_batch(t["name"], 1, t["seq_len"], m["vocab_size"], torch.Generator().manual_seed(0), **t["options"])
    except TypeError as err:
        raise ValueError(f"task.options: {err}") from None
    cfg["runs"] = raw.get("runs")
    cfg["seeds"] = None if raw.get("seeds") is None else _check_seeds(raw["seeds"])
    return cfg


def _check_seeds(seeds) -> list[int]:
    seeds = [_int(seed, "seeds[]", 0) for seed in _as_list(seeds, "seeds")]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def load_run_config(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return parse_run_config(yaml.safe_load(f))


def build_model(cfg: dict) -> TinyLM:
    m = dict(cfg["model"])
    return TinyLM(m.pop("vocab_size"), full_layers=tuple(m.pop("full_layers")), **m)


def _autocast(cfg: dict):
    """The forward pass's autocast context for ``train.dtype`` (disabled unless mixed)."""
    dtype = DTYPES[cfg["train"]["dtype"]][1]
    return torch.autocast(cfg["device"], dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _lr(step: int, tr: dict) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < tr["lr_warmup"]:
        return tr["lr"] * (step + 1) / tr["lr_warmup"]
    progress = (step - tr["lr_warmup"]) / max(1, tr["steps"] - tr["lr_warmup"])
    return tr["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=float) + "\n")


@torch.no_grad()
def evaluate(model: TinyLM, cfg: dict) -> list[dict]:
    """Accuracy on fresh batches (fixed eval seed) at every ``eval.seq_lens`` (and passkey
    ``eval.depths``): ``token_accuracy`` over the scored tokens, ``exact_match`` over whole
    answers (every scored token of a sequence right), ``loss`` per scored token, and
    ``loss_by_position`` (the loss per scored token in 16 equal bins of position; None where a
    bin scores nothing). Text is scored on its held-out ``val`` split."""
    ev, t, m = cfg["eval"], cfg["task"], cfg["model"]
    device = cfg["device"]
    model.eval()
    rows = []
    depths = ev["depths"] if ev["depths"] is not None else [None]
    for n in ev["seq_lens"]:
        for depth in depths:
            gen = torch.Generator().manual_seed(ev["seed"] + n)
            options = dict(_eval_options(t), **({} if depth is None else {"depth": depth}))
            right = total = exact = seqs = 0
            loss_sum = 0.0
            bins = torch.zeros(16, dtype=torch.float64)
            counts = torch.zeros(16, dtype=torch.float64)
            for _ in range(ev["batches"]):
                x, y = make_batch(t["name"], ev["batch"], n, m["vocab_size"], gen, **options)
                x, y = x.to(device), y.to(device)
                with _autocast(cfg):
                    logits, _ = model(x)
                scored = y != -100
                hit = (logits.argmax(-1) == y) & scored
                right += int(hit.sum())
                total += int(scored.sum())
                exact += int((hit.sum(1) == scored.sum(1)).sum())
                seqs += x.shape[0]
                per_token = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
                loss_sum += float(per_token.sum())
                where = (torch.arange(n, device=device) * 16 // n).expand_as(y)[scored].cpu()
                bins.index_add_(0, where, per_token[scored].double().cpu())
                counts.index_add_(0, where, torch.ones_like(where, dtype=torch.float64))
            row = dict(kind="eval", seq_len=n, token_accuracy=right / max(1, total), exact_match=exact / seqs,
                       loss=loss_sum / max(1, total),
                       loss_by_position=[float(b / c) if c else None for b, c in zip(bins, counts)])
            if depth is not None:
                row["depth"] = depth
            rows.append(row)
    model.train()
    return rows


def _eval_options(task: dict) -> dict:
    """The task's options for scoring: text on its held-out split."""
    return dict(task["options"], **({"split": "val"} if task["name"] == "text" else {}))


@torch.no_grad()
def index_coverage(model: TinyLM, cfg: dict, rows: int = 256) -> list[dict]:
    """Per MSA layer, on the model's own attention for one eval batch: recall of the trained
    index branch's selection, of MoBA's gate on the same q/k, and of the oracle."""
    from .coverage import coverage
    from .selectors import select_moba, select_msa, select_oracle

    layers = [a for a in model.attention_layers if a.method == "msa"]
    if not layers:
        return []
    t, m = cfg["task"], cfg["model"]
    x, _ = make_batch(t["name"], 2, t["seq_len"], m["vocab_size"], torch.Generator().manual_seed(cfg["eval"]["seed"]),
                      **_eval_options(t))
    for layer in layers:
        layer.keep_inputs = True
    model.eval()
    try:
        with _autocast(cfg):
            model(x.to(cfg["device"]))
    finally:
        for layer in layers:
            layer.keep_inputs = False
        model.train()
    out = []
    for layer in layers:
        q, k, index_q, index_k = (z.float() for z in layer.last_inputs)
        layer.last_inputs = None
        bs, top_k = layer.block_size, layer.top_k
        sels = {"msa (trained index)": select_msa(index_q, index_k, block_size=bs, top_k=top_k),
                "moba": select_moba(q, k, block_size=bs, top_k=top_k),
                "oracle": select_oracle(q, k, block_size=bs, top_k=top_k, force_local=True)}
        reports = coverage(q, k, sels, rows=min(rows, q.shape[1]))
        for name, rep in reports.items():
            s = rep.summary()
            out.append(dict(kind="coverage", layer=model.attention_layers.index(layer), selector=name,
                            recall_mean=s["recall"]["mean"], recall_p5=s["recall"]["p5"],
                            recall_vs_oracle=s["relative_recall"]["mean"]))
    return out


def run_training(cfg: dict | str | Path, out_dir=None, *, progress: bool = True, max_steps: int | None = None,
                 progress_position: int = 0) -> Path:
    """Train (or resume) one run; returns its folder. ``max_steps``: stop after this step
    (the run resumes from its checkpoint later). ``progress_position``: the bar's line, for
    runs trained side by side."""
    cfg = parse_run_config(cfg) if isinstance(cfg, dict) else load_run_config(cfg)
    out = Path(out_dir or Path("results/train") / cfg["name"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("runs", "seeds")},
                                                indent=1) + "\n")
    tr, t, m = cfg["train"], cfg["task"], cfg["model"]
    device = cfg["device"]
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg).to(device=device, dtype=DTYPES[tr["dtype"]][0])
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg["seed"])
    metrics, ckpt = out / "metrics.jsonl", out / "checkpoint.pt"
    step = 0
    if not ckpt.exists():  # a fresh run: no rows of an earlier one in its files
        metrics.unlink(missing_ok=True)
        (out / "summary.json").unlink(missing_ok=True)
    else:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = state["step"]
        if step >= tr["steps"] and (out / "summary.json").is_file():
            return out  # finished and evaluated: a re-run of an ablation leaves it as it is
    stop = tr["steps"] if max_steps is None else min(tr["steps"], max_steps)
    # read before training: the checkout may change while a long run trains (python too: the
    # text task's corpus is that Python's standard library)
    environment = gpu_environment(gpu=torch.cuda.get_device_name() if device == "cuda" else "none")
    bar = tqdm(range(step, stop), desc=cfg["name"], unit="step", disable=not progress, dynamic_ncols=True,
               initial=step, total=tr["steps"], position=progress_position)
    started = time.perf_counter()
    tokens_done = 0

    def save():
        torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict(), generator=gen.get_state(), step=step),
                   ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)  # never a half-written checkpoint

    for step in bar:
        warm = m["method"] == "msa" and step < tr["index_warmup"]
        model.set_sparse(not warm)
        for group in opt.param_groups:
            group["lr"] = _lr(step, tr)
        x, y = make_batch(t["name"], tr["batch"], t["seq_len"], m["vocab_size"], gen, **t["options"])
        x, y = x.to(device), y.to(device)
        with _autocast(cfg):
            logits, index_kl = model(x)
        task_loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        loss = task_loss + tr["index_loss_weight"] * index_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tr["grad_clip"]:
            clip_gradients(model, tr["grad_clip"])
        opt.step()
        tokens_done += x.numel()
        step += 1
        if step % tr["log_every"] == 0 or step == stop:
            row = dict(kind="train", step=step, loss=task_loss.item(), index_kl=index_kl.detach().item(), lr=_lr(step - 1, tr),
                       phase="index warm-up (full attention)" if warm else "sparse" if m["method"] != "full" else "full",
                       tokens_per_s=tokens_done / (time.perf_counter() - started))
            _append(metrics, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", kl=f"{row['index_kl']:.3f}")
        if tr["eval_every"] and step % tr["eval_every"] == 0 and step < tr["steps"]:
            for row in evaluate(model, cfg):
                _append(metrics, dict(row, step=step))
        if step % tr["checkpoint_every"] == 0 or step == stop:
            save()
    if step < tr["steps"]:
        return out
    model.set_sparse(True)
    final = [dict(row, step=step) for row in evaluate(model, cfg)]
    cover = index_coverage(model, cfg) if cfg["eval"]["coverage"] else []
    for row in final + cover:
        _append(metrics, row)
    summary = dict(name=cfg["name"], seed=cfg["seed"], method=m["method"], block_size=m["block_size"], top_k=m["top_k"],
                   steps=step, parameters=sum(p.numel() for p in model.parameters()),
                   final_loss=_last_train_loss(metrics), eval=final, coverage=cover, device=device, **environment)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return out


def clip_gradients(model: torch.nn.Module, max_norm: float) -> None:
    """Clip the gradient norms of MSA's index projections and of the rest of the model apart.
    The index branch learns from its KL loss alone and the backbone from the task loss alone;
    one shared norm would let either loss scale the other's update whenever clipping fires."""
    index, backbone = [], []
    for name, p in model.named_parameters():
        (index if "indexer." in name else backbone).append(p)
    for params in (index, backbone):
        if params:
            torch.nn.utils.clip_grad_norm_(params, max_norm)


def _last_train_loss(metrics: Path) -> float | None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    return losses[-1] if losses else None


def _override(cfg: dict, run: dict) -> dict:
    """The config with a run's dotted overrides (``model.method: msa``) applied."""
    raw = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("runs", "seeds")}
    for key, value in run.items():
        if key == "name":
            continue
        section, _, field = key.partition(".")
        if not field:
            raw[section] = value
        else:
            if section not in DEFAULTS:
                raise ValueError(f"runs: {key!r} is not a dotted field of model, task, train or eval")
            raw[section] = dict(raw[section], **{field: value})
    raw["name"] = f"{cfg['name']}-{run['name']}"
    return raw


def run_ablation(cfg: dict | str | Path, out_dir=None, *, progress: bool = True, jobs: int = 1,
                 only: list[str] | None = None, seeds: list[int] | None = None) -> Path:
    """Every run of ``runs`` (all checked before any starts), each resumable; then ``summary.md``.
    ``only``: just these run names. ``seeds`` (default: the config's ``seeds``): train every
    run once per seed, into ``<run>_seed<k>/``. ``jobs``: how many runs train at once, each in its own
    process; a small model leaves most of a GPU idle, so a few runs share one at little cost
    each (the tokens/s in their metrics then describe the shared GPU)."""
    cfg = parse_run_config(cfg) if isinstance(cfg, dict) else load_run_config(cfg)
    runs = cfg.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) and "name" in r for r in runs):
        raise ValueError("runs must be a non-empty list of {name: ..., <section>.<field>: value} entries")
    if len({r["name"] for r in runs}) != len(runs):
        raise ValueError("runs: two runs share a name")
    seeded = [r["name"] for r in runs if SEED_SUFFIX.search(str(r["name"]))]
    if seeded:
        raise ValueError(f"runs: a name must not end in _seed<k> (the folders of seeds do): {', '.join(seeded)}")
    _int(jobs, "jobs")
    if only is not None:
        wanted = _as_list(only, "only (--runs)")
        names = [r["name"] for r in runs]
        for name in wanted:
            if name not in names:
                raise ValueError(f"only (--runs): no run named {name!r}{_did_you_mean(name, names)} "
                                 f"(the runs: {', '.join(names)})")
        runs = [r for r in runs if r["name"] in wanted]
    seeds = cfg["seeds"] if seeds is None else _check_seeds(seeds)
    configs = []
    for r in runs:
        for seed in seeds or [None]:
            run = r if seed is None else dict(r, seed=seed)
            folder = r["name"] if seed is None else f"{r['name']}_seed{seed}"
            configs.append((folder, parse_run_config(_override(cfg, run))))
    out = Path(out_dir or Path("results/ablate") / cfg["name"])
    if jobs == 1:
        for name, run_cfg in configs:
            run_training(run_cfg, out / name, progress=progress)
    else:
        _train_side_by_side(configs, out, jobs, progress)
    table = summary_table([out / name for name, _ in configs])
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return out


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_side_by_side(configs: list[tuple[str, dict]], out: Path, jobs: int, progress: bool) -> None:
    """``run_training`` of each config in a pool of ``jobs`` processes. The first run that
    fails cancels the runs not yet started and is raised, named, once the runs already
    training have finished (a re-run resumes the cancelled ones). Spawned processes re-import
    the caller's main module: a script needs ``if __name__ == "__main__":``."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn: a forked child would inherit an initialised CUDA context, which CUDA forbids. The
    # CPU threads are shared out, or every child would start one per core.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_training, run_cfg, out / name, progress=progress, progress_position=i % jobs): name
                   for i, (name, run_cfg) in enumerate(configs)}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            pool.shutdown(wait=True, cancel_futures=True)
            err = failed[0].exception()
            raise RuntimeError(f"run {futures[failed[0]]!r} failed ({type(err).__name__}: {err}); the other runs "
                               f"kept their checkpoints: re-run to resume") from err


def summary_table(out_dir) -> str:
    """A Markdown table of the finished runs in ``out_dir`` (an ablation's folder, or a list of
    run folders): method, block, top_k, final training loss, and token accuracy on the answers
    at each evaluated length (and depth). The seeds of a run (``<run>_seed<k>`` folders) make
    one row: the mean over the seeds ± their standard deviation, and the number of seeds."""
    groups = finished(group_seeds(find_runs(out_dir)))
    if not groups:
        raise ValueError(f"no finished runs in {out_dir}")
    cols = []
    for runs in groups.values():
        for r in runs:
            for e in r["summary"]["eval"]:
                if (e["seq_len"], e.get("depth")) not in cols:
                    cols.append((e["seq_len"], e.get("depth")))
    seeded = any(len(runs) > 1 for runs in groups.values())

    def cell(values: list[float]) -> str:
        if not values:
            return ""
        mean, sd = mean_sd(values)
        return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {sd:.3f}"

    head = ["run", "method", "block", "top_k"] + (["seeds"] if seeded else []) + ["final loss"]
    head += [f"acc N={n}" + ("" if d is None else f" depth={d}") for n, d in cols]  # token accuracy
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in groups.items():
        first = runs[0]["summary"]
        cells = [name, first["method"], str(first["block_size"]), str(first["top_k"])]
        cells += [str(len(runs))] if seeded else []
        cells.append(cell([r["summary"]["final_loss"] for r in runs]))
        for c in cols:
            cells.append(cell([e["token_accuracy"] for r in runs for e in r["summary"]["eval"]
                               if (e["seq_len"], e.get("depth")) == c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
