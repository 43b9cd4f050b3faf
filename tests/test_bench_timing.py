"""bench/timing.py: interleaved measurement takes its batches in rounds, every callable
once per round, with the batch sizes calibrated per callable."""

from __future__ import annotations

import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it lives beside the package
    sys.path.insert(0, str(ROOT))

from bench.timing import Budget, measure_interleaved  # noqa: E402


def test_measure_interleaved_times_in_rounds():
    calls = []

    def make(key, seconds):
        def fn():
            calls.append(key)
            time.sleep(seconds)
        return fn

    budget = Budget(warmup=1, repeat=3, min_time=0.004)
    stats = measure_interleaved({"slow": make("slow", 0.002), "fast": make("fast", 0.0005)},
                                budget, pause=0)
    assert set(stats) == {"slow", "fast"}
    assert all(len(s.times) == 3 for s in stats.values())
    # the fast one needs more calls per batch to last min_time
    assert stats["fast"].number > stats["slow"].number >= 2
    assert stats["slow"].median > stats["fast"].median
    # after calibration, the timed batches alternate: slow's batch, then fast's, 3 times
    timed = calls[-3 * (stats["slow"].number + stats["fast"].number):]
    runs = [k for i, k in enumerate(timed) if i == 0 or timed[i - 1] != k]
    assert runs == ["slow", "fast"] * 3


def test_ab_fit_runs_both_checkouts_in_fresh_processes(capsys):
    """bench.ab_fit with the fastgrad this Python imports on both sides (CI's is installed,
    without an in-place extension): one pair of the small fit, a rate from each process."""
    from bench import ab_fit
    ab_fit.main(["--old", str(ab_fit.imported_fastgrad()), "--pairs", "1",
                 "--seconds", "0.05"])
    out = capsys.readouterr().out
    assert "pair 1: old" in out and "median: old" in out
    old, new = (float(v.replace(",", "")) for v in out.split("median: old")[1].split()[0:3:2])
    assert old > 0 and new > 0
