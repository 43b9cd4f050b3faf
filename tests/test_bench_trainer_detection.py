"""bench/ picks the trainer up through its public API the day it lands.

A stand-in `fastgrad.MLP` (monkeypatched, no math) records how the benchmark drives it:
keyword arguments filtered to the signature, a first untimed call that compiles, epochs
counted so steps/s = epochs x batches / time, a per-step `train_step` found when present,
and "not available" with the reason when the trainer or its API is missing.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import fastgrad

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it lives beside the package
    sys.path.insert(0, str(ROOT))

from bench import mlp  # noqa: E402
from bench.peers import NotAvailable  # noqa: E402
from bench.timing import Budget  # noqa: E402


class FakeMLP:
    """Takes no backend= (so the benchmark must scope fastgrad.use_backend around it)."""

    instances: list[FakeMLP] = []

    def __init__(self, layer_sizes, activation="relu", *, dtype="float32", seed=None):
        self.sizes, self.activation, self.dtype = list(layer_sizes), activation, dtype
        self.epochs, self.steps, self.backends = 0, 0, []
        FakeMLP.instances.append(self)

    def fit(self, X, y, *, epochs, batch_size=32, optimizer="adam", lr=1e-3, shuffle=True,
            verbose=1):
        assert X.shape == (mlp.BATCHES * batch_size, self.sizes[0]) and len(y) == len(X)
        assert (optimizer, lr, shuffle, verbose) == ("sgd", mlp.LR, False, 0)
        self.backends.append(fastgrad.get_backend().NAME)
        self.epochs += epochs
        return self

    def train_step(self, x, y):
        self.steps += 1
        return 0.0


def test_fit_is_driven_through_the_public_api(monkeypatch):
    monkeypatch.setattr(fastgrad, "MLP", FakeMLP, raising=False)
    FakeMLP.instances.clear()
    fit = mlp.fastgrad_trainer((8, 4, 3), 5, "numpy")
    model = FakeMLP.instances[-1]
    # the untimed compiling call: three epochs, so that fit's blocks of epochs compile too
    assert model.epochs == 3 and model.backends == ["numpy"]
    cell = mlp._fit_cell(fit, Budget(warmup=0, repeat=2, min_time=0.0))
    assert cell.rate > 0 and cell.stats.number % mlp.BATCHES == 0
    assert model.epochs == 3 + 1 + 2 * (cell.stats.number // mlp.BATCHES)


def test_per_step_api_is_found(monkeypatch):
    monkeypatch.setattr(fastgrad, "MLP", FakeMLP, raising=False)
    step = mlp.fastgrad_trainer((8, 4, 3), 5, None, per_step=True)
    step(7)
    assert FakeMLP.instances[-1].steps == 2


def test_missing_trainer_or_api_is_reported(monkeypatch):
    monkeypatch.delattr(fastgrad, "MLP", raising=False)
    with pytest.raises(NotAvailable, match="fastgrad.MLP not in this checkout"):
        mlp.fastgrad_trainer((8, 4, 3), 5, None)

    class NoStep(FakeMLP):
        train_step = None

    monkeypatch.setattr(fastgrad, "MLP", NoStep, raising=False)
    with pytest.raises(NotAvailable, match="no train_step"):
        mlp.fastgrad_trainer((8, 4, 3), 5, None, per_step=True)


def test_step_flops_counts_three_gemms_per_layer_but_the_first():
    assert mlp.step_flops((64, 64, 10), 32) == 2 * 32 * (64 * 64 * 2 + 64 * 10 * 3)


def test_numpy_step_learns():
    """The hand-written NumPy peer is a real SGD step: its loss falls on a fixed batch."""
    step = mlp.numpy_step((16, 8, 4), 32)
    losses = [float(step(0 * i)) for i in range(200)]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"),
                    reason="CPU affinity (os.sched_setaffinity) is Linux-only")
def test_pinned_child_times_a_step_on_the_cores_asked_for():
    # section 4 times jax.jit's one-thread row this way (XLA's pool ignores the thread
    # limits set in-process); numpy's step stands in so that the test needs no JAX
    stats, cores = mlp.pinned_step("numpy_step", (8, 8, 2), 4, Budget(0, 2, 0.001), 1)
    assert cores == 1
    assert len(stats.times) == 2 and stats.median > 0
    with pytest.raises(NotAvailable, match="no_such_step"):
        mlp.pinned_step("no_such_step", (8, 8, 2), 4, Budget(0, 1, 0.001), 1)


def test_two_thread_cells_slower_than_one_thread_are_flagged():
    from bench.kernels import Cell
    from bench.timing import Stats
    st = Stats((1.0,), 1)
    cells = {(0, 1, "a"): Cell(st, 100.0), (0, 2, "a"): Cell(st, 60.0),
             (0, 1, "b"): Cell(st, 100.0), (0, 2, "b"): Cell(st, 150.0),
             (0, 2, "c"): Cell(st, 50.0)}
    for impl in "abc":
        mlp._flag_slower_than_one_thread(cells, 0, impl, [1, 2])
    assert mlp.SLOWER_THAN_ONE_THREAD in cells[(0, 2, "a")].text()
    assert cells[(0, 2, "b")].note == "" and cells[(0, 1, "a")].note == ""
    assert cells[(0, 2, "c")].note == ""  # no one-thread cell to compare with
