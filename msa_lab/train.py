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

``msa-lab train CONFIG`` writes into ``results/train/<name>/``: ``config.json``,
``metrics.jsonl`` (a row per logged step and per evaluation, written as they come),
``checkpoint.pt`` (model, optimiser, step, data generator, config and the number of metrics
rows, with a format version and a sha256; ``load_checkpoint`` reads it, weights only; a
re-run resumes from it, refusing a changed config) and ``summary.json``. The folder is locked
while a run trains. MSA runs start with
``index_warmup`` steps of full attention in which only the index branch's KL loss over every
visible token trains the indexer on top of the usual loss, then route sparsely.
``msa-lab ablate CONFIG`` runs every entry of ``runs`` (dotted keys override the config)
into ``<out>/<run name>/`` and writes ``summary.md``, one row per run. With ``seeds: [0, 1, 2]``
(or ``--seeds``) every run trains once per seed into ``<out>/<run name>_seed<k>/`` and the
table gives the mean and the spread over the seeds.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config_checks import (check_known_fields, did_you_mean, field_bool, field_choice, field_int, field_list,
                            field_number)
from .environment import gpu_environment
from .files import FolderLock, append_json_lines, repair_last_line, write_bytes_atomic, write_text_atomic
from .nn import TinyLM
from .nn.attention import METHODS as ATTENTION_METHODS
from .select.registry import SELECTORS, selectors
from .runs import SEED_SUFFIX, config_differences, find_runs, finished, group_seeds, seeds_cell
from .tasks import TASKS, make_batch

