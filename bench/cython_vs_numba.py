"""The two compiled CPU backends side by side: every activation, forward and backward.

For each size (default 2^20 and 2^24 float32 elements; row-wise activations as rows of
1024) and each activation, times fastgrad.forward / fastgrad.backward into a preallocated
`out=` on the numba and cython backends (median of repeats, after a warm-up call that
also compiles Numba's kernels), and prints a markdown table: milliseconds, effective
bandwidth (bytes the pass must move: 2 arrays forward, 3 backward, 2 when backward needs
nothing saved) and that bandwidth as a percentage of a copy measured in the same run with
the same thread count (fastgrad._kernels' threaded identity kernel, a plain copy loop;
np.copyto's single-thread figure is printed too).

    python -m bench.cython_vs_numba [--sizes 20,24] [--repeats 0]

Numbers are only meaningful on a quiet machine (check `uptime`).
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import numpy as np

import fastgrad as fg
from fastgrad import _kernels

from .timing import median_seconds

BACKENDS = ("numba", "cython")


def copy_bandwidth(n: int, repeats: int) -> tuple[float, float]:
    """(np.copyto GB/s on one thread, threaded copy GB/s) for n float32 elements."""
    src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    nbytes = 2 * src.nbytes
    one = nbytes / median_seconds(lambda: np.copyto(dst, src), repeats) / 1e9
    k = _kernels.KERNELS["identity"]
    threads = _kernels.max_threads()
    many = nbytes / median_seconds(
        lambda: _kernels.activation_forward(k, src, dst, 0.0, 0.0, threads), repeats) / 1e9
    return one, many


def measure(n: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for spec in fg.ACTIVATIONS.values():
        shape = (n // 1024, 1024) if spec.rowwise else (n,)
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        y = fg.forward(spec, x, backend="numpy")
        out = np.empty_like(x)
        saved = {"x": x} if spec.needs == "x" else ({"y": y} if spec.needs == "y" else {})
        arrays_bwd = 3 if saved else 2
        for backend in BACKENDS:
            t_f = median_seconds(partial(fg.forward, spec, x, out=out, backend=backend),
                                 repeats)
            t_b = median_seconds(
                partial(fg.backward, spec, g, out=out, backend=backend, **saved), repeats)
            rows.append({"name": spec.name, "backend": backend, "n": n,
                         "fwd_s": t_f, "bwd_s": t_b,
                         "fwd_gbs": 2 * x.nbytes / t_f / 1e9,
                         "bwd_gbs": arrays_bwd * x.nbytes / t_b / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,24", help="log2 of the element counts")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls per case (0: 31 at 2^20 and below, 7 above)")
    args = parser.parse_args()
    print(f"fastgrad {fg.__version__}; cython OpenMP={_kernels.OPENMP}, "
          f"libmvec={_kernels.VECTOR_MATH}, threads={_kernels.max_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    for p in (int(s) for s in args.sizes.split(",")):
        n = 1 << p
        repeats = args.repeats or (31 if p <= 20 else 7)
        one, many = copy_bandwidth(n, repeats)
        print(f"### 2^{p} float32 elements: copy {one:.1f} GB/s (np.copyto, 1 thread), "
              f"{many:.1f} GB/s ({_kernels.max_threads()} threads)\n")
        print("| activation | pass | numba ms | numba GB/s | numba % copy | cython ms | "
              "cython GB/s | cython % copy | cython speedup |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = measure(n, repeats)
        by = {(r["name"], r["backend"]): r for r in rows}
        for name in fg.ACTIVATIONS:
            for pas in ("fwd", "bwd"):
                nb, cy = by[(name, "numba")], by[(name, "cython")]
                cells = []
                for r in (nb, cy):
                    cells += [f"{r[pas + '_s'] * 1e3:.2f}", f"{r[pas + '_gbs']:.1f}",
                              f"{100 * r[pas + '_gbs'] / many:.0f}%"]
                speedup = nb[pas + "_s"] / cy[pas + "_s"]
                print(f"| {name} | {pas} | " + " | ".join(cells) + f" | {speedup:.2f}x |")
        print()


if __name__ == "__main__":
    main()
