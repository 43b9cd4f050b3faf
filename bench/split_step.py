"""A/B of the fused epoch's matmul threading (issue #7), interleaved in one process:

- ``blas 2T``: every matmul one np.dot call on OpenBLAS's two threads (the kernel before);
- ``split``: BLAS held to one thread, the large matmuls split over two Numba threads by
  rows (numba_train._mm_split, split_min = SPLIT_MIN_MNK);
- ``blas 1T``: one thread for everything (the floor's other reference).

Steps/s of SGD (softmax cross-entropy, relu, float32), each block one epoch of `--batches`
batches, kept only when no other process ran meanwhile (bench/quiet.py); medians of the
kept blocks.

    python -m bench.split_step [--net medium|large] [--rounds 9]
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS, the one numba calls, joins threadpoolctl)
from threadpoolctl import ThreadpoolController

from bench.quiet import timed_quiet
from fastgrad.backends import numba_train as nt

NETS = {"medium": ((784, 256, 128, 10), 128), "large": ((784, 1024, 1024, 10), 512)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--net", choices=NETS, default="medium")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--any-load", action="store_true",
                   help="keep every block (e.g. under `nice -n -15`, when other processes "
                        "never leave both cores free)")
    args = p.parse_args()
    tol = float("inf") if args.any_load else 0.015
    sizes, B = NETS[args.net]
    n = B * args.batches
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    Y = rng.integers(0, sizes[-1], n).astype(np.int64)
    Ws = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
          for a, b in zip(sizes, sizes[1:])]
    bs = [np.zeros(b, np.float32) for b in sizes[1:]]
    state = nt.make_state(Ws, bs, "sgd")
    ws = nt.make_workspace(sizes, B, np.float32)
    labels, targets, order = nt._check_data(X, Y, None, sizes, np.dtype(np.float32),
                                            "cross_entropy")
    spec = nt.FusedConfig(loss="cross_entropy", batch_size=B).spec
    kernels = {False: nt._epoch_kernel(spec), True: nt._epoch_kernel(spec, True)}
    hp = (1e-3, 0.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.99)
    ctl = ThreadpoolController()

    def epoch(split: bool) -> None:
        nt._configure(ws, "cross_entropy", "sgd", B, False, hp, False, "pytorch",
                      nt.SPLIT_MIN_MNK if split else 0)
        nt._launch(kernels[split], X, order, labels, targets, tuple(Ws), tuple(bs), state, ws)

    modes = {"blas 2T": (2, False), "split": (1, True), "blas 1T": (1, False)}
    res: dict[str, list[float]] = {k: [] for k in modes}
    tries = 0
    for _ in range(args.rounds):
        for key, (threads, split) in modes.items():
            with ctl.limit(limits=threads, user_api="blas"):
                epoch(split)  # warm
                wall, t = timed_quiet(partial(epoch, split), tol)
            res[key].append(args.batches / wall)
            tries += t
    flop = 6 * B * sum(a * b for a, b in zip(sizes, sizes[1:]))
    print(f"{args.net} {'-'.join(map(str, sizes))} batch {B}, {flop / 1e6:.1f} MFLOP/step, "
          f"{tries / (len(modes) * args.rounds):.1f} blocks run per kept one")
    base = float(np.median(res["blas 2T"]))
    for key, v in res.items():
        med = float(np.median(v))
        print(f"  {key:8s} {med:8,.0f} steps/s  (x{med / base:.2f} of blas 2T; "
              f"spread {min(v):,.0f}-{max(v):,.0f})")


if __name__ == "__main__":
    main()
