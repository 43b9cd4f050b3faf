"""Steps/s of the fused numba training epoch against a hand-written NumPy step, same process.

    python bench/fused_step.py [--threads N] [--repeat R]

SGD, ReLU hidden layers, softmax cross-entropy, float32, on random data. Each row times
whole epochs (median of R) and divides by the batches per epoch. "fused (order)" gathers
each batch through a shuffled order inside the kernel; "fused (no order)" trains on
X as given (each batch a view). Indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

from fastgrad.backends.numba_train import (
    FusedConfig,
    make_state,
    make_workspace,
    train_epoch,
)

# (layer sizes, batch, batches per epoch): the small data set is 4 MB, the medium 16 MB.
CASES = [((64, 64, 10), 32, 500), ((784, 256, 128, 10), 128, 40)]


def init(sizes, rng, dtype=np.float32):
    Ws = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(dtype)
          for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(b, dtype) for b in sizes[1:]]
    return Ws, bs


def numpy_epoch(X, Y, order, Ws, bs, B, lr):
    """The plain NumPy step, one batch at a time (what a user writes by hand)."""
    n = len(X)
    L = len(Ws)
    for start in range(0, n, B):
        idx = order[start:start + B]
        a = [X[idx]]
        for i in range(L - 1):
            a.append(np.maximum(a[-1] @ Ws[i] + bs[i], 0))
        z = a[-1] @ Ws[-1] + bs[-1]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        g = e / e.sum(axis=1, keepdims=True)
        y = Y[idx]
        g[np.arange(len(idx)), y] -= 1
        g /= len(idx)
        for i in range(L - 1, -1, -1):
            dW = a[i].T @ g
            db = g.sum(axis=0)
            if i > 0:
                g = (g @ Ws[i].T) * (a[i] > 0)
            Ws[i] -= lr * dW
            bs[i] -= lr * db


def median_time(fn, repeat):
    """Median wall and CPU (process) seconds of fn() after one warm-up call (the compile).
    CPU time is the steadier figure on a loaded machine (one BLAS thread)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def bench_case(sizes, B, steps, repeat, rng):
    n = B * steps
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    Y = rng.integers(0, sizes[-1], n).astype(np.int64)
    order = rng.permutation(n).astype(np.int64)
    cfg = FusedConfig(loss="cross_entropy", batch_size=B, optimizer="sgd", lr=0.01)
    ws = make_workspace(sizes, B, np.float32)
    Ws, bs = init(sizes, rng)
    rows = [("numpy step", median_time(
        lambda: numpy_epoch(X, Y, order, Ws, bs, B, 0.01), repeat))]
    for label, o in (("fused (order)", order), ("fused (no order)", None)):
        Ws, bs = init(sizes, rng)
        state = make_state(Ws, bs)
        rows.append((label, median_time(
            lambda o=o, Ws=Ws, bs=bs, state=state: train_epoch(X, Y, o, Ws, bs, state, cfg,
                                                               ws), repeat)))
    base = steps / rows[0][1][0]
    for label, (wall, cpu) in rows:
        print(f"| {'-'.join(map(str, sizes))} | {B} | {label} | {steps / wall:,.0f} | "
              f"{steps / cpu:,.0f} | {steps / wall / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # Numba's np.dot calls SciPy's OpenBLAS, a second library beside NumPy's: load it
    # before limiting, or threadpoolctl never sees it and its threads run unlimited.
    import scipy.linalg.cython_blas  # noqa: F401
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        print("threadpoolctl not installed: BLAS threads left as they are")
        limit = contextlib.nullcontext()
    rng = np.random.default_rng(0)
    print(f"BLAS threads: {args.threads}; medians of {args.repeat} epochs")
    print("| net | batch | method | steps/s (wall) | steps/s (CPU time) | x numpy (wall) |")
    print("|---|---|---|---|---|---|")
    with limit:
        for sizes, B, steps in CASES:
            bench_case(sizes, B, steps, args.repeat, rng)


if __name__ == "__main__":
    main()
