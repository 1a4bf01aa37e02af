"""GPU timing per the benchmark protocol: CUDA events, after a warm-up, medians with spread."""

from __future__ import annotations

import statistics

import torch


def bench_median(fn, warmup_ms: int = 100, rep_ms: int = 500) -> dict:
    """For calls of milliseconds: ``triton.testing.do_bench`` (events, L2 flushed between
    runs), median and 20th/80th percentiles in ms."""
    import triton

    ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return dict(median_ms=ms[0], p20_ms=ms[1], p80_ms=ms[2])


def event_timed(fn, repeats: int = 5, warmup: bool = True) -> dict:
    """For calls of seconds: ``repeats`` event-timed runs after one warm-up run; median,
    min and max in ms."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return dict(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times), repeats=repeats)
