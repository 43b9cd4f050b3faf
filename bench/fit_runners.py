"""fit's two epoch runners on the numba backend, same process: wall time per step.

    python bench/fit_runners.py [--repeat R] [--digits]

Times `model.fit` (SGD, ReLU, softmax cross-entropy, float32, health=False so the
end-of-epoch diagnostic pass is not counted) with the fused runner (one compiled call per
epoch) and the layer-by-layer runner (fused=False), median of R fits after a warm-up,
divided by the steps. --digits also times 20 epochs on scikit-learn's digits with
fastgrad.MLP (fused, default health diagnostics) and sklearn.neural_network.MLPClassifier
(same hidden size, batch, solver and lr). Indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastgrad as fg

# (layer sizes, batch, batches per epoch, epochs)
CASES = [((64, 64, 10), 32, 200, 3), ((784, 256, 128, 10), 128, 20, 2)]


def time_fit(sizes, batch, n_batches, epochs, fused, repeat):
    rng = np.random.default_rng(0)
    n = batch * n_batches
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = np.arange(n) % sizes[-1]
    times = []
    for i in range(repeat + 1):
        m = fg.MLP(list(sizes), "relu", backend="numba", seed=0)
        t = time.perf_counter()
        h = m.fit(X, y, epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.01,
                  verbose=0, health=False, fused=fused)
        if i:  # the first fit is the warm-up (compilation, caches)
            times.append(time.perf_counter() - t)
    return statistics.median(times) / (epochs * n_batches), h.runner, times


def digits(repeat):
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
    rows = []
    for name in ("fastgrad", "sklearn"):
        times, acc = [], None
        for i in range(repeat + 1):
            t = time.perf_counter()
            if name == "fastgrad":
                m = fg.MLP([64, 100, 10], "relu", backend="numba", seed=i)
                h = m.fit(Xtr, ytr, epochs=20, batch_size=200, optimizer="adam", lr=1e-3,
                          verbose=0)
                assert h.runner == "fused"
            else:
                m = MLPClassifier((100,), batch_size=200, max_iter=20, random_state=i,
                                  learning_rate_init=1e-3, tol=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    m.fit(Xtr, ytr)
            if i:
                times.append(time.perf_counter() - t)
            acc = m.score(Xte, yte)
        rows.append((name, statistics.median(times), acc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--digits", action="store_true")
    args = ap.parse_args()
    for sizes, batch, n_batches, epochs in CASES:
        res = {}
        for fused in (True, False):
            per_step, runner, times = time_fit(sizes, batch, n_batches, epochs, fused,
                                               args.repeat)
            res[runner] = per_step
            spread = (max(times) - min(times)) / statistics.median(times)
            print(f"{'-'.join(map(str, sizes))} batch {batch}: {runner:6s} "
                  f"{per_step * 1e6:9.1f} us/step  {1 / per_step:9.0f} steps/s  "
                  f"(spread {spread:.0%})")
        print(f"  fused / layers speed-up: {res['layers'] / res['fused']:.2f}x")
    if args.digits:
        for name, t, acc in digits(args.repeat):
            print(f"digits 20 epochs, hidden 100, batch 200, adam: {name:8s} {t:.3f} s  "
                  f"test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