DEFAULTS = {
    "model": dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=None,
                  method="full", full_layers=[], block_size=32, top_k=4, index_dim=None, backend="auto",
                  deterministic=False, options={}),
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
    check_known_fields(raw, TOP, "config")
    if "name" not in raw or not isinstance(raw["name"], str) or not raw["name"].replace("_", "").replace("-", "").isalnum():
        raise ValueError("name must be letters, digits, '-' or '_' (it names the output folder)")
    cfg = {"name": raw["name"], "description": raw.get("description", ""), "seed": raw.get("seed", 0),
           "device": field_choice(raw.get("device", "cpu"), "device", ("cpu", "cuda"))}
    field_int(cfg["seed"], "seed", 0)
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {}) or {}
        if not isinstance(given, dict):
            raise ValueError(f"{section} must be a mapping")
        check_known_fields(given, tuple(defaults), section)
        cfg[section] = dict(copy.deepcopy(defaults), **given)
    if not isinstance(cfg["description"], str):
        raise ValueError(f"description must be a string, got {cfg['description']!r}")
    m, t, tr, ev = cfg["model"], cfg["task"], cfg["train"], cfg["eval"]
    field_choice(m["method"], "model.method", ATTENTION_METHODS)
    field_choice(m["backend"], "model.backend", ("auto", "reference", "triton"))
    field_choice(t["name"], "task.name", TASKS)
    field_choice(tr["dtype"], "train.dtype", tuple(DTYPES))
    for key in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "block_size", "top_k"):
        field_int(m[key], f"model.{key}")
    for key in ("head_dim", "index_dim"):
        if m[key] is not None:
            field_int(m[key], f"model.{key} (or null)")
    field_bool(m["deterministic"], "model.deterministic")
    if m["method"] == "full" and m["options"]:
        raise ValueError(f"model.options are the ablation parameters of a sparse model.method; full takes none, "
                         f"got {m['options']!r}")
    # Stored without the defaults, so a config that spells one out resumes a run that did not.
    m["options"] = {} if m["method"] == "full" else dict(SELECTORS[m["method"]].check_options(
        m["options"], "model.options", block_size=m["block_size"], top_k=m["top_k"]))
    if not isinstance(m["full_layers"], list):
        raise ValueError(f"model.full_layers must be a list of layer indices, got {m['full_layers']!r}")
    for layer in m["full_layers"]:
        field_int(layer, "model.full_layers[]", 0)
        if layer >= m["num_layers"]:
            raise ValueError(f"model.full_layers[] must be layer indices in [0, {m['num_layers'] - 1}] "
                             f"(model.num_layers is {m['num_layers']}), got {layer}")
    for key in ("steps", "batch", "log_every", "checkpoint_every"):
        field_int(tr[key], f"train.{key}")
    for key in ("lr_warmup", "index_warmup", "eval_every"):
        field_int(tr[key], f"train.{key}", 0)
    # NaN and inf pass every comparison a loop makes and poison the weights in one step.
    field_number(tr["lr"], "train.lr", 0, above=True)
    field_number(tr["weight_decay"], "train.weight_decay", 0)
    field_number(tr["index_loss_weight"], "train.index_loss_weight", 0)
    if tr["grad_clip"] is not None:  # null or 0: no clipping; a negative norm would ascend
        field_number(tr["grad_clip"], "train.grad_clip (or null/0 for no clipping)", 0)
    field_int(t["seq_len"], "task.seq_len", 2)
    if not isinstance(t["options"], dict):
        raise ValueError(f"task.options must be a mapping, got {t['options']!r}")
    if m["num_heads"] % m["num_kv_heads"]:
        raise ValueError(f"model.num_heads ({m['num_heads']}) must be a multiple of model.num_kv_heads "
                         f"({m['num_kv_heads']})")
    if tr["index_warmup"] and not _has_index_branch(m["method"]):
        learned = " or ".join(s.name for s in selectors() if s.has_index_branch)
        raise ValueError(f"train.index_warmup is for model.method: {learned} (the warm-up trains its index branch)")
    if check_device and cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda, but no CUDA GPU is visible here; use device: cpu")
    if check_device and m["method"] != "full":  # full attention never runs the Triton kernels
        _check_backend(m["backend"], cfg["device"])
    _check_model_shape(m)
    ev["seq_lens"] = t["seq_len"] if ev["seq_lens"] is None else ev["seq_lens"]
    ev["seq_lens"] = [field_int(n, "eval.seq_lens[]", 2) for n in field_list(ev["seq_lens"], "eval.seq_lens")]
    ev["batch"] = tr["batch"] if ev["batch"] is None else field_int(ev["batch"], "eval.batch (or null)")
    field_int(ev["batches"], "eval.batches")
    field_int(ev["seed"], "eval.seed", 0)
    field_bool(ev["coverage"], "eval.coverage")
    if ev["depths"] is not None and t["name"] != "passkey":
        raise ValueError("eval.depths is for task.name: passkey (the needle's depth)")
    if ev["depths"] is not None:  # each is checked against the task by the batches below
        ev["depths"] = [field_number(depth, "eval.depths[]", 0)
                        for depth in field_list(ev["depths"], "eval.depths")]
    if t["name"] == "text" and "split" in t["options"]:
        raise ValueError("task.options.split: text trains on its 'train' split and is scored on 'val'; "
                         "leave split out")
    # A typo in the task options, or an evaluation the task cannot generate, fails now, not
    # after training: draw one tiny batch of each.
    _try_batch(cfg, t["seq_len"], t["options"], "task.options")
    for n in ev["seq_lens"]:
        for depth in ev["depths"] or [None]:
            options = dict(_eval_options(t), **({} if depth is None else {"depth": depth}))
            _try_batch(cfg, n, options, f"eval.seq_lens ({n})" if depth is None else f"eval.depths ({depth}) at {n} tokens")
    cfg["runs"] = raw.get("runs")
    cfg["seeds"] = None if raw.get("seeds") is None else _check_seeds(raw["seeds"])
    return cfg


def _check_model_shape(m: dict) -> None:
    """The head dims the layers will have: RoPE turns pairs of channels, so an odd one would
    fail only in the first forward pass."""
    head_dim = m["head_dim"] or m["d_model"] // m["num_heads"]
    if head_dim < 2 or head_dim % 2:
        where = ("model.head_dim" if m["head_dim"] else
                 f"the head dim (model.head_dim: null gives d_model // num_heads = {m['d_model']} // {m['num_heads']})")
        raise ValueError(f"{where} must be an even int >= 2 (RoPE turns pairs of channels), got {head_dim}")
    if _has_index_branch(m["method"]) and m["index_dim"] is not None and (m["index_dim"] < 2 or m["index_dim"] % 2):
        raise ValueError(f"model.index_dim must be an even int >= 2 (RoPE turns pairs of channels) or null, "
                         f"got {m['index_dim']}")


def _check_backend(backend: str, device: str) -> None:
    """``model.backend: triton`` needs a GPU, or the interpreter on the CPU; without this
    check an MSA run fails only when its index warm-up ends."""
    if backend != "triton" or device == "cuda":
        return
    from . import triton_runtime as runtime

    try:
        interpreted = runtime.interpreted()
    except ImportError:
        interpreted = False
    if not interpreted:
        raise ValueError("model.backend: triton needs device: cuda (or TRITON_INTERPRET=1 set before msa_lab's "
                         "kernels are imported, to run them slowly on the CPU); use backend: reference or auto")


