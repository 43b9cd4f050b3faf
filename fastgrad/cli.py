"""The `fastgrad` command line."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    import fastgrad as fg

    rng = np.random.default_rng(0)
    x = rng.standard_normal(1 << 20).astype(np.float32)
    print(f"fastgrad {fg.__version__}; backends (fastest first): {fg.available_backends()}")
    for backend in fg.available_backends():
        fg.sigmoid_forward(x[:8], backend=backend)  # compile / warm up
        t = time.perf_counter()
        fg.sigmoid_forward(x, backend=backend)
        ms = (time.perf_counter() - t) * 1e3
        print(f"  sigmoid_forward on 2^20 float32 with {backend:>6}: {ms:7.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the kernels once on each backend").set_defaults(
        func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
