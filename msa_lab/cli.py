"""``msa-lab`` command line: ``demo`` (full vs MoBA vs MSA on generated data), ``sweep``
(run or resume a benchmark or coverage grid from a config), ``figures`` (rebuild the
paper figures from committed results, or draw a sweep's results), ``train`` and ``ablate``
(train TinyLMs with full, MoBA or MSA attention on generated tasks)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device: expected cpu or cuda (or cuda:N), got {device!r}") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda (or cuda:N), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here; use --device cpu")


def _demo(args) -> int:
    from .demo import COLUMNS, format_table, run_demo

    _check_device(args.device)
    rows = run_demo(out_dir=args.out, seq_len=args.seq_len, num_heads=args.heads,
                    num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                    block_size=args.block_size, top_k=args.top_k, seed=args.seed,
                    device=args.device, progress=not args.quiet)
    print(format_table(rows, COLUMNS))
    by_pattern = [key for key in rows[-1] if key.startswith("recall[")]
    print("\nmean recall by the planted pattern of each KV group:")
    print(format_table(rows[1:], ["method", *by_pattern]))
    print(f"\nwrote {args.out}/coverage.csv, summary.json and demo.html (open it in a browser)")
    print("recall = share of the full-attention mass on the selected tokens; "
          "output_error = ||o_sparse - o_full|| / ||o_full||")
    return 0


def _sweep(args) -> int:
    from .bench.config import load_config
    from .bench.sweep import run_sweep

    config = load_config(args.config, check_device=not args.dry_run)
    if args.dry_run:
        for p in config.points:
            print(p.point_id, p.describe())
        print(f"{len(config.points)} points; the config is valid")
        return 0
    redo = None
    if args.redo:
        bad = [item for item in args.redo if "=" not in item]
        if bad:
            raise ValueError(f"--redo takes KEY=VALUE filters, got {bad[0]!r}")
        redo = dict(item.split("=", 1) for item in args.redo)
    path = run_sweep(args.config, args.out, retry_failed=args.retry_failed, redo=redo,
                     max_minutes=args.max_minutes, progress=not args.quiet)
    print(f"results: {path}\ndraw them with: msa-lab figures {shlex.quote(str(path.parent))}"
          f" (writes {shlex.quote(str(_figures_folder(path.parent)))})")
    return 0


def _figures_folder(results) -> Path:
    """Where ``msa-lab figures RESULTS`` writes without ``--out``: ``figures/`` in the folder
    of the results."""
    results = Path(results)
    return (results if results.is_dir() else results.parent) / "figures"


def _figures(args) -> int:
    if not args.results:  # the paper figures, from committed results
        from .viz.paper import write_paper_figures

        paths = write_paper_figures(args.out or "figures/paper", args.format or ("png", "svg", "pdf"),
                                    results_dir=args.results_dir, only=args.only, progress=not args.quiet)
        for path in paths:
            print(path)
        return 0
    if args.only or args.results_dir:
        raise ValueError("--only and --results-dir are for the paper figures (msa-lab figures without results)")
    if args.out is None and len(args.results) > 1:
        raise ValueError("--out: give a folder for the figures of several results")
    from .viz.sweeps import write_sweep_figures

    out = args.out if args.out is not None else _figures_folder(args.results[0])
    paths = write_sweep_figures(args.results, out, formats=args.format or ("html",), prefix=args.prefix)
    for path in paths:
        print(path)
    return 0


def _train(args) -> int:
    from .train import load_run_config, run_training

    cfg = load_run_config(args.config)
    if args.steps is not None:
        cfg["train"]["steps"] = args.steps
    out = run_training(cfg, args.out, progress=not args.quiet)
    summary = out / "summary.json"
    if summary.exists():
        import json

        for row in json.loads(summary.read_text())["eval"]:
            depth = f" depth {row['depth']}" if "depth" in row else ""
            print(f"N={row['seq_len']}{depth}: exact match {row['exact_match']:.3f}, "
                  f"token accuracy {row['token_accuracy']:.3f}, loss {row['loss']:.3f}")
    print(f"results: {out} (metrics.jsonl, summary.json, checkpoint.pt; re-run to resume)")
    return 0


def _ablate(args) -> int:
    from .train import run_ablation

    out = run_ablation(args.config, args.out, progress=not args.quiet, jobs=args.jobs, only=args.runs,
                       seeds=args.seeds)
    print((out / "summary.md").read_text())
    print(f"results: {out} (one folder per run; re-run to resume)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="msa-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="full vs MoBA vs MSA on generated long-context data")
    demo.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    demo.add_argument("--seq-len", type=int, default=8192)
    demo.add_argument("--heads", type=int, default=8, help="query heads")
    demo.add_argument("--kv-heads", type=int, default=4, help="KV heads (GQA groups)")
    demo.add_argument("--head-dim", type=int, default=64)
    demo.add_argument("--block-size", type=int, default=128)
    demo.add_argument("--top-k", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu", help="cpu or cuda")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)
    sweep = sub.add_parser("sweep", help="run or resume a benchmark sweep from a YAML config")
    sweep.add_argument("config", help="a config file, e.g. experiments/configs/tiny_cpu.yaml")
    sweep.add_argument("--out", default=None, help="output folder (default: results/sweeps/<name>)")
    sweep.add_argument("--retry-failed", action="store_true", help="re-run points that failed or ran out of memory")
    sweep.add_argument("--redo", nargs="+", metavar="KEY=VALUE",
                       help="re-measure finished points matching all filters, e.g. --redo method=msa seq_len=1048576")
    sweep.add_argument("--max-minutes", type=float, default=None,
                       help="start no new point after this many minutes (re-run to resume)")
    sweep.add_argument("--dry-run", action="store_true", help="check the config and list its points")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(run=_sweep)
    figures = sub.add_parser("figures", help="rebuild every paper figure from committed results, or draw the "
                                             "figures of given sweep results")
    figures.add_argument("results", nargs="*", help="results folders or results.jsonl files (none: the paper figures)")
    figures.add_argument("--out", default=None, help="folder for the figures (default: figures/paper for the "
                                                       "paper figures, <results folder>/figures for one results)")
    figures.add_argument("--format", nargs="+", default=None, choices=["html", "png", "svg", "pdf"],
                         help="formats to write (default: png svg pdf for the paper figures, html for results; "
                              "png/svg/pdf need kaleido and Chrome/Chromium)")
    figures.add_argument("--only", nargs="+", metavar="NAME", help="paper figures: only these (names in figures.md)")
    figures.add_argument("--results-dir", default=None,
                         help="paper figures: the sweeps folder to read (default: experiments/results/sweeps); "
                              "the training figures always read experiments/results/train")
    figures.add_argument("--quiet", action="store_true", help="no progress bar")
    figures.add_argument("--prefix", default="", help="start every file name with this (several sweeps, one folder)")
    figures.set_defaults(run=_figures)
    train = sub.add_parser("train", help="train a TinyLM on a generated task from a YAML config (resumes)")
    train.add_argument("config", help="e.g. experiments/configs/train_smoke_cpu.yaml")
    train.add_argument("--out", default=None, help="output folder (default: results/train/<name>)")
    train.add_argument("--steps", type=int, default=None, help="override train.steps")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)
    ablate = sub.add_parser("ablate", help="run every entry of a config's runs: list and tabulate them")
    ablate.add_argument("config", help="e.g. experiments/configs/train_smoke_cpu.yaml")
    ablate.add_argument("--out", default=None, help="output folder (default: results/ablate/<name>)")
    ablate.add_argument("--runs", nargs="+", metavar="NAME", default=None, help="only these runs of the config")
    ablate.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="train every run once per seed (overrides the config's seeds)")
    ablate.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, one process each (a small model leaves a GPU mostly idle)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(run=_ablate)
    args = parser.parse_args(argv)
    from .files import FolderLocked

    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, FolderLocked) as err:  # bad input, a folder in use or read-only
        parser.exit(2, f"msa-lab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