def _try_batch(cfg: dict, seq_len: int, options: dict, where: str) -> None:
    try:
        make_batch(cfg["task"]["name"], 1, seq_len, cfg["model"]["vocab_size"], torch.Generator().manual_seed(0),
                   **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _check_seeds(seeds) -> list[int]:
    seeds = [field_int(seed, "seeds[]", 0) for seed in field_list(seeds, "seeds")]
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


def _has_index_branch(method: str) -> bool:
    """A selector whose index branch is trained with the model (MSA's)."""
    return method in SELECTORS and SELECTORS[method].has_index_branch


@torch.no_grad()
def index_coverage(model: TinyLM, cfg: dict, rows: int = 256) -> list[dict]:
    """Per MSA layer, on the model's own attention for one eval batch: recall of the trained
    index branch's selection, of MoBA's gate on the same q/k, and of the oracle."""
    from .coverage import coverage
    from .select import select_moba, select_msa, select_oracle

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
        names = ("msa (trained index)", "moba", "oracle")
        if not all(torch.isfinite(z).all() for z in (q, k, index_q, index_k)):
            # A diverged run: coverage refuses non-finite inputs, and the run's summary must still
            # be written, so its coverage rows say why they are empty.
            out += [dict(kind="coverage", layer=model.attention_layers.index(layer), selector=name, recall_mean=None,
                         recall_p5=None, recall_vs_oracle=None, note="non-finite q/k (the run diverged)")
                    for name in names]
            continue
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


#: A checkpoint file: this line, a JSON header line (format version, payload length and
#: sha256), then the payload: ``torch.save`` of plain containers and tensors, read back with
#: ``weights_only=True`` so that a crafted file cannot run code.
CHECKPOINT_MAGIC = b"msa_lab training checkpoint\n"
CHECKPOINT_VERSION = 1
#: Config fields a resume may change (every other difference is refused): the description,
#: and the number of steps (train longer or stop sooner; the learning-rate schedule then
#: follows the new total from the resumed step on).
RESUMABLE_CHANGES = ("description", "train.steps")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read: corrupted, truncated, of another format,
    holding more than tensors and plain containers, or with values out of range."""


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tensors and plain containers) with a format version and a sha256 of
    the payload, through a temporary file and a rename: a reader sees the old checkpoint or
    the new one, never half of one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = json.dumps(dict(version=CHECKPOINT_VERSION, bytes=len(payload),
                             sha256=hashlib.sha256(payload).hexdigest())).encode() + b"\n"
    write_bytes_atomic(path, CHECKPOINT_MAGIC + header + payload)


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state ``save_checkpoint`` wrote, after checking its format version, length and
    checksum, loaded with ``weights_only=True``, and its fields checked; ``CheckpointError``
    naming the file otherwise."""
    path = Path(path)
    data = path.read_bytes()
    advice = "; move it away (or remove the run folder) to train afresh"
    if not data.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError(f"{path} is not a msa_lab training checkpoint (no format header: written by an "
                              f"older msa_lab, or another file){advice}")
    header_end = data.find(b"\n", len(CHECKPOINT_MAGIC))
    try:
        header = json.loads(data[len(CHECKPOINT_MAGIC):header_end])
        version, size, digest = header["version"], header["bytes"], header["sha256"]
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"{path} has a damaged header{advice}") from None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this msa_lab reads version "
                              f"{CHECKPOINT_VERSION}{advice}")
    payload = data[header_end + 1:] if header_end >= 0 else b""
    if len(payload) != size:
        cut = "truncated (a cut write)" if len(payload) < size else "longer than its header says"
        raise CheckpointError(f"{path} is {cut}: {len(payload)} of {size} payload bytes{advice}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupted: its payload does not match the sha256 stored with it{advice}")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers; it is not loaded "
                              f"(unpickling them could run code): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}){advice}") from None
    _check_checkpoint_state(path, state)
    return state


def _check_checkpoint_state(path: Path, state) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the checkpoint must hold a mapping, got {type(state).__name__}")
    expected = {"model": dict, "optimizer": dict, "generator": torch.Tensor, "step": int, "metrics_rows": int,
                "config": dict}
    for key, kind in expected.items():
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{path}: checkpoint field {key!r} must be {kind.__name__}, got {value!r:.60}")
        if kind is int and value < 0:
            raise CheckpointError(f"{path}: checkpoint field {key!r} must be an int >= 0, got {value}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: checkpoint field 'model' must map names to tensors")
    if state["generator"].dtype != torch.uint8:
        raise CheckpointError(f"{path}: checkpoint field 'generator' must be a uint8 tensor (a generator's state), "
                              f"got {state['generator'].dtype}")


