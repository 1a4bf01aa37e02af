"""The numbers of docs/training.md and docs/coverage.md that ``claims.py`` does not check itself,
each computed from the committed run folder or bench file the doc names (``claims.py`` adds
``CLAIMS`` and ``TABLES`` to its own)."""

from __future__ import annotations

import math
import statistics
import sys
from functools import lru_cache


def _claims_module():
    """claims.py imports this module while it runs, as ``claims`` (tests/test_claims.py) or as
    the script (``python claims.py``): its definitions come from the one running, since a
    plain ``import claims`` under the script would run claims.py a second time, which would
    import this module half made."""
    for name in ("claims", "__main__"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "Claim"):
            return module
    import claims
    return claims


_claims = _claims_module()
ABLATION, COVERAGE, GRID, ROOT, TRAIN = _claims.ABLATION, _claims.COVERAGE, _claims.GRID, _claims.ROOT, _claims.TRAIN
Claim, Table, json_rows, sweep_rows = _claims.Claim, _claims.Table, _claims.json_rows, _claims.sweep_rows

from msa_lab.runs import find_runs, group_seeds, mean_sd, seeds_cell  # noqa: E402

TRAINING = "docs/training.md"
SMOKE = f"{TRAIN}/smoke_cpu"
PASSKEY_CPU = f"{TRAIN}/passkey_cpu"
TEXT_CPU = f"{TRAIN}/text_cpu"
TEXT_GPU = f"{TRAIN}/text_gpu_h200"
SHARED_CLIP = f"{TRAIN}/ablation_gpu_h200_shared_clip"
KL_LEAK = f"{TRAIN}/ablation_gpu_h200_kl_leak"
GRID_KL_LEAK = f"{TRAIN}/block_topk_gpu_h200_kl_leak"
TEXT_GPU_SHARED_CLIP = f"{TRAIN}/text_gpu_h200_shared_clip"
TEXT_GPU_KL_LEAK = f"{TRAIN}/text_gpu_h200_kl_leak"
PASSKEY_2K = f"{TRAIN}/passkey_2k_partial_h200"
MQAR_GPU = f"{TRAIN}/ablation_mqar_gpu_v1_h200"
STEP_V1, STEP_V2, STEP_V3, STEP_V4 = (f"experiments/results/bench_training_step_{v}_h200.json"
                                      for v in ("v1", "v2", "v3", "v4"))
STEP = "msa attention step: selection + attention + index KL, forward+backward"
INDEX_KL_TRITON = "index KL on selected tokens forward+backward (triton, LSE given)"
GRAD_NORMS = "experiments/results/logs/grad_norms_at_init_text_cpu.txt"
#: The passkey ablation's MSA runs: sparse from step 0, 200 and 800 dense warm-up steps.
MSA_RUNS = ("msa_no_warmup", "msa_warmup200", "msa")


# --- reading the run folders ------------------------------------------------------------------

@lru_cache(maxsize=None)
def _groups(folder: str) -> dict:
    return group_seeds(find_runs(ROOT / folder))


def _summaries(folder: str, run: str) -> list[dict]:
    """The finished seeds' summaries of ``run`` in ``folder``, by seed."""
    runs = sorted((r for r in _groups(folder)[run] if r["summary"] is not None), key=lambda r: r["seed"] or 0)
    if not runs:
        raise ValueError(f"{folder}/{run}: no finished run")
    return [r["summary"] for r in runs]


def _evals(summary: dict, seq_len: int) -> list[dict]:
    found = [e for e in summary["eval"] if e["seq_len"] == seq_len]
    if not found:
        raise ValueError(f"{summary['name']}: no evaluation at {seq_len}")
    return found


def accuracy(folder: str, run: str, seq_len: int, key: str = "token_accuracy") -> list[float]:
    """``key`` at ``seq_len`` of each seed, averaged over the evaluated needle depths."""
    return [statistics.mean(e[key] for e in _evals(s, seq_len)) for s in _summaries(folder, run)]


def worst_depth(folder: str, run: str, seq_len: int = 512) -> float:
    """The lowest token accuracy at any single depth, over the seeds."""
    return min(e["token_accuracy"] for s in _summaries(folder, run) for e in _evals(s, seq_len))


def eval_loss(folder: str, run: str, seq_len: int) -> list[float]:
    return [statistics.mean(e["loss"] for e in _evals(s, seq_len)) for s in _summaries(folder, run)]


