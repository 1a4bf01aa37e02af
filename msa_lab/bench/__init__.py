"""Benchmark helpers: GPU timing per the SPEC protocol and result rows written as they come."""

from .results import ResultRows, gpu_environment
from .timing import bench_median, event_timed

__all__ = ["ResultRows", "bench_median", "event_timed", "gpu_environment"]