def _stored_config(cfg: dict) -> dict:
    """The config as ``config.json`` and the checkpoint hold it (JSON types: lists, not tuples)."""
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in ("runs", "seeds")}))


def _check_resumable(out: Path, stored: dict, config: dict, step: int | None) -> None:
    """Refuse to continue (or overwrite) the run in ``out``, trained with ``stored``, under a
    ``config`` that differs in anything but ``RESUMABLE_CHANGES``; and a ``train.steps``
    that ends before the checkpoint's ``step``."""
    changed = [(f, a, b) for f, a, b in config_differences(stored, config) if f not in RESUMABLE_CHANGES]
    if changed:
        listed = ", ".join(f"{f} ({a!r} -> {b!r})" for f, a, b in changed)
        raise ValueError(f"{out} holds a run trained with another config: {listed}. Resume it with its own config "
                         f"({out / 'config.json'}), or train into another folder (--out); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change on a resume")
    if step is not None and config["train"]["steps"] < step:
        raise ValueError(f"{out}: train.steps is {config['train']['steps']}, but the run's checkpoint is at step "
                         f"{step}; give train.steps >= {step}")


def _keep_rows(metrics: Path, rows: int) -> int:
    """Cut ``metrics`` back to its first ``rows`` rows (those written before the checkpoint
    the run resumes from; the rest would be written again) and a cut last line; returns how
    many rows it holds."""
    repair_last_line(metrics)
    if not metrics.is_file():
        return 0
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) > rows:
        write_text_atomic(metrics, "".join(lines[:rows]))
    return min(rows, len(lines))


def run_training(cfg: dict | str | Path, out_dir=None, *, progress: bool = True, max_steps: int | None = None,
                 progress_position: int = 0) -> Path:
    """Train (or resume) one run; returns its folder. ``max_steps``: stop after this step
    (the run resumes from its checkpoint later). ``progress_position``: the bar's line, for
    runs trained side by side. The folder is locked while the run trains: a second trainer
    on it fails at once (``FolderLocked``), as does a folder that cannot be written."""
    cfg = parse_run_config(cfg) if isinstance(cfg, dict) else load_run_config(cfg)
    if max_steps is not None:
        field_int(max_steps, "max_steps")
    out = Path(out_dir or Path("results/train") / cfg["name"])
    with FolderLock(out, f"the training run {cfg['name']!r}"):
        return _train(cfg, out, progress=progress, max_steps=max_steps, progress_position=progress_position)


