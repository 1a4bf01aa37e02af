"""``msa-lab`` command line: ``msa-lab demo`` (more subcommands arrive with sweeps,
figures and training)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import COLUMNS, format_table, run_demo

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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as err:
        parser.exit(2, f"msa-lab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
