"""Tables from sweep rows: the dense baseline of each point and the speedups over it.

The baseline (SPEC) is the fastest exact dense attention of PyTorch SDPA in the same run:
the faster of the cuDNN and FlashAttention backends at the same shape on the same GPU
(``sdpa``, PyTorch's own pick, where neither was pinned, e.g. on the CPU). A ratio divides
two timings of one process only (SPEC): rows pair when their ``process`` ids match, and rows
written before processes were recorded pair only when their git revisions match as well, so
a point re-measured later by another process never forms a ratio with an older baseline.
"""

from __future__ import annotations

#: Published speedups over dense attention (SPEC, as reported, not re-measured here).
#: Published numbers drawn beside the measured speedups: ``measure`` says what each ratio is
#: ("wall-clock": dense time / sparse time; "flop": dense FLOPs / sparse FLOPs, no timing).
PUBLISHED = (
    dict(mode="prefill", method="msa", seq_len=1 << 20, speedup=14.2, measure="wall-clock",
         label="MSA paper: wall-clock 14.2x prefill at 1M (H800)"),
    dict(mode="prefill", method="msa", seq_len=1 << 20, speedup=28.4, measure="flop",
         label="MSA paper: compute (FLOP) ratio 28.4x at 1M"),
    dict(mode="decode", method="msa", seq_len=1 << 20, speedup=7.6, measure="wall-clock",
         label="MSA paper: wall-clock 7.6x decode at 1M (H800)"),
    dict(mode="prefill", method="moba", seq_len=1 << 20, speedup=6.5, measure="wall-clock",
         label="MoBA report: wall-clock 6.5x prefill at 1M"),
)
DENSE_BASELINES = ("sdpa_cudnn", "sdpa_flash", "sdpa")
#: Columns that identify a shape, and the process that timed it, for the baseline lookup.
#: A decode row timed as CUDA-graph replays pairs with a baseline timed the same way, a row
#: timed per synchronised call with one timed per call.
SHAPE = ("gpu", "process", "git_revision", "mode", "batch", "seq_len", "num_heads", "num_kv_heads",
         "head_dim", "dtype", "cuda_graph")


def totals(rows, status: str = "ok") -> list[dict]:
    return [r for r in rows if r.get("stage") == "total" and r.get("status") == status]


def dense_baselines(rows) -> dict[tuple, dict]:
    """The fastest SDPA row per shape."""
    best: dict[tuple, dict] = {}
    for r in totals(rows):
        if r["method"] == "full" and r["backend"] in DENSE_BASELINES:
            key = tuple(r.get(c) for c in SHAPE)
            if key not in best or r["median_ms"] < best[key]["median_ms"]:
                best[key] = r
    return best


def with_speedups(rows) -> list[dict]:
    """Copies of the finished whole-operator rows with ``dense_ms``, ``dense_backend`` and
    ``speedup`` (dense time / this time) where the same run has a dense baseline."""
    base = dense_baselines(rows)
    out = []
    for r in totals(rows):
        dense = base.get(tuple(r.get(c) for c in SHAPE))
        extra = {}
        if dense is not None:
            extra = dict(dense_ms=dense["median_ms"], dense_backend=dense["backend"],
                         speedup=dense["median_ms"] / r["median_ms"])
        out.append(dict(r, **extra))
    return out


def speedup_table(rows, seq_lens=None) -> str:
    """A Markdown table: every finished operator's median time and speedup, per length."""
    found = [r for r in with_speedups(rows) if seq_lens is None or r["seq_len"] in seq_lens]
    found.sort(key=lambda r: (r["mode"], r["seq_len"], r["method"] != "full", r["method"], r["median_ms"]))
    lines = ["| mode | N | method | backend | median ms | spread % | repeats | useful TFLOP/s | speedup vs dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in found:
        speed = f"{r['speedup']:.1f}x" if "speedup" in r else "–"
        lines.append(f"| {r['mode']} | {r['seq_len']:,} | {r['method']} | {r['backend']} | {r['median_ms']:.4g} | "
                     f"{r['spread_pct']:.1f} | {r['repeats']} | {r['tflops_useful']:.0f} | {speed} |")
    return "\n".join(lines)
