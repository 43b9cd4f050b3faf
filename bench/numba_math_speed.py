"""The numba backend's activations before and after numba_math, against copy bandwidth.

    python bench/numba_math_speed.py [--log2n 24] [--repeat 7]

(from the repository root; with fastgrad not installed, as PYTHONPATH=. python ...).

float32, 2^log2n elements, into a preallocated output. "before": the same loops compiled
with libm's scalar math.* and Python-float (float64) literals, as the backend was before
numba_math; "after": the backend's kernels (vectorizable math, float32 constants). Each
with one thread (the serial loop) and with the backend's threads (its prange loop, at
numba.get_num_threads()). Bandwidth counts the bytes each kernel must move: forward reads
x and writes y (8 bytes per element), backward reads the saved array and the gradient and
writes the result (12). The ceilings, measured in the same process: np.copyto (one
thread) and a prange copy (all threads). Medians of --repeat timed calls after a warm-up;
the spread (max/min - 1) is printed so noise can be told from a difference.
"""

from __future__ import annotations

import argparse
import os
import platform

import numba
import numpy as np
from numba import njit, prange

from bench.timing import call_times
from fastgrad.activations import ACTIVATIONS
from fastgrad.backends import numba_cpu

CASES = [("sigmoid", {}), ("tanh", {}), ("elu", {"alpha": 1.0}), ("swish", {"beta": 1.0}),
         ("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}),
         ("softplus", {})]


@njit(parallel=True, nogil=True)
def _parallel_copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median seconds, spread max/min - 1) of `repeat` calls after one warm-up."""
    times = call_times(fn, repeat)
    return float(np.median(times)), max(times) / min(times) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, n = 2^{args.log2n}")
    copy1, sp1 = timed(lambda: np.copyto(out, x), args.repeat)
    copyn, spn = timed(lambda: _parallel_copy(x, out), args.repeat)
    bw1, bwn = 2 * x.nbytes / copy1 / 1e9, 2 * x.nbytes / copyn / 1e9
    print(f"copy: 1 thread {bw1:.1f} GB/s (spread {sp1:.0%}), "
          f"{numba.get_num_threads()} threads {bwn:.1f} GB/s (spread {spn:.0%})\n")
    print("| kernel | pass | before 1t | after 1t | after 1t % copy | before Nt | after Nt "
          "| after Nt % copy | speed-up Nt |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, params in CASES:
        spec = ACTIVATIONS[name]
        a, b = (np.float32(v) for v in spec.encoded(params))
        label = name + ("(tanh)" if params.get("approximate") == "tanh" else "")
        saved = x
        if spec.needs == "y":
            saved = np.empty_like(x)
            numba_cpu._kernels(spec, x.dtype)["forward"][1](x, saved, a, b)
        row = {}
        for variant, kernels in (("before", numba_cpu._make_elementwise(
                spec, x.dtype, vector_math=False)), ("after", numba_cpu._kernels(
                spec, x.dtype))):
            for threads, idx in (("1t", 0), ("Nt", 1)):
                row["forward", variant, threads] = timed(
                    _call(kernels["forward"][idx], x, out, a, b), args.repeat)
                row["backward", variant, threads] = timed(
                    _call(kernels["backward"][idx], saved, g, out, a, b), args.repeat)
        for pass_, nbytes in (("forward", 8 * n), ("backward", 12 * n)):
            print(_table_row(label, pass_, nbytes, row, bw1, bwn), flush=True)


def _call(kernel, *args):
    return lambda: kernel(*args)


def _table_row(label, pass_, nbytes, row, bw1, bwn) -> str:
    def ms(v, t):
        med, spread = row[pass_, v, t]
        return f"{med * 1e3:.1f} ms (±{spread:.0%})"

    def pct(t, ceiling):
        return f"{nbytes / row[pass_, 'after', t][0] / 1e9 / ceiling:.0%}"

    speedup = row[pass_, "before", "Nt"][0] / row[pass_, "after", "Nt"][0]
    return (f"| {label} | {pass_} | {ms('before', '1t')} | {ms('after', '1t')} | "
            f"{pct('1t', bw1)} | {ms('before', 'Nt')} | {ms('after', 'Nt')} | "
            f"{pct('Nt', bwn)} | {speedup:.1f}x |")

if __name__ == "__main__":
    main()
