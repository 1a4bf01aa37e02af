"""Timing per the benchmark protocol: warm-up first, then repeats timed with CUDA events
(or CUDA-graph replays, or the wall clock on the CPU); medians with their spread."""

from __future__ import annotations

import statistics
import time

import torch

#: Bytes written between timed CUDA runs so no run starts with the previous run's data in
#: L2 (the H100/H200 L2 is 50 MB): the same effect as rotating inputs.
L2_FLUSH_BYTES = 256 << 20
#: Short calls are repeated until about this much time is spent (and at most MAX_REPEATS).
TARGET_SECONDS = 1.0
MAX_REPEATS = 2000
#: Untimed calls before the timed ones (SPEC: at least 3): compilation and autotuning, cuDNN
#: plans and the caching allocator's first carve-up all happen in the first calls.
WARMUP_CALLS = 3
#: Floor for slow calls (a dense 1M-token prefill takes ~38 s on an H200): a spread needs
#: more than one run.
MIN_REPEATS = 3


def _summary(times_ms: list[float], how: str) -> dict:
    ordered = sorted(times_ms)
    quart = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    median = statistics.median(ordered)
    return dict(median_ms=median, min_ms=ordered[0], max_ms=ordered[-1], p25_ms=quart[0],
                p75_ms=quart[2], spread_pct=100.0 * (quart[2] - quart[0]) / median if median else 0.0,
                repeats=len(ordered), warmup=WARMUP_CALLS, timing=how)


def _cuda_graph(fn):
    """``fn`` captured in a CUDA graph (after a warm-up run): replays skip launch
    overheads, as a decode loop would."""
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # capture needs a side stream warmed up first
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay


def time_call(fn, device: str, *, repeats: int = 20, max_seconds: float = 120.0,
              cuda_graph: bool = False, synchronised: bool = False) -> dict:
    """Time ``fn()``: ``WARMUP_CALLS`` untimed runs (compilation, autotuning, caches), then at least
    ``repeats`` timed runs; more for short calls (about ``TARGET_SECONDS`` in all, at most a
    quarter of ``max_seconds``), fewer
    for slow ones so that a point stays near ``max_seconds`` (never fewer than
    ``MIN_REPEATS``). The first timed run sizes the count; the result says how many ran.

    ``cuda_graph``: time replays of ``fn`` captured in a CUDA graph (no launch overheads).
    ``synchronised``: wait for the GPU to be idle before each run, so the run's time includes
    its own launch overheads and host work, as a loop of single calls sees them (decode without
    graphs); otherwise runs are queued back to back and the CPU launches ahead.

    Returns median, min, max, quartiles (ms), ``spread_pct`` (interquartile range over the
    median), ``repeats``, ``warmup`` and ``timing`` (how the runs were timed)."""
    if cuda_graph and synchronised:
        raise ValueError("time_call: cuda_graph and synchronised exclude each other (a replay has no launches)")
    if device != "cuda":
        _warm_up(fn)

        def wall_ms():
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3

        times = [wall_ms()]
        times += [wall_ms() for _ in range(_repeat_count(times[0] / 1e3, repeats, max_seconds) - 1)]
        return _summary(times, "wall clock")
    if cuda_graph:
        fn = _cuda_graph(fn)
    _warm_up(fn)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    events = []

    def timed_run():
        flush.zero_()
        if synchronised:
            torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))

    timed_run()
    torch.cuda.synchronize()
    for _ in range(_repeat_count(events[0][0].elapsed_time(events[0][1]) / 1e3, repeats, max_seconds) - 1):
        timed_run()
    torch.cuda.synchronize()
    how = "cuda graph replay" if cuda_graph else ("cuda events, synchronised per call" if synchronised
                                                  else "cuda events")
    return _summary([s.elapsed_time(e) for s, e in events], how)


def _warm_up(fn) -> None:
    for _ in range(WARMUP_CALLS):
        fn()


def _repeat_count(first_seconds: float, repeats: int, max_seconds: float) -> int:
    first_seconds = max(first_seconds, 1e-6)
    if first_seconds * repeats > max_seconds:
        return max(MIN_REPEATS, int(max_seconds / first_seconds))
    target = min(TARGET_SECONDS, max_seconds / 4)  # a point has several stages to time
    return min(MAX_REPEATS, max(repeats, int(target / first_seconds)))


def bench_median(fn, warmup_ms: int = 100, rep_ms: int = 500) -> dict:
    """For calls of milliseconds: ``triton.testing.do_bench`` (events, L2 flushed between
    runs), median and 20th/80th percentiles in ms."""
    import triton

    ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return dict(median_ms=ms[0], p20_ms=ms[1], p80_ms=ms[2])


def event_timed(fn, repeats: int = 5, warmup: bool = True) -> dict:
    """For calls of seconds: ``repeats`` event-timed runs after ``WARMUP_CALLS`` warm-up
    runs; median, min and max in ms."""
    if warmup:
        _warm_up(fn)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return dict(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times), repeats=repeats)
