"""Streaming stores on and off, in one process: the cython backend's large outputs.

The cython kernels can write large outputs with non-temporal stores, which skip the
read-for-ownership of each output line (off by default: see FG_STREAM_MIN_BYTES in
fastgrad/_kernels_simd.h). This script times the same kernels with them on (outputs of
32 MiB and more) and off, alternating the two (and torch into out= as the peer), float32,
2^24 elements, two threads:

    python bench/stream_stores.py [--repeat 15]

Prints GB/s = (arrays read + written) x bytes / median time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: measure the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import numba
    import torch

    import fastgrad as fg
    from fastgrad import _kernels

    torch.set_num_threads(2)
    numba.set_num_threads(2)
    n = 1 << 24
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    g = np.ones_like(x)
    y = np.empty_like(x)
    rows, yrows = x.reshape(-1, 1024), y.reshape(-1, 1024)
    tx, tg, ty = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(y)
    txr, tyr = tx.view(-1, 1024), ty.view(-1, 1024)
    cases = {  # name: (fastgrad call, torch call, arrays moved)
        "identity fwd": (lambda: fg.identity_forward(x, out=y, backend="cython"),
                         lambda: ty.copy_(tx), 2),
        "relu fwd": (lambda: fg.relu_forward(x, out=y, backend="cython"),
                     lambda: torch.clamp_min(tx, 0, out=ty), 2),
        "sigmoid fwd": (lambda: fg.sigmoid_forward(x, out=y, backend="cython"),
                        lambda: torch.sigmoid(tx, out=ty), 2),
        "relu bwd": (lambda: fg.relu_backward(g, x=x, out=y, backend="cython"),
                     lambda: torch.ops.aten.threshold_backward(tg, tx, 0), 3),  # allocates
        "softmax fwd": (lambda: fg.softmax_forward(rows, out=yrows, backend="cython"),
                        lambda: torch.softmax(txr, 1, out=tyr), 2),
    }
    default = _kernels._set_stream_min_bytes(0)
    _kernels._set_stream_min_bytes(default)
    on = 32 << 20
    print(f"float32, n = 2^24, 2 threads; streamed: outputs of {on >> 20} MiB and more")
    for name, (fast, peer, arrays) in cases.items():
        fast()
        peer()
        times: dict[str, list[float]] = {"streamed": [], "ordinary": [], "torch": []}
        for _ in range(args.repeat):
            for label, threshold in (("streamed", on), ("ordinary", 1 << 62)):
                _kernels._set_stream_min_bytes(threshold)
                t0 = time.perf_counter()
                fast()
                times[label].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            peer()
            times["torch"].append(time.perf_counter() - t0)
        _kernels._set_stream_min_bytes(default)
        rates = {k: arrays * 4 * n / np.median(v) / 1e9 for k, v in times.items()}
        print(f"{name:14s} " + "  ".join(f"{k} {v:5.1f} GB/s" for k, v in rates.items())
              + f"  streamed/ordinary {rates['streamed'] / rates['ordinary']:.2f}x")


if __name__ == "__main__":
    main()
