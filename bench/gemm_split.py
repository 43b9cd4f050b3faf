"""Prototype (issue #7): one BLAS call on OpenBLAS's two threads against two one-thread
BLAS calls run at once by two Numba threads on halves of the product (no reduction).

Every product of the medium (784-256-128-10, batch 128) and large (784-1024-1024-10,
batch 512) MLP steps, float32, timed from compiled code (as the fused epoch calls them):

- ``np.dot 2T``: numba's np.dot (SciPy's OpenBLAS), BLAS on 2 threads;
- ``np.dot 1T``: the same, BLAS limited to 1 thread;
- ``split cols`` / ``split rows``: bench.numba_blas.gemm_split(_rows), BLAS on 1
  thread, each Numba thread one half of the output's columns / rows.

Blocks of calls (~`--ms` each) of each method alternate, `--rounds` times; the table gives
each method's median over rounds of the block's time per call. Two-thread timings mean
something only on an idle machine (check the load average before and after): a two-thread
call stalls whenever another process holds one of its cores. (A filter that kept only the
blocks during which /proc/stat showed no other process running was tried and let disturbed
blocks through: clock-tick accounting is too coarse for 40 ms blocks.)

    python -m bench.gemm_split [--rounds 7] [--ms 40] [--only fwd]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS, the one numba calls, joins threadpoolctl)
from numba import get_num_threads, njit
from threadpoolctl import ThreadpoolController

from .numba_blas import gemm, gemm_split, gemm_split_rows


@njit(cache=True, nogil=True)
def _loop_dot(a, b, out, reps):
    for _ in range(reps):
        np.dot(a, b, out)


@njit(cache=True, nogil=True)
def _loop_split(a, b, out, reps, rows):
    for _ in range(reps):
        if rows:
            gemm_split_rows(a, b, out, 0.0, 2)
        else:
            gemm_split(a, b, out, 0.0)


def products(B, sizes, rng):
    """(name, a, b, out) for every product of one step with hidden layers' fwd/back."""
    out = []
    for i in range(len(sizes) - 1):
        d_in, d_out = sizes[i], sizes[i + 1]
        if d_in * d_out < 10_000:  # the output layer: small, never split
            continue
        h = rng.standard_normal((B, d_in)).astype(np.float32)
        W = rng.standard_normal((d_in, d_out)).astype(np.float32)
        g = rng.standard_normal((B, d_out)).astype(np.float32)
        out.append((f"fwd  {B}x{d_in} @ {d_in}x{d_out}", h, W, np.empty((B, d_out), np.float32)))
        out.append((f"dW   {d_in}x{B} @ {B}x{d_out}", h.T, g, np.empty((d_in, d_out), np.float32)))
        if i > 0:
            out.append((f"dx   {B}x{d_out} @ {d_out}x{d_in}", g, W.T,
                        np.empty((B, d_in), np.float32)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--ms", type=float, default=40.0, help="length of one timed block")
    p.add_argument("--only", default="", help="only the products whose name holds this")
    args = p.parse_args()
    # Start Numba's thread pool: _loop_split, a cached caller of the parallel splits,
    # crashes when loaded from the disk cache before the pool runs (numba_blas's docstring).
    get_num_threads()
    ctl = ThreadpoolController()
    rng = np.random.default_rng(0)
    cases = products(128, (784, 256, 128, 10), rng) + products(512, (784, 1024, 1024, 10), rng)
    print("| product | MFLOP | np.dot 2T µs | np.dot 1T µs | split cols µs | split rows µs "
          "| 2T GFLOP/s | cols GFLOP/s | rows GFLOP/s | best split / 2T |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, a, b, out in cases:
        if args.only not in name:
            continue
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for fn in (gemm_split, partial(gemm_split_rows, parts=2), gemm):  # correct first
            out[:] = 0
            fn(a, b, out, 0.0)
            assert np.allclose(out, ref, rtol=1e-4, atol=1e-3), name
        flop = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        reps = max(1, int(args.ms * 1e-3 * 150e9 / flop))
        runs = {
            "2T": (2, partial(_loop_dot, a, b, out, reps)),
            "1T": (1, partial(_loop_dot, a, b, out, reps)),
            "cols": (1, partial(_loop_split, a, b, out, reps, False)),
            "rows": (1, partial(_loop_split, a, b, out, reps, True)),
        }
        res = {k: [] for k in runs}
        for _ in range(args.rounds):  # interleaved: every method sees the same machine
            for key, (threads, block) in runs.items():
                with ctl.limit(limits=threads, user_api="blas"):
                    block()  # warm: the pools and the caches
                    t0 = time.perf_counter()
                    block()
                    res[key].append((time.perf_counter() - t0) / reps)
        med = {k: float(np.median(v)) * 1e6 for k, v in res.items()}
        gf = {k: flop / v / 1e3 for k, v in med.items()}
        best = min(med["cols"], med["rows"])
        print(f"| {name} | {flop / 1e6:.1f} | {med['2T']:.0f} | {med['1T']:.0f} | "
              f"{med['cols']:.0f} | {med['rows']:.0f} | {gf['2T']:.0f} | {gf['cols']:.0f} | "
              f"{gf['rows']:.0f} | {med['2T'] / best:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