def _train(cfg: dict, out: Path, *, progress: bool, max_steps: int | None, progress_position: int) -> Path:
    tr, t, m = cfg["train"], cfg["task"], cfg["model"]
    device = cfg["device"]
    metrics, ckpt, config_file, summary_file = (out / name for name in
                                                ("metrics.jsonl", "checkpoint.pt", "config.json", "summary.json"))
    config = _stored_config(cfg)
    state = load_checkpoint(ckpt, map_location=device) if ckpt.exists() else None
    if state is not None:
        _check_resumable(out, state["config"], config, state["step"])
    if config_file.is_file():  # also a run folder without a checkpoint: never overwrite another run's config
        try:
            stored = json.loads(config_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{config_file} is not valid JSON ({err}); move it away or remove the run folder") from None
        _check_resumable(out, stored, config, None)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg).to(device=device, dtype=DTYPES[tr["dtype"]][0])
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg["seed"])
    step = 0
    if state is None:  # a fresh run: no rows of an earlier one in its files
        metrics.unlink(missing_ok=True)
        summary_file.unlink(missing_ok=True)
        rows_written = 0
    else:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{ckpt} does not fit this config's model ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0]})") from None
        step = state["step"]
        if step >= tr["steps"] and summary_file.is_file():
            return out  # finished and evaluated: a re-run of an ablation leaves it as it is
        summary_file.unlink(missing_ok=True)  # a longer train.steps: the run is no longer finished
        rows_written = _keep_rows(metrics, state["metrics_rows"])
    write_text_atomic(config_file, json.dumps(config, indent=1) + "\n")
    stop = tr["steps"] if max_steps is None else min(tr["steps"], max_steps)
    # read before training: the checkout may change while a long run trains (python too: the
    # text task's corpus is that Python's standard library)
    environment = gpu_environment(gpu=torch.cuda.get_device_name() if device == "cuda" else "none")
    bar = tqdm(range(step, stop), desc=cfg["name"], unit="step", disable=not progress, dynamic_ncols=True,
               initial=step, total=tr["steps"], position=progress_position)
    started = time.perf_counter()
    tokens_done = 0

    def log(rows: list[dict]) -> None:
        nonlocal rows_written
        append_json_lines(metrics, rows)
        rows_written += len(rows)

    def save() -> None:
        save_checkpoint(ckpt, dict(model=model.state_dict(), optimizer=opt.state_dict(), generator=gen.get_state(),
                                   step=step, metrics_rows=rows_written, config=config))

    for step in bar:
        warm = _has_index_branch(m["method"]) and step < tr["index_warmup"]
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
            log([row])
            bar.set_postfix(loss=f"{row['loss']:.3f}", kl=f"{row['index_kl']:.3f}")
        if tr["eval_every"] and step % tr["eval_every"] == 0 and step < tr["steps"]:
            log([dict(row, step=step) for row in evaluate(model, cfg)])
        if step % tr["checkpoint_every"] == 0 or step == stop:
            save()
    if step < tr["steps"]:
        return out
    model.set_sparse(True)
    final = [dict(row, step=step) for row in evaluate(model, cfg)]
    cover = index_coverage(model, cfg) if cfg["eval"]["coverage"] else []
    log(final + cover)
    summary = dict(name=cfg["name"], seed=cfg["seed"], method=m["method"], block_size=m["block_size"], top_k=m["top_k"],
                   steps=step, parameters=sum(p.numel() for p in model.parameters()),
                   final_loss=_last_train_loss(metrics), eval=final, coverage=cover, device=device, **environment)
    write_text_atomic(summary_file, json.dumps(summary, indent=1, default=float) + "\n")
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
    field_int(jobs, "jobs")
    if only is not None:
        wanted = field_list(only, "only (--runs)")
        names = [r["name"] for r in runs]
        for name in wanted:
            if name not in names:
                raise ValueError(f"only (--runs): no run named {name!r}{did_you_mean(name, names)} "
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


def _start_child(threads: int, parent_pid: int) -> None:
    """A side-by-side trainer's start: its share of the CPU threads, and death with its parent
    (a parent killed with ``kill -9`` must not leave trainers writing its run folders)."""
    torch.set_num_threads(threads)
    _die_with_parent(parent_pid)


#: prctl's option to have the kernel send a signal when the parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` ends. On Linux the kernel sends SIGKILL (prctl
    PR_SET_PDEATHSIG); a thread also polls the parent's PID once a second, for other systems
    and because the kernel signal follows the parent *thread* that started this process."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the poll below still ends this process
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="msa_lab parent watch", daemon=True).start()


def _train_side_by_side(configs: list[tuple[str, dict]], out: Path, jobs: int, progress: bool) -> None:
    """``run_training`` of each config in a pool of ``jobs`` processes. The first run that
    fails cancels the runs not yet started and is raised, named, once the runs already
    training have finished (a re-run resumes the cancelled ones). Spawned processes re-import
    the caller's main module: a script needs ``if __name__ == "__main__":``."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn: a forked child would inherit an initialised CUDA context, which CUDA forbids. The
    # CPU threads are shared out, or every child would start one per core.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child,
                             initargs=(threads, os.getpid())) as pool:
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
    one row: the mean over the seeds ± their standard deviation, and the number of seeds; where
    that would leave the metric's range (accuracies in [0, 1], losses >= 0) the cell lists every
    seed instead (``runs.seeds_cell``)."""
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

    head = ["run", "method", "block", "top_k"] + (["seeds"] if seeded else []) + ["final loss"]
    head += [f"acc N={n}" + ("" if d is None else f" depth={d}") for n, d in cols]  # token accuracy
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in groups.items():
        first = runs[0]["summary"]
        cells = [name, first["method"], str(first["block_size"]), str(first["top_k"])]
        cells += [str(len(runs))] if seeded else []
        cells.append(seeds_cell([r["summary"]["final_loss"] for r in runs], high=float("inf")))
        for c in cols:
            cells.append(seeds_cell([e["token_accuracy"] for r in runs for e in r["summary"]["eval"]
                                     if (e["seq_len"], e.get("depth")) == c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
