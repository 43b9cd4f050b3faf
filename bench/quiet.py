"""Timing on a shared machine: keep only the measurements during which no other process ran.

`foreign_cpu()` is a probe around a timed block: it reads the machine's busy CPU time
(/proc/stat) and this process's own (os.times) before and after; the block was quiet when
the difference, the CPU time other processes took meanwhile, is under one clock tick.
Two-thread timings need both cores free: a block during which another process held a core
for even a few milliseconds is discarded instead of averaged in. Linux only (elsewhere every
block counts as quiet).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_s() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


def timed_quiet(block: Callable[[], None], tolerance_s: float = 1.5 / _TICK,
                tries: int = 50) -> tuple[float, int]:
    """(wall seconds of one run of `block` during which other processes took less than
    `tolerance_s` of CPU, the number of runs it took); after `tries` runs without a quiet
    one, the fastest run's time (and tries)."""
    best = float("inf")
    for attempt in range(1, tries + 1):
        b0, o0 = _busy_s(), _own_s()
        t0 = time.perf_counter()
        block()
        wall = time.perf_counter() - t0
        foreign = (_busy_s() - b0) - (_own_s() - o0)
        if foreign < tolerance_s:
            return wall, attempt
        best = min(best, wall)
    return best, tries
