"""The numbers that README.md and docs/ quote, computed from the committed result files.

Each ``Claim`` names the doc that quotes it, the result file it comes from, a function that
computes its values from that file, and the text as the doc has it (a format string).
``tests/test_claims.py`` recomputes every claim and fails when a doc's text and the file
disagree; ``Table`` blocks are rendered whole from the files between markers in the doc:

    <!-- table:NAME -->
    ...   (rendered by experiments/claims.py from the file the table names; do not edit)
    <!-- /table:NAME -->

``python experiments/claims.py --write`` re-renders every table in place after new results
come in (then fix any claim the test reports). ``python experiments/claims.py`` prints each
claim with its value and source.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

# Run as a script this folder is on sys.path; loaded by its file path (tests/test_claims.py) it is
# not, and _common and the claim groups below are its siblings.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402
from msa_lab.bench import load_results  # noqa: E402
from msa_lab.bench.analysis import with_speedups  # noqa: E402
from msa_lab.bench.config import load_config  # noqa: E402
from msa_lab.bench.costs import dense_equiv_flop, stage_costs  # noqa: E402
from msa_lab.runs import find_runs, group_seeds  # noqa: E402

SWEEPS = "experiments/results/sweeps"
TRAIN = "experiments/results/train"
PREFILL_128K = f"{SWEEPS}/headline_prefill_128k_h200"
PREFILL_1M = f"{SWEEPS}/headline_prefill_1m_h200"
DECODE = f"{SWEEPS}/headline_decode_h200"
TRAINING_STEP = "experiments/results/bench_training_step_v8_h200.json"  # the code of the prefill tables
#: The same bench before the non-finite masking, with its first version, and with the compare (kernels.md).
TRAINING_STEP_COMPARE = "experiments/results/bench_training_step_v7_h200.json"
TRAINING_STEP_BEFORE = "experiments/results/bench_training_step_v5_h200.json"
TRAINING_STEP_FIRST_MASK = "experiments/results/bench_training_step_v6_h200.json"
DECODE_V1 = "experiments/results/superseded/headline_decode_v1_h200"
SELECTION_CHECK = "experiments/results/selection_correctness_h200.json"


@dataclass(frozen=True)
class Claim:
    doc: str
    text: str  # the quoted text, ``str.format``-ed with ``values()``
    source: str
    values: Callable[[], tuple]

    def rendered(self) -> str:
        return self.text.format(*self.values())


@dataclass(frozen=True)
class Table:
    doc: str
    name: str
    source: str
    render: Callable[[], str]


# --- reading the result files ---------------------------------------------------------------

@lru_cache(maxsize=None)
def sweep_rows(folder: str) -> tuple[dict, ...]:
    return tuple(load_results(ROOT / folder))


def total(folder: str, method: str, backend: str, seq_len: int | None = None, **match) -> dict:
    """The one finished whole-operator row of ``folder`` that matches, with its speedup over
    the dense baseline of the same process where there is one."""
    found = [r for r in with_speedups(sweep_rows(folder))
             if r["method"] == method and r["backend"] == backend
             and (seq_len is None or r["seq_len"] == seq_len) and all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise ValueError(f"{folder}: {len(found)} finished total rows for {method}/{backend} N={seq_len} {match}")
    return found[0]


def stage(folder: str, method: str, backend: str, name: str, seq_len: int | None = None, **match) -> dict:
    row = total(folder, method, backend, seq_len, **match)
    found = [r for r in sweep_rows(folder) if r["point_id"] == row["point_id"] and r["stage"] == name
             and r["status"] == "ok"]
    if len(found) != 1:
        raise ValueError(f"{folder}: no {name!r} stage row for {method}/{backend} N={seq_len}")
    return found[0]


def ratio(a: dict, b: dict) -> float:
    """``a``'s time over ``b``'s: only for two rows of one process (SPEC)."""
    if a.get("process") is None or a.get("process") != b.get("process"):
        raise ValueError(f"rows of different processes: {a.get('process')} vs {b.get('process')}")
    return a["median_ms"] / b["median_ms"]


def rows_of(path: str) -> list[dict]:
    """The rows of a result file: ``{"rows": [...]}`` (with its environment), a bare list, or
    a log of one ``repr``-ed dict a line."""
    if path.endswith(".log"):
        return [ast.literal_eval(line) for line in (ROOT / path).read_text().splitlines()
                if line.startswith("{")]
    data = json.loads((ROOT / path).read_text())
    return data["rows"] if isinstance(data, dict) else data


def row(path: str, **match) -> dict:
    """The one row of ``path`` whose fields equal ``match`` (a ``method`` or ``what`` given
    as ``startswith=`` matches the start of either)."""
    prefix = match.pop("startswith", None)
    found = [r for r in rows_of(path) if all(r.get(k) == v for k, v in match.items())
             and (prefix is None or str(r.get("method", r.get("what", ""))).startswith(prefix))]
    if len(found) != 1:
        raise ValueError(f"{path}: {len(found)} rows match {match} {prefix or ''}")
    return found[0]


def med(path: str, **match) -> float:
    return float(row(path, **match)["median_ms"])


@lru_cache(maxsize=None)
def seed_values(folder: str, run: str, metric: Callable[[dict], float]) -> tuple[float, ...]:
    """``metric(summary)`` of each finished seed of ``run`` in ``folder``, by seed."""
    groups = group_seeds(find_runs(ROOT / folder))
    seeds = sorted((r["seed"], metric(r["summary"])) for r in groups[run] if r["summary"] is not None)
    return tuple(v for _, v in seeds)


def passkey_accuracy(seq_len: int) -> Callable[[dict], float]:
    """Token accuracy at ``seq_len``, averaged over the evaluated needle depths."""
    def metric(summary: dict) -> float:
        accs = [e["token_accuracy"] for e in summary["eval"] if e["seq_len"] == seq_len]
        return statistics.mean(accs)
    return metric


def held_out_loss(seq_len: int) -> Callable[[dict], float]:
    def metric(summary: dict) -> float:
        (loss,) = [e["loss"] for e in summary["eval"] if e["seq_len"] == seq_len]
        return loss
    return metric


#: Two-sided 95 % Student t quantiles by degrees of freedom (scipy is not a dependency).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def welch_interval(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its 95 % Welch interval, for seeds that are not paired (the
    runs so far draw each method's initialisation apart: an MSA model has extra parameters).
    The t quantile is taken at the Welch-Satterthwaite degrees of freedom rounded down, so
    the interval errs wide."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch_interval needs at least 2 seeds per method")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = T95[max(1, min(int(df), max(T95)))] * math.sqrt(va + vb)
    diff = statistics.mean(a) - statistics.mean(b)
    return diff, diff - half, diff + half


# --- formatting -------------------------------------------------------------------------------

def ms(value: float) -> str:
    """A time as the docs write it: ``35.9 s``, ``69.8 ms``, ``0.535 ms``."""
    if value >= 1000:
        return f"{value / 1000:#.3g} s" if value < 10_000 else f"{value / 1000:.1f} s"
    return f"{value:#.3g} ms"


def context(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def times(value: float) -> str:
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def seeds(values) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# --- the claims -------------------------------------------------------------------------------

def _decode_bound() -> tuple:
    """The decode speedup bound of the byte model at 1M context, batch 8 (bf16 index keys)."""
    cfg = load_config(ROOT / "experiments/configs/headline_decode.yaml", check_device=False)
    dense, msa = (next(p for p in cfg.points if p.method == m and p.seq_len == 1 << 20 and p.cuda_graph)
                  for m in ("full", "msa"))
    return (stage_costs(dense)["total"].bytes / stage_costs(msa)["total"].bytes,)


def _compute_ratio_1m() -> tuple:
    cfg = load_config(ROOT / "experiments/configs/headline_prefill_1m.yaml", check_device=False)
    msa = next(p for p in cfg.points if p.method == "msa")
    return (dense_equiv_flop(msa) / stage_costs(msa)["total"].flop,)


def _ceiling() -> tuple:
    """``2 Hq D / (G Di)``: the dense / useful FLOP ratio as N grows (the index branch's N^2
    term is all that is left of MSA's cost), for the published config."""
    Hq, D, G, Di = 64, 128, 4, 128
    return (2 * Hq * D / (G * Di),)


def _passkey(run: str, folder: str = f"{TRAIN}/ablation_gpu_h200") -> tuple[float, ...]:
    return seed_values(folder, run, passkey_accuracy(512))


def _training_step(what: str, path: str = TRAINING_STEP) -> dict:
    return row(path, what=what, N=1 << 17)


INDEX_KL = "experiments/results/bench_index_kl_like_for_like_h200.json"  # one run of the bench: one process


def _index_kl(backend: str, index_dtype: str, lse_given: bool, n: int = 1 << 17) -> float:
    return med(INDEX_KL, what="loss+backward", N=n, backend=backend, index_dtype=index_dtype, lse_given=lse_given)


def _decode_runs() -> tuple:
    first = total(DECODE_V1, "msa", "triton", 1 << 20, cuda_graph=False)
    return (first["median_ms"], first["speedup"], _t(DECODE, "msa", "triton", 1 << 20, cuda_graph=False),
            _t(DECODE_V1, "msa", "triton", 1 << 20, cuda_graph=True), _t(DECODE, "msa", "triton", 1 << 20, cuda_graph=True))


def _step_ratio(what: str) -> float:
    """cuDNN's forward + backward over ``what``, both rows of one process (one JSON file)."""
    return _training_step("sdpa cudnn forward+backward")["median_ms"] / _training_step(what)["median_ms"]


def _t(folder, method, backend, n=None, **match) -> float:
    return total(folder, method, backend, n, **match)["median_ms"]


def _flex_prebuilt(method: str) -> float:
    return stage(PREFILL_128K, method, "flex", "attention")["median_ms"]


def _selection_rows(check: str, n: int, dtype: str) -> float:
    return row(SELECTION_CHECK, check=check, N=n, dtype=dtype)["identical_rows"]


COVERAGE = f"{SWEEPS}/coverage_cpu"
#: ``msa-lab demo --out experiments/results/demo_cpu`` (its HTML is left out: 5 MB).
DEMO = "experiments/results/demo_cpu/summary.json"


def _demo(method: str) -> dict:
    return row(DEMO, method=method)


def _by_distance(method: str, seq_len: int = 16384) -> tuple[list[float], list[float]]:
    """Recall and true-mass share per distance octave (mixed pattern, block 128, top-8)."""
    (row,) = [r for r in sweep_rows(COVERAGE) if r["stage"] == "total" and r["method"] == method
              and r["pattern"] == "mixed" and r["top_k"] == 8 and r["block_size"] == 128 and r["seq_len"] == seq_len]
    _, recall, share = row["recall_by_distance"]
    return recall, share


def _distance_claim() -> tuple:
    msa, moba, oracle = (_by_distance(m)[0] for m in ("msa", "moba", "oracle"))
    far = slice(4, None)  # octaves from 8-15 blocks back on
    # The sentence's comparisons, not only its numbers, must hold.
    if not (moba[1] > msa[1] and moba[2] > msa[2] and msa[3] > moba[3]
            and all(a > b for a, b in zip(msa[far], moba[far]))):
        raise ValueError("coverage.md's by-distance comparison no longer holds for the committed rows")
    return (moba[1], moba[2], msa[1], msa[2], msa[3], moba[3], min(msa[far]), max(msa[far]), min(moba[far]),
            max(moba[far]), min(oracle[far]), max(oracle[far]), 100 * sum(_by_distance("msa")[1][5:]))


STEP = "msa attention step: selection + attention + index KL, forward+backward"
CLAIMS: list[Claim] = [
    # README's headline, each ratio of one process
    Claim("README.md", "the whole MSA operator is **{0:.1f}x** faster at 1M tokens ({1:.1f}x at 128K)",
          f"{PREFILL_1M}, {PREFILL_128K}", lambda: (total(PREFILL_1M, "msa", "triton")["speedup"],
                                                     total(PREFILL_128K, "msa", "triton")["speedup"])),
    Claim("README.md", "a decode step at 1M context **{0:.1f}x** faster with CUDA-graph replays ({1:.1f}x per "
          "synchronised call)", DECODE,
          lambda: tuple(total(DECODE, "msa", "triton", 1 << 20, cuda_graph=g)["speedup"] for g in (True, False))),
    Claim("README.md", "backward) {0:.1f}x faster than cuDNN's forward + backward at 128K", TRAINING_STEP,
          lambda: (_step_ratio(STEP),)),
    Claim("README.md", "the KV-outer forward + backward is {0:.1f}x faster than dense cuDNN's, and the whole step "
          "with the selection and the index KL loss (fused Triton kernel) {1:.1f}x", TRAINING_STEP,
          lambda: (_step_ratio("kv-outer forward+backward"), _step_ratio(STEP))),
    # docs/results.md prose
    Claim("docs/results.md", "FlexAttention takes {0:.0f} ms with its BlockMask built beforehand against KV-outer's "
          "{1:.1f} ms", PREFILL_128K, lambda: (_flex_prebuilt("structured"), _t(PREFILL_128K, "structured", "triton"))),
    Claim("docs/results.md", "{0:.1f} ms against KV-outer's {1:.1f} ms. With the mask built in the call ({2:.0f} ms of "
          "it) the two are even", PREFILL_128K,
          lambda: (_flex_prebuilt("coherent"), _t(PREFILL_128K, "coherent", "triton"),
                   stage(PREFILL_128K, "coherent", "flex", "metadata")["median_ms"])),
    Claim("docs/results.md", "KV-outer takes the same time on every selection ({0:.1f}–{1:.1f} ms)", PREFILL_128K,
          lambda: (min(_t(PREFILL_128K, m, "triton") for m in ("random", "structured", "coherent")),
                   max(_t(PREFILL_128K, m, "triton") for m in ("random", "structured", "coherent")))),
    Claim("docs/results.md", "**MSA at 1M: {0:.1f}x faster than dense cuDNN, in one process**", PREFILL_1M,
          lambda: (total(PREFILL_1M, "msa", "triton")["speedup"],)),
    Claim("docs/results.md", "{0:.1f}x is the FLOP ratio of the config by the cost model",
          "experiments/configs/headline_prefill_1m.yaml", _compute_ratio_1m),
    Claim("docs/results.md", "The index branch's N² scoring (selection) is {0:.0f} % of the operator", PREFILL_1M,
          lambda: (100 * stage(PREFILL_1M, "msa", "triton", "selection")["median_ms"] / _t(PREFILL_1M, "msa", "triton"),)),
    Claim("docs/results.md", "Dense attention at 1M takes {0:.1f} s a call, so its row has {1} timed repeats after the "
          "{2} warm-up calls (`max_seconds_per_point`); its spread is {3:.1f} %", PREFILL_1M,
          lambda: (lambda r: (r["median_ms"] / 1000, r["repeats"], r["warmup"], r["spread_pct"]))(
              total(PREFILL_1M, "full", "sdpa_cudnn"))),
    Claim("docs/results.md", "**MSA decode at 1M: {0:.1f}x faster than dense with CUDA-graph replays, {1:.1f}x per "
          "synchronised call**", DECODE,
          lambda: tuple(total(DECODE, "msa", "triton", 1 << 20, cuda_graph=g)["speedup"] for g in (True, False))),
    Claim("docs/results.md", "replayed it is {0:.1f}x faster", DECODE,
          lambda: (total(DECODE, "msa", "triton", 1 << 17, cuda_graph=True)["speedup"],)),
    Claim("docs/results.md", "takes {0:.1f} ms; dense SDPA cuDNN's forward + backward {1:.0f} ms in the same process: "
          "**{2:.1f}x**. The KV-outer forward + backward alone: {3:.1f} ms ({4:.1f} ms deterministic)", TRAINING_STEP,
          lambda: (_training_step(STEP)["median_ms"], _training_step("sdpa cudnn forward+backward")["median_ms"],
                   _step_ratio(STEP), _training_step("kv-outer forward+backward")["median_ms"],
                   _training_step("kv-outer forward+backward deterministic")["median_ms"])),
    Claim("docs/results.md", "differ from the headline run above by {4:.0f} % and {5:.0f} % (MSA {0:.1f} vs {1:.1f} ms, "
          "dense {2:.0f} vs {3:.0f} ms", f"{SWEEPS}/prefill_1m_h200, {PREFILL_128K}", lambda: (lambda m0, m1, d0, d1: (
              m0, m1, d0, d1, 100 * abs(m1 / m0 - 1), 100 * abs(d1 / d0 - 1)))(
              _t(f"{SWEEPS}/prefill_1m_h200", "msa", "triton", 1 << 17), _t(PREFILL_128K, "msa", "triton"),
              _t(f"{SWEEPS}/prefill_1m_h200", "full", "sdpa_cudnn", 1 << 17), _t(PREFILL_128K, "full", "sdpa_cudnn"))),
    Claim("docs/coverage.md", "at 1 and 2–3 blocks back MoBA keeps more than MSA ({0:.2f} / {1:.2f} against "
          "{2:.2f} / {3:.2f}), at 4–7 MSA keeps slightly more ({4:.2f} against {5:.2f}), and from 8 blocks back MSA "
          "keeps more in every octave ({6:.2f}–{7:.2f} against {8:.2f}–{9:.2f}), close to the oracle "
          "({10:.2f}–{11:.2f}). {12:.0f} % of the true mass lies 16 or more blocks back", COVERAGE, _distance_claim),
    Claim("README.md", "`msa-lab demo` ({0:.0f} s on 2 CPU cores in the committed run", DEMO,
          lambda: (json.loads((ROOT / DEMO).read_text())["seconds"],)),
    Claim("README.md", "MSA's max pooling keeps the needle heads (recall {0:.2f} against MoBA's {1:.2f}, oracle "
          "{2:.2f})", DEMO, lambda: tuple(_demo(m)["recall[needle]"] for m in ("msa", "moba", "oracle"))),
    Claim("docs/benchmarks.md", "{0:.2f} s vs {1:.1f} s in one process (`headline_prefill_1m_h200`, `results.md`): "
          "**{2:.1f}x**", PREFILL_1M,
          lambda: (_t(PREFILL_1M, "msa", "triton") / 1000, _t(PREFILL_1M, "full", "sdpa_cudnn") / 1000,
                   total(PREFILL_1M, "msa", "triton")["speedup"])),
    Claim("docs/kernels.md", "the same-process ratio, {0:.1f}x", PREFILL_1M,
          lambda: (total(PREFILL_1M, "msa", "triton")["speedup"],)),
    Claim("docs/training.md", "the MSA step {0:.1f} ms against cuDNN's forward + backward {1:.0f} ms, **{2:.1f}x**; the "
          "attention's forward + backward alone {3:.1f} ms, {4:.1f}x", TRAINING_STEP,
          lambda: (_training_step(STEP)["median_ms"], _training_step("sdpa cudnn forward+backward")["median_ms"],
                   _step_ratio(STEP), _training_step("kv-outer forward+backward")["median_ms"],
                   _step_ratio("kv-outer forward+backward"))),
    Claim("docs/kernels.md", "is {0:.1f}x ({1:.1f} ms against {2:.0f} ms, `training.md`)", TRAINING_STEP,
          lambda: (_step_ratio(STEP), _training_step(STEP)["median_ms"],
                   _training_step("sdpa cudnn forward+backward")["median_ms"])),
    Claim("docs/results.md", "measured {0:.3f} ms per call at 1M ({1:.1f}x) where this one measured {2:.3f} ms; graph "
          "replays do not move ({3:.3f} and {4:.3f} ms)", f"{DECODE_V1}, {DECODE}", _decode_runs),
    Claim("docs/training.md", "takes {0:.1f} ms at 128K where the reference takes {1:.0f} ms, in one run of "
          "`bench_index_kl.py` (`bench_index_kl_like_for_like_h200.json`). That {2:.0f}x is not like for like", INDEX_KL,
          lambda: (_index_kl("triton", "bf16", True), _index_kl("reference", "fp32", False),
                   _index_kl("reference", "fp32", False) / _index_kl("triton", "bf16", True))),
    Claim("docs/training.md", "recomputing the LSE, the kernel takes {0:.1f} ms: **{1:.0f}x**", INDEX_KL,
          lambda: (_index_kl("triton", "fp32", False),
                   _index_kl("reference", "fp32", False) / _index_kl("triton", "fp32", False))),
    Claim("docs/coverage.md", "On needle and heavy-hitter heads MSA keeps {0:.2f} of the oracle's recall at top-8, MoBA "
          "{1:.2f} and {2:.2f}; on purely local heads they tie (MoBA {3:.2f}, MSA {4:.2f}", COVERAGE, lambda: (
              same_value(_coverage_row("msa", "needle", 8)["recall_vs_oracle_mean"],
                    _coverage_row("msa", "heavy_hitter", 8)["recall_vs_oracle_mean"], places=2),
              _coverage_row("moba", "needle", 8)["recall_vs_oracle_mean"],
              _coverage_row("moba", "heavy_hitter", 8)["recall_vs_oracle_mean"],
              _coverage_row("moba", "local", 8)["recall_vs_oracle_mean"],
              _coverage_row("msa", "local", 8)["recall_vs_oracle_mean"])),
    Claim("docs/coverage.md", "MSA {0:.3f} / {1:.3f} / {2:.3f} / {3:.3f} at block 32 / 64 / 128 / 256 (MoBA {4:.3f} / "
          "{5:.3f} / {6:.3f} / {7:.3f}); at block 512 top-1 every selector has only the local block ({8:.3f})",
          COVERAGE, lambda: tuple(
              [_coverage_row("msa", "mixed", 512 // bs, block_size=bs)["recall_mean"] for bs in (32, 64, 128, 256)]
              + [_coverage_row("moba", "mixed", 512 // bs, block_size=bs)["recall_mean"] for bs in (32, 64, 128, 256)]
              + [same_value(*(_coverage_row(m, "mixed", 1, block_size=512)["recall_mean"] for m in ("msa", "moba", "oracle")))])),
    Claim("docs/coverage.md", "at top-8, MSA {0:.3f} / {1:.3f} / {2:.3f} at 4K / 16K / 32K (oracle {3:.3f} / {4:.3f} / "
          "{5:.3f})", COVERAGE, lambda: tuple(
              [_coverage_row("msa", "mixed", 8, seq_len=n)["recall_mean"] for n in (4096, 16384, 32768)]
              + [_coverage_row("oracle", "mixed", 8, seq_len=n)["recall_mean"] for n in (4096, 16384, 32768)])),
    Claim("docs/kernels.md", "(KV-outer forward\n  {0:.1f} → {1:.1f} ms, forward + backward {2:.1f} → {3:.1f} ms", 
          f"{TRAINING_STEP_BEFORE}, {TRAINING_STEP_FIRST_MASK}", lambda: tuple(
              _training_step(w, f)["median_ms"] for w, f in (
                  ("kv-outer forward", TRAINING_STEP_BEFORE), ("kv-outer forward", TRAINING_STEP_FIRST_MASK),
                  ("kv-outer forward+backward", TRAINING_STEP_BEFORE),
                  ("kv-outer forward+backward", TRAINING_STEP_FIRST_MASK)))),
    Claim("docs/kernels.md", "With the compare: {0:.1f} and {1:.1f} ms (`_v7_`; {2:.1f} and {3:.1f} ms in `_v8_`",
          f"{TRAINING_STEP_COMPARE}, {TRAINING_STEP}", lambda: tuple(
              _training_step(w, f)["median_ms"] for f in (TRAINING_STEP_COMPARE, TRAINING_STEP)
              for w in ("kv-outer forward", "kv-outer forward+backward"))),
    # bf16 selections as sets
    Claim("docs/benchmarks.md", "the same set on {0:.6f} of MSA's rows and {1:.7f} of MoBA's", SELECTION_CHECK,
          lambda: (_selection_rows("triton selection vs reference", 65536, "bfloat16"),
                   _selection_rows("moba triton selection vs reference", 65536, "bfloat16"))),
    Claim("docs/kernels.md", "in bf16 at 64K on {0:.6f} of rows", SELECTION_CHECK,
          lambda: (_selection_rows("triton selection vs reference", 65536, "bfloat16"),)),
    Claim("docs/kernels.md", "on {0:.7f} of rows at 64K (bf16)", SELECTION_CHECK,
          lambda: (_selection_rows("moba triton selection vs reference", 65536, "bfloat16"),)),
    Claim("docs/kernels.md", "a bound of ~{0:.1f}x with bf16 index keys by the byte model",
          "experiments/configs/headline_decode.yaml", _decode_bound),
    Claim("docs/cost_model.md", "the dense / useful ratio is {0:.1f}", "experiments/configs/headline_prefill_1m.yaml",
          _compute_ratio_1m),
    Claim("docs/cost_model.md", "the ceiling is {0:.0f}x, `2 · Hq · D / (G · Di)`", "the published config",
          _ceiling),
    Claim("docs/results.md", "the byte model bounds the speedup at {0:.1f}x", "experiments/configs/headline_decode.yaml",
          _decode_bound),
    Claim("README.md", "MSA sparse from step 0 minus full attention: {0:+.3f} (95 % Welch interval "
          "[{1:+.3f}, {2:+.3f}]; the seeds are not paired", f"{TRAIN}/ablation_gpu_h200",
          lambda: welch_interval(_passkey("msa_no_warmup"), _passkey("full"))),
    Claim("README.md", "full attention {0}; MSA sparse from step 0 {1}", f"{TRAIN}/ablation_gpu_h200",
          lambda: (seeds(_passkey("full")), seeds(_passkey("msa_no_warmup")))),
    Claim("README.md", "MoBA at block 16 × top-4 learned on two seeds of three ({0})", f"{TRAIN}/ablation_gpu_h200",
          lambda: (seeds(_passkey("moba")),)),
    Claim("README.md", "at block 8 × top-8 on all three ({0})", f"{TRAIN}/block_topk_gpu_h200",
          lambda: (seeds(_passkey("moba_b8_k8", f"{TRAIN}/block_topk_gpu_h200")),)),
    Claim("README.md", "held-out loss at 512 bytes: full attention {0}, MSA {1}", f"{TRAIN}/text_gpu_h200",
          lambda: tuple(seeds(seed_values(f"{TRAIN}/text_gpu_h200", r, held_out_loss(512))) for r in ("full", "msa"))),
]

def _prefill_128k_table() -> str:
    """Every operator of the 128K headline run, with its speedup over dense cuDNN of that run."""
    f = PREFILL_128K
    entries = [
        ("dense, SDPA cuDNN", "full", "sdpa_cudnn", "–"),
        ("dense, SDPA FlashAttention", "full", "sdpa_flash", "–"),
        ("MSA, whole operator (index selection + KV-outer)", "msa", "triton", "MSA's, random index inputs"),
        ("MSA with the Q-outer kernel", "msa", "triton_q_outer", "MSA's, random index inputs"),
        ("MSA with FlexAttention (BlockMask built in the call)", "msa", "flex", "MSA's, random index inputs"),
        ("MoBA, whole operator (gate + KV-outer per head)", "moba", "triton", "MoBA's gate"),
        ("KV-outer alone", "random", "triton", "random blocks"),
        ("KV-outer alone", "structured", "triton", "structured (MSA on generated data)"),
        ("FlexAttention alone, mask built in the call", "structured", "flex", "structured (MSA on generated data)"),
        ("KV-outer alone", "coherent", "triton", "tile-coherent"),
        ("FlexAttention alone, mask built in the call", "coherent", "flex", "tile-coherent"),
    ]
    lines = ["| operator | selection | median | spread | repeats | x dense cuDNN (same run) |",
             "|---|---|---|---|---|---|"]
    for label, method, backend, selection in entries:
        r = total(f, method, backend)
        lines.append(f"| {label} | {selection} | {ms(r['median_ms'])} | {r['spread_pct']:.1f} % | {r['repeats']} | "
                     f"{times(r['speedup'])} |")
    for method, selection in (("msa", "MSA's, random index inputs"), ("structured", "structured"),
                              ("coherent", "tile-coherent")):
        r = stage(f, method, "flex", "attention")
        lines.append(f"| FlexAttention, mask built beforehand (reused across layers) | {selection} | "
                     f"{ms(r['median_ms'])} | {r['spread_pct']:.1f} % | {r['repeats']} | "
                     f"{times(total(f, 'full', 'sdpa_cudnn')['median_ms'] / r['median_ms'])} |")
    return "\n".join(lines)


SELECTORS_128K = f"{SWEEPS}/selectors_prefill_h200"
MOBA_BLOCKS = f"{SWEEPS}/moba_block_sizes_h200"


def _selectors_table() -> str:
    """Every timed selector, MSA's ablations and the window with a sink at 128K, one process:
    the whole operator, its selection stage and the speedup over dense cuDNN of that run."""
    f = SELECTORS_128K
    entries = [
        ("MSA (max pooling, per KV group)", "msa", dict(per="group", options=None)),
        ("MSA, mean pooling", "msa", dict(options="pooling=mean")),
        ("MSA, LSE pooling", "msa", dict(options="pooling=lse")),
        ("MSA, forced sink block", "msa", dict(options="sink_blocks=1")),
        ("MSA, one index head per query head", "msa", dict(per="head", options=None)),
        ("MoBA (per query head)", "moba", {}),
        ("Quest (per query head)", "quest", {}),
        ("sliding window + sink block (given selection)", "window", {}),
    ]
    dense = total(f, "full", "sdpa_cudnn")
    lines = ["| method | whole operator | spread | its selection | x dense cuDNN (same run) |", "|---|---|---|---|---|",
             f"| dense, SDPA cuDNN | {ms(dense['median_ms'])} | {dense['spread_pct']:.1f} % | – | 1.0x |"]
    for label, method, match in entries:
        r = total(f, method, "triton", 1 << 17, **match)
        sel = [s for s in sweep_rows(f) if s["point_id"] == r["point_id"] and s.get("stage") == "selection"]
        lines.append(f"| {label} | {ms(r['median_ms'])} | {r['spread_pct']:.1f} % | "
                     f"{ms(sel[0]['median_ms']) if sel else '– (not timed)'} | {times(r['speedup'])} |")
    return "\n".join(lines)


def _moba_blocks_table() -> str:
    """MoBA at its published block sizes against dense cuDNN at each length: the whole
    operator, its spread and its speedup over the dense row of the same process."""
    f = MOBA_BLOCKS
    lengths = sorted({r["seq_len"] for r in sweep_rows(f)})
    dense = {n: total(f, "full", "sdpa_cudnn", n) for n in lengths}
    lines = ["| MoBA config | attended tokens per query (full blocks) | "
             + " | ".join(f"{context(n)}: whole operator, spread, x dense cuDNN" for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths),
             "| dense, SDPA cuDNN | – | " + " | ".join(
                 f"{ms(dense[n]['median_ms'])}, {dense[n]['spread_pct']:.1f} %, 1.0x" for n in lengths) + " |"]
    configs = sorted({(r["block_size"], r["top_k"]) for r in sweep_rows(f) if r["method"] == "moba"})
    for block_size, top_k in configs:
        cells = [total(f, "moba", "triton", n, block_size=block_size, top_k=top_k) for n in lengths]
        lines.append(f"| block {block_size}, top-{top_k} | {block_size * top_k:,} | " + " | ".join(
            f"{ms(r['median_ms'])}, {r['spread_pct']:.1f} %, {times(r['speedup'])}" for r in cells) + " |")
    return "\n".join(lines)


def _stages_table(folder: str) -> str:
    lines = ["| stage | median | share of the whole operator |", "|---|---|---|"]
    whole = total(folder, "msa", "triton")["median_ms"]
    for name, label in (("selection", "selection (index scores + top-k)"), ("metadata", "query lists"),
                        ("attention", "KV-outer attend"), ("merge", "merge")):
        t = stage(folder, "msa", "triton", name)["median_ms"]
        lines.append(f"| {label} | {ms(t)} | {100 * t / whole:.0f} % |")
    lines.append(f"| whole operator | {ms(whole)} | – |")
    return "\n".join(lines)


def _prefill_1m_table() -> str:
    f = PREFILL_1M
    lines = ["| operator | median | spread | repeats | x dense cuDNN (same run) |", "|---|---|---|---|---|"]
    for label, method, backend in (("dense, SDPA cuDNN", "full", "sdpa_cudnn"),
                                   ("MSA, whole operator", "msa", "triton"),
                                   ("KV-outer alone, random selection", "random", "triton")):
        r = total(f, method, backend)
        lines.append(f"| {label} | {ms(r['median_ms'])} | {r['spread_pct']:.1f} % | {r['repeats']} | "
                     f"{times(r['speedup'])} |")
    return "\n".join(lines)


def _decode_table() -> str:
    lines = ["| context | timing | dense, SDPA cuDNN | dense, SDPA FlashAttention | MSA decode (Triton) | "
             "MSA x cuDNN |", "|---|---|---|---|---|---|"]
    for n in (1 << 17, 1 << 20):
        for graph, how in ((False, "per synchronised call"), (True, "CUDA-graph replays")):
            cudnn, flash, msa = (total(DECODE, m, b, n, cuda_graph=graph)
                                 for m, b in (("full", "sdpa_cudnn"), ("full", "sdpa_flash"), ("msa", "triton")))
            lines.append(f"| {context(n)} | {how} | {ms(cudnn['median_ms'])} | {ms(flash['median_ms'])} | "
                         f"{ms(msa['median_ms'])} (spread {msa['spread_pct']:.0f} %) | {times(ratio(cudnn, msa))} |")
    return "\n".join(lines)


ABLATION = f"{TRAIN}/ablation_gpu_h200"
GRID = f"{TRAIN}/block_topk_gpu_h200"


def _passkey_cells(folder: str, run: str) -> list[str]:
    """Token accuracy at 512 / 1,024 / 2,048 (mean over depths; seed by seed where mean ± s.d.
    would leave [0, 1]), then each seed at 512."""
    from msa_lab.runs import seeds_cell

    cells = [seeds_cell(list(seed_values(folder, run, passkey_accuracy(n)))) for n in (512, 1024, 2048)]
    return cells, " / ".join(f"{v:.3f}" for v in seed_values(folder, run, passkey_accuracy(512)))


def _exact_match(summary: dict) -> float:
    return statistics.mean(e["exact_match"] for e in summary["eval"] if e["seq_len"] == 512)


def _recall(folder: str, run: str) -> str:
    """Mean over the seeds of the layer's recall: trained index / MoBA's gate / oracle."""
    groups = group_seeds(find_runs(ROOT / folder))
    by = {}
    for r in groups[run]:
        for c in r["summary"].get("coverage", []):
            by.setdefault(c["selector"], []).append(c["recall_mean"])
    if not by:
        return "–"
    return " / ".join(f"{statistics.mean(by[k]):.2f}" for k in ("msa (trained index)", "moba", "oracle"))


def _passkey_table() -> str:
    from msa_lab.runs import seeds_cell

    lines = ["| run | N = 512 | 1,024 | 2,048 | exact match at 512 | per seed at 512 | recall: index / MoBA gate / oracle |",
             "|---|---|---|---|---|---|---|"]
    for label, run in (("full", "full"), ("MoBA", "moba"), ("MSA, sparse from step 0", "msa_no_warmup"),
                       ("MSA, 200 warm-up steps", "msa_warmup200"), ("MSA, 800 dense warm-up steps", "msa")):
        cells, per_seed = _passkey_cells(ABLATION, run)
        exact = seeds_cell(list(seed_values(ABLATION, run, _exact_match)))
        lines.append(f"| {label} | {' | '.join(cells)} | {exact} | {per_seed} | {_recall(ABLATION, run)} |")
    return "\n".join(lines)


def _moba_grid_table() -> str:
    lines = ["| method | block × top_k | N = 512 | 1,024 | 2,048 | per seed at 512 |", "|---|---|---|---|---|---|"]
    for shape, folder, run in (("8 × 8", GRID, "moba_b8_k8"), ("16 × 4", ABLATION, "moba"),
                               ("32 × 2", GRID, "moba_b32_k2")):
        cells, per_seed = _passkey_cells(folder, run)
        lines.append(f"| MoBA | {shape} | {' | '.join(cells)} | {per_seed} |")
    return "\n".join(lines)


def _msa_grid_table() -> str:
    lines = ["| MSA | block × top_k | N = 512 | 1,024 | 2,048 | per seed at 512 | recall: index / MoBA gate / oracle |",
             "|---|---|---|---|---|---|---|"]
    for warm, shape, folder, run in (("800 warm-up steps", "8 × 8", GRID, "msa_b8_k8"),
                                     ("800 warm-up steps", "16 × 4", ABLATION, "msa"),
                                     ("800 warm-up steps", "32 × 2", GRID, "msa_b32_k2"),
                                     ("from step 0", "8 × 8", GRID, "msa_b8_k8_scratch"),
                                     ("from step 0", "16 × 4", ABLATION, "msa_no_warmup"),
                                     ("from step 0", "32 × 2", GRID, "msa_b32_k2_scratch")):
        cells, per_seed = _passkey_cells(folder, run)
        lines.append(f"| {warm} | {shape} | {' | '.join(cells)} | {per_seed} | {_recall(folder, run)} |")
    return "\n".join(lines)


def _published_table() -> str:
    """The published numbers the figures draw (``msa_lab.bench.analysis.PUBLISHED``)."""
    from msa_lab.bench.analysis import PUBLISHED

    kinds = {"wall-clock": "wall-clock speedup over dense attention", "flop": "FLOP ratio (compute), not a timing"}
    lines = ["| as published | value | what it is |", "|---|---|---|"]
    for entry in PUBLISHED:
        lines.append(f"| {entry['label']} | {entry['speedup']:g}x | {kinds[entry['measure']]} |")
    return "\n".join(lines)


def _coverage_row(method: str, pattern: str, top_k: int, seq_len: int = 16384, block_size: int = 128) -> dict:
    (row,) = [r for r in sweep_rows(COVERAGE) if r["stage"] == "total" and r["method"] == method
              and r["pattern"] == pattern and r["top_k"] == top_k and r["block_size"] == block_size
              and r["seq_len"] == seq_len]
    return row


def same_value(*values: float, places: int = 3) -> float:
    """The one value a sentence quotes for several rows; refuses rows that differ at that precision."""
    if len({round(v, places) for v in values}) != 1:
        raise ValueError(f"the doc quotes one value for rows that differ: {values}")
    return values[0]


def _coverage_table() -> str:
    """Mean recall at 16K, block 128, with recall relative to the oracle in brackets."""
    lines = ["| pattern | top_k | oracle | MSA | MoBA | window | random |", "|---|---|---|---|---|---|---|"]
    for pattern, top_k in (("mixed", 4), ("mixed", 8), ("mixed", 16), ("local", 8), ("needle", 8),
                           ("periodic", 8), ("heavy_hitter", 8)):
        cells = [f"{_coverage_row('oracle', pattern, top_k)['recall_mean']:.3f}"]
        for method in ("msa", "moba", "window", "random"):
            r = _coverage_row(method, pattern, top_k)
            cells.append(f"{r['recall_mean']:.3f} ({r['recall_vs_oracle_mean']:.2f})")
        lines.append(f"| {pattern} | {top_k} | {' | '.join(cells)} |")
    return "\n".join(lines)


TABLES: list[Table] = [
    Table("docs/coverage.md", "recall_16k", COVERAGE, _coverage_table),
    Table("docs/results.md", "published", "msa_lab/bench/analysis.py", _published_table),
    Table("docs/results.md", "selectors_128k", SELECTORS_128K, _selectors_table),
    Table("docs/results.md", "moba_block_sizes", MOBA_BLOCKS, _moba_blocks_table),
    Table("docs/training.md", "passkey_gpu", ABLATION, _passkey_table),
    Table("docs/training.md", "moba_grid_gpu", f"{GRID}, {ABLATION}", _moba_grid_table),
    Table("docs/training.md", "msa_grid_gpu", f"{GRID}, {ABLATION}", _msa_grid_table),
    Table("docs/results.md", "prefill_128k", PREFILL_128K, _prefill_128k_table),
    Table("docs/results.md", "stages_128k", PREFILL_128K, lambda: _stages_table(PREFILL_128K)),
    Table("docs/results.md", "prefill_1m", PREFILL_1M, _prefill_1m_table),
    Table("docs/results.md", "stages_1m", PREFILL_1M, lambda: _stages_table(PREFILL_1M)),
    Table("docs/results.md", "decode", DECODE, _decode_table),
]


# Claims of further docs live beside this file, one module per group of docs, each with its own
# CLAIMS and TABLES lists built from the helpers above.
# Run as a script this module is __main__; under its own name too, ``from claims import ...`` in
# the group modules finds it instead of running this file a second time.
sys.modules.setdefault("claims", sys.modules[__name__])
for _module in ("claims_training", "claims_kernels"):
    if (Path(__file__).resolve().parent / f"{_module}.py").is_file():
        _found = __import__(_module)
        CLAIMS += _found.CLAIMS
        TABLES += _found.TABLES


# --- checking and writing the docs -----------------------------------------------------------

def normalise(text: str) -> str:
    """Whitespace collapsed, so a claim may wrap across lines of the doc."""
    return re.sub(r"\s+", " ", text)


def table_block(name: str, body: str) -> str:
    return f"<!-- table:{name} -->\n{body.rstrip()}\n<!-- /table:{name} -->"


def table_pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- table:{re.escape(name)} -->\n.*?<!-- /table:{re.escape(name)} -->", re.S)


def write_tables() -> list[str]:
    changed = []
    for table in TABLES:
        path = ROOT / table.doc
        text = path.read_text()
        pattern = table_pattern(table.name)
        if not pattern.search(text):
            raise ValueError(f"{table.doc}: no <!-- table:{table.name} --> block to fill")
        new = pattern.sub(lambda _: table_block(table.name, table.render()), text)
        if new != text:
            path.write_text(new)
            changed.append(f"{table.doc}:{table.name}")
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="re-render every table block in the docs")
    args = parser.parse_args()
    if args.write:
        for name in write_tables():
            print(f"rewrote {name}")
    for claim in CLAIMS:
        print(f"{claim.doc}: {claim.rendered()!r}  <- {claim.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
