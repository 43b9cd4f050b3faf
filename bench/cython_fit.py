"""fit's epoch runners, interleaved in one process: steps/s through `fastgrad.MLP(...).fit`.

    python -m bench.cython_fit [--repeat R] [--seconds S] [--medium]

Runners: the cython backend layer by layer (fit(fused=False)), the cython backend's fused
runner (fastgrad/_train.pxi), numba's fused runner. Timed as bench/mlp.py's
`fastgrad_trainer` / `_fit_cell` time the trainer: fit(X, y, epochs=E, batch_size=B,
optimizer="sgd", lr=0.01, shuffle=False, verbose=0, health=False) over 16 batches an
epoch, float32, ReLU, softmax cross-entropy, after an untimed first fit; E chosen so one
fit lasts about S seconds. The runners alternate within every repeat (A/B/C, A/B/C, ...),
and the medians over R repeats are reported, with each runner's ratio to the first.
--medium also runs 784-256-128-10 at batch 128 with one BLAS thread and with two (fit's
busy-machine check switched off for the two-thread run so it keeps two).
Indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastgrad as fg
from fastgrad import train

BATCHES = 16  # bench/mlp.py's BATCHES
RUNNERS = (("cython layers", "cython", False), ("cython fused", "cython", True),
           ("numba fused", "numba", True))


def make_fit(sizes, batch, backend, fused):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCHES * batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], BATCHES * batch)
    model = fg.MLP(list(sizes), "relu", dtype="float32", seed=0, backend=backend)

    def fit(epochs):
        h = model.fit(X, y, epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.01,
                      shuffle=False, verbose=0, health=False, fused=fused)
        assert h.runner == ("fused" if fused else "layers"), h.runner
    fit(3)  # compiles / loads caches (the block kernel too), builds workspaces: untimed
    return fit


def compare(sizes, batch, repeat, seconds, label):
    fits = {name: make_fit(sizes, batch, backend, fused) for name, backend, fused in RUNNERS}
    epochs = {}
    for name, fit in fits.items():
        t = time.perf_counter()
        fit(2)
        one = (time.perf_counter() - t) / 2
        epochs[name] = max(1, min(2000, int(seconds / max(one, 1e-6))))
    per_step = {name: [] for name in fits}
    for _ in range(repeat):
        for name, fit in fits.items():
            t = time.perf_counter()
            fit(epochs[name])
            per_step[name].append((time.perf_counter() - t) / (epochs[name] * BATCHES))
    base = statistics.median(per_step[RUNNERS[0][0]])
    print(f"{'-'.join(map(str, sizes))} batch {batch} ({label}):")
    for name, times in per_step.items():
        med = statistics.median(times)
        spread = (max(times) - min(times)) / med
        print(f"  {name:14s} {med * 1e6:8.2f} us/step {1 / med:10.0f} steps/s  "
              f"x{base / med:5.2f} vs {RUNNERS[0][0]}  (E={epochs[name]}, spread {spread:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--medium", action="store_true")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    compare((64, 64, 10), 32, args.repeat, args.seconds, "fit limits BLAS to 1 thread")
    if args.medium:
        with threadpool_limits(limits=1, user_api="blas"):
            compare((784, 256, 128, 10), 128, args.repeat, args.seconds, "1 BLAS thread")
        busy = train.machine_busy
        train.machine_busy = lambda: False  # keep two threads even on a loaded machine
        try:
            with threadpool_limits(limits=2, user_api="blas"):
                compare((784, 256, 128, 10), 128, args.repeat, args.seconds,
                        "2 BLAS threads")
        finally:
            train.machine_busy = busy


if __name__ == "__main__":
    main()
