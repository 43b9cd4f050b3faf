"""Timing: warm-ups, repeats calibrated to a minimum duration, medians with the spread.

One `measure` is used by every section so all rows are timed the same way: the callable
runs `warmup` times untimed, then `repeat` timed batches of `number` calls each, where
`number` is chosen so one batch lasts at least `min_time` seconds (timer resolution and
call overhead then stay below 1%). The result keeps the per-call time of every batch.
`measure_interleaved` times several callables that way in rounds, one batch of each in
turn (section 2, whose ratios between implementations must survive the host's drift).
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


def calibrate(fn: Callable[[], object], budget: Budget, *, max_number: int = 1_000_000
              ) -> int:
    """Runs fn `budget.warmup` times, then doubles a batch of calls until one lasts
    `budget.min_time`; returns that batch's size (the calibration batches are warm-up too:
    none of them is kept)."""
    for _ in range(budget.warmup):
        fn()
    number = 1
    while True:
        elapsed = time_batch(fn, number) * number
        if elapsed >= budget.min_time or number >= max_number:
            return number
        number = min(max_number, number * 2 if elapsed <= 0 else
                     max(number * 2, int(number * budget.min_time / elapsed * 1.2)))


def time_batch(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of one batch of `number` calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def measure(fn: Callable[[], object], budget: Budget, *, max_number: int = 1_000_000) -> Stats:
    """Time fn() (no arguments; it must finish its own work, e.g. block_until_ready)."""
    number = calibrate(fn, budget, max_number=max_number)
    return Stats(tuple(time_batch(fn, number) for _ in range(budget.repeat)), number)


def measure_interleaved(fns: dict, budget: Budget, *, pause: float = 0.005) -> dict:
    """{key: Stats} for {key: fn}, timed in rounds: each round times one batch of every fn
    in turn, so a change of the machine's state (a burst of memory bandwidth from a quiet
    neighbour, a busy minute) falls on all of them alike instead of on whichever was
    measured then. `pause` seconds between two fns let the last one's thread pool go idle."""
    numbers = {}
    for key, fn in fns.items():
        numbers[key] = calibrate(fn, budget)
        time.sleep(pause)
    times: dict = {key: [] for key in fns}
    for _ in range(budget.repeat):
        for key, fn in fns.items():
            times[key].append(time_batch(fn, numbers[key]))
            time.sleep(pause)
    return {key: Stats(tuple(times[key]), numbers[key]) for key in fns}


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