def position_loss(folder: str, run: str, bins: slice, seq_len: int = 1024) -> list[float]:
    """Mean loss over the position bins ``bins`` (16 bins) of the ``seq_len`` evaluation, per seed."""
    return [statistics.mean(_evals(s, seq_len)[0]["loss_by_position"][bins]) for s in _summaries(folder, run)]


FIRST_HALF, SECOND_HALF = slice(0, 8), slice(8, 16)  # positions 0-511 and 512-1023 of a 1024 evaluation


def final_loss(folder: str, run: str) -> list[float]:
    return [s["final_loss"] for s in _summaries(folder, run)]


def recall(folder: str, run: str, selector: str, layer: int | None = None) -> float:
    """A selector's mean recall on the model's own attention, mean over the seeds (and layers)."""
    values = [c["recall_mean"] for s in _summaries(folder, run) for c in s.get("coverage", [])
              if c["selector"] == selector and (layer is None or c["layer"] == layer)]
    if not values:
        raise ValueError(f"{folder}/{run}: no coverage of {selector!r}")
    return statistics.mean(values)


SELECTORS = ("msa (trained index)", "moba", "oracle")


def recall_cell(folder: str, run: str, places: int) -> str:
    """``index / MoBA gate / oracle`` of the sparse layers: one layer plainly, several by name."""
    layers = sorted({c["layer"] for s in _summaries(folder, run) for c in s.get("coverage", [])})
    if not layers:
        return "–"
    cells = [" / ".join(f"{recall(folder, run, k, layer):.{places}f}" for k in SELECTORS) for layer in layers]
    return cells[0] if len(cells) == 1 else "; ".join(f"layer {n}: {c}" for n, c in zip(layers, cells))


def train_loss_at(folder: str, run: str, step: int) -> list[float]:
    """The logged training loss at ``step`` of each seed."""
    out = []
    for r in sorted(_groups(folder)[run], key=lambda r: r["seed"] or 0):
        (loss,) = [m["loss"] for m in r["rows"] if m.get("kind") == "train" and m["step"] == step]
        out.append(loss)
    return out


#: ln 61: the loss of a uniform guess over the passkey's digits, the plateau of a model that has
#: not learned the retrieval yet; a run has left it once its logged loss falls below 4.0.
PLATEAU_EXIT = 4.0


def plateau_exit(folder: str, run: str) -> int:
    (r,) = _groups(folder)[run]
    return next(m["step"] for m in r["rows"] if m.get("kind") == "train" and m["loss"] < PLATEAU_EXIT)


def last_step(folder: str, run: str) -> int:
    (r,) = _groups(folder)[run]
    return max(m["step"] for m in r["rows"] if m.get("kind") == "train")


# --- formatting -------------------------------------------------------------------------------

def cell(values: list[float], places: int = 3, high: float = 1.0) -> str:
    """One value, or ``mean ± s.d.`` over the seeds (every seed where that leaves [0, high])."""
    if len(values) == 1:
        return f"{values[0]:.{places}f}"
    if places == 3:
        return seeds_cell(values, high=high)
    mean, sd = mean_sd(values)
    return f"{mean:.{places}f} ± {sd:.{places}f}"


def mean_sd_text(values: list[float], places: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{places}f} ± {sd:.{places}f}"


def span(values, places: int = 2) -> str:
    """``low–high`` of some values as the docs write a range."""
    return f"{min(values):.{places}f}–{max(values):.{places}f}"


def floor(value: float, places: int = 3) -> str:
    """A lower bound (``≥ x``) rounded down, so that it stays a bound."""
    return f"{math.floor(value * 10 ** places + 1e-9) / 10 ** places:.{places}f}"


