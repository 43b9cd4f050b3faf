"""Where do threads pay for the cython backend's elementwise kernels?

Times each kernel serial (nthreads=1) and threaded (nthreads=N, default 2) over sizes
2^10..2^20 (float32, preallocated output, median of repeats) and prints the speedup, so
the thresholds PARALLEL_MIN_TRANSCENDENTAL / PARALLEL_MIN_MEMORY in fastgrad/_kernels.pyx
can be set where the speedup crosses 1. Indicative only on a shared machine.

    python -m bench.thread_threshold [--threads 2] [--kernels sigmoid,gelu,relu,identity]
"""

from __future__ import annotations

import argparse

import numpy as np

from fastgrad import _kernels

from .timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", default="sigmoid,gelu,tanh,relu,identity")
    args = parser.parse_args()
    print(f"| kernel | n | serial µs | {args.threads} threads µs | speedup |")
    print("|---|---|---|---|---|")
    for name in args.kernels.split(","):
        k = _kernels.KERNELS[name]
        for p in range(10, 21):
            n = 1 << p
            x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
            out = np.empty_like(x)
            repeats = max(20, min(2000, (1 << 24) // n))
            ts = [median_seconds(lambda t=t, k=k, x=x, out=out: _kernels.activation_forward(
                k, x, out, 1.0, 0.0, t), repeats, warmup=0) for t in (1, args.threads)]
            print(f"| {name} | 2^{p} | {ts[0] * 1e6:.1f} | {ts[1] * 1e6:.1f} | "
                  f"{ts[0] / ts[1]:.2f} |")


if __name__ == "__main__":
    main()
