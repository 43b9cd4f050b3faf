"""Timing: warm-ups, repeats calibrated to a minimum duration, medians with the spread.

One `measure` is used by every section so all rows are timed the same way: the callable
runs `warmup` times untimed, then `repeat` timed batches of `number` calls each, where
`number` is chosen so one batch lasts at least `min_time` seconds (timer resolution and
call overhead then stay below 1%). The result keeps the per-call time of every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Per-call times (seconds) of `repeat` batches, and their summary."""

    times: tuple[float, ...]
    number: int

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.times, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.times, 75))

    @property
    def min(self) -> float:
        return float(min(self.times))

    @property
    def max(self) -> float:
        return float(max(self.times))

    @property
    def spread(self) -> float:
        """Relative spread: (max - min) / median over the repeats (0 with one repeat)."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0


@dataclass(frozen=True)
class Budget:
    """How hard to measure: warm-up calls, timed batches, minimum seconds per batch."""

    warmup: int
    repeat: int
    min_time: float


FULL = Budget(warmup=2, repeat=9, min_time=0.05)
QUICK = Budget(warmup=1, repeat=3, min_time=0.002)


def measure(fn: Callable[[], object], budget: Budget, *, max_number: int = 1_000_000) -> Stats:
    """Time fn() (no arguments; it must finish its own work, e.g. block_until_ready)."""
    for _ in range(budget.warmup):
        fn()
    number = 1
    while True:  # calibrate: double the batch until it lasts min_time
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= budget.min_time or number >= max_number:
            break
        number = min(max_number, number * 2 if elapsed <= 0 else
                     max(number * 2, int(number * budget.min_time / elapsed * 1.2)))
    times = []  # the calibration batches are warm-up too: none of them is kept
    for _ in range(budget.repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return Stats(tuple(times), number)


def call_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` single calls of fn() after `warmup` untimed ones: the
    plain timer of the one-finding scripts (compare.py's sections use `measure`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median of `call_times`."""
    return float(np.median(call_times(fn, repeats, warmup)))


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant digits readable."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_stats(stats: Stats) -> str:
    """'median (min-max, ±spread%)' of the per-call time."""
    return (f"{fmt_time(stats.median)} ({fmt_time(stats.min)}–{fmt_time(stats.max)}, "
            f"±{stats.spread * 50:.0f}%)")
