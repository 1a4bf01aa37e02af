"""Benchmarks: GPU timing per the SPEC protocol, sweep configs and the runner, the cost
model, result files written as rows arrive, and tables of speedups."""

from .analysis import speedup_table, with_speedups
from .config import load_config, parse_config
from ..environment import gpu_environment
from .results import ResultRows
from .store import checkout_path, load_results
from .sweep import run_sweep
from .timing import bench_median, event_timed, time_call

__all__ = [
    "ResultRows",
    "bench_median",
    "checkout_path",
    "event_timed",
    "gpu_environment",
    "load_config",
    "load_results",
    "parse_config",
    "run_sweep",
    "speedup_table",
    "time_call",
    "with_speedups",
]
