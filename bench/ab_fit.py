"""Two checkouts of fastgrad, alternating in separate processes: whole fits, A/B.

    python -m bench.ab_fit --old DIR [--new DIR] [--what small|digits] [--backend B]
                           [--pairs N] [--seconds S]

DIR: a directory holding a `fastgrad` package with its built extension (a `git archive`
of the old commit's fastgrad/ plus its _kernels*.so); --new defaults to the directory of
the fastgrad this Python imports (this checkout built in place, or an installed one).
Each pair runs the old then the new in fresh processes (never in one process: the fit
runners cache compiled kernels per module). What one process times:
- small: the 64-64-10 net at batch 32, fit over 16 batches an epoch (200 epochs a fit,
  one BLAS thread), for S seconds; prints steps/s of the median fit.
- digits: fastgrad.sklearn.MLPClassifier with section 5's parameters on scikit-learn's
  digits (needs scikit-learn), 30 warm fits; prints the median fit in ms.
The script prints every pair and the medians; a difference inside the pairs' spread is
noise. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import sys, time, warnings
sys.path.insert(0, sys.argv[1])  # the fastgrad to time, ahead of the working directory
sys.path.append(sys.argv[2])  # bench's checkout
import numpy as np
what, backend, seconds = sys.argv[3], sys.argv[4], float(sys.argv[5])
if what == "small":
    import fastgrad as fg
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 64)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    m = fg.MLP([64, 64, 10], activation="relu", dtype="float32", seed=0, backend=backend)
    kw = dict(batch_size=32, optimizer="sgd", lr=0.01, shuffle=False, verbose=0,
              health=False)
    m.fit(X, y, epochs=3, **kw)
    times = []
    with threadpool_limits(1):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or not times:
            t0 = time.perf_counter()
            m.fit(X, y, epochs=200, **kw)
            times.append(time.perf_counter() - t0)
    print(200 * 16 / np.median(times))
else:
    import fastgrad.sklearn as fsk
    from bench.mlp import DIGITS_PARAMS, _digits_split
    Xtr, _, ytr, _ = _digits_split()
    warnings.simplefilter("ignore")
    fsk.MLPClassifier(**DIGITS_PARAMS, backend=backend).fit(Xtr, ytr)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        fsk.MLPClassifier(**DIGITS_PARAMS, backend=backend).fit(Xtr, ytr)
        times.append(time.perf_counter() - t0)
    print(np.median(times) * 1e3)
"""


def run_one(root: Path, what: str, backend: str, seconds: float) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(ROOT), what, backend,
                          str(seconds)], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{root}: {out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def imported_fastgrad() -> Path:
    """The directory holding the `fastgrad` package this Python imports."""
    import fastgrad
    return Path(fastgrad.__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=lambda p: Path(p).resolve(), required=True)
    ap.add_argument("--new", type=lambda p: Path(p).resolve(), default=imported_fastgrad())
    ap.add_argument("--what", choices=("small", "digits"), default="small")
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    unit = "steps/s" if args.what == "small" else "ms a fit"
    results: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(args.pairs):
        for name in ("old", "new"):
            results[name].append(run_one(getattr(args, name), args.what, args.backend,
                                         args.seconds))
        print(f"pair {i + 1}: old {results['old'][-1]:,.1f}  new {results['new'][-1]:,.1f} "
              f"{unit}", flush=True)
    old, new = statistics.median(results["old"]), statistics.median(results["new"])
    print(f"median: old {old:,.1f}  new {new:,.1f} {unit}")


if __name__ == "__main__":
    main()