def sci(value: float) -> str:
    """``4.6e-3`` as the docs write it (two significant digits)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def mean(values) -> float:
    return statistics.mean(values)


def require(condition: bool, what: str) -> None:
    """A comparison a sentence makes, which must still hold for the committed files."""
    if not condition:
        raise ValueError(f"{TRAINING}: no longer holds for the committed runs: {what}")


# --- the tables -------------------------------------------------------------------------------

def _smoke_table() -> str:
    lines = ["| run | final loss | N = 256 | N = 512 |", "|---|---|---|---|"]
    for label, run in (("full", "full"), ("MoBA", "moba"), ("MSA", "msa")):
        lines.append(f"| {label} | {cell(final_loss(SMOKE, run), high=math.inf)} | "
                     f"{cell(accuracy(SMOKE, run, 256))} | {cell(accuracy(SMOKE, run, 512))} |")
    return "\n".join(lines)


LAYER_RUNS = (("full", "full", "–"), ("MoBA", "moba", "layer 1"), ("MSA", "msa", "layer 1"),
              ("MoBA, all sparse", "moba_all_sparse", "layers 0, 1"), ("MSA, all sparse", "msa_all_sparse", "layers 0, 1"))


def _passkey_cpu_table() -> str:
    lines = ["| run | sparse layers | N = 256 | N = 512 | exact match at 256 | recall: index / MoBA gate / oracle |",
             "|---|---|---|---|---|---|"]
    f = PASSKEY_CPU
    for label, run, layers in LAYER_RUNS:
        lines.append(f"| {label} | {layers} | {cell(accuracy(f, run, 256))} | {cell(accuracy(f, run, 512))} | "
                     f"{cell(accuracy(f, run, 256, 'exact_match'))} | {recall_cell(f, run, 2)} |")
    return "\n".join(lines)


def _text_table(folder: str) -> str:
    lines = ["| run | sparse layers | held-out loss, 512 | byte accuracy, 512 | held-out loss, 1024 | positions 512-1023 "
             "| positions 0-511 | recall: index / MoBA gate / oracle |", "|---|---|---|---|---|---|---|---|"]
    inf = math.inf
    for label, run, layers in LAYER_RUNS:
        lines.append(f"| {label} | {layers} | {cell(eval_loss(folder, run, 512), high=inf)} | "
                     f"{cell(accuracy(folder, run, 512))} | {cell(eval_loss(folder, run, 1024), high=inf)} | "
                     f"{cell(position_loss(folder, run, SECOND_HALF), 2)} | "
                     f"{cell(position_loss(folder, run, FIRST_HALF), 2)} | {recall_cell(folder, run, 3)} |")
    return "\n".join(lines)


def _step_row(path: str, what: str, n: int) -> dict:
    (row,) = [r for r in json_rows(path) if r.get("what") == what and r.get("N") == n]
    if row["repeats"] < 20 or row["spread_pct"] > 3:
        raise ValueError(f"{path}: {what} at N={n} has {row['repeats']} repeats, spread {row['spread_pct']:.1f} %: "
                         f"the doc says medians of >= 20 repeats, spread <= 3 %")
    return row


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 1000 else f"{value:.1f} ms"


def _training_step_table() -> str:
    """v3's run for dense cuDNN (and the 64K row), v4's for the MSA step at 32K and 128K."""
    lines = ["| N | attention: selection + forward + backward | index KL, forward + backward | MSA step | dense SDPA "
             "cuDNN forward + backward | speedup, MSA step (attention alone) |", "|---|---|---|---|---|---|"]
    for n, label, path in ((1 << 15, "32K", STEP_V4), (1 << 16, "64K", STEP_V3), (1 << 17, "128K", STEP_V4)):
        sel, attend, kl, step = (_step_row(path, w, n)["median_ms"] for w in (
            "msa selection", "kv-outer forward+backward", INDEX_KL_TRITON, STEP))
        dense = _step_row(STEP_V3, "sdpa cudnn forward+backward", n)["median_ms"]
        first = " (first tiles)" if path == STEP_V3 else ""
        lines.append(f"| {label} | {sel:.1f} + {attend:.1f} ms | {kl:.1f} ms{first} | {step:.1f} ms | {_ms(dense)} | "
                     f"{dense / step:.1f}x ({dense / (sel + attend):.1f}x) |")
    return "\n".join(lines)


TABLES: list[Table] = [
    Table(TRAINING, "training_step", f"{STEP_V3}, {STEP_V4}", _training_step_table),
    Table(TRAINING, "smoke_cpu", SMOKE, _smoke_table),
    Table(TRAINING, "passkey_cpu", PASSKEY_CPU, _passkey_cpu_table),
    Table(TRAINING, "text_cpu", TEXT_CPU, lambda: _text_table(TEXT_CPU)),
    Table(TRAINING, "text_gpu", TEXT_GPU, lambda: _text_table(TEXT_GPU)),
]


CLAIMS: list[Claim] = []
