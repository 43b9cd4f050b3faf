"""Sections 4 and 5: one MLP training step against the peers, and digits end to end.

Section 4's step: ReLU hidden layers, a linear output, softmax cross-entropy averaged over
the batch (the loss value computed too), plain SGD (lr 0.01), float32, one mini-batch per
step cycling through 16 preallocated batches. Its BLAS floor: matmul FLOPs per step =
sum over layers of 2 B D_in D_out x 3 (forward, grad_W, grad_x), minus grad_x of the first
layer, divided by the measured sgemm rate at the same thread count.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .kernels import Cell
from .peers import NotAvailable, all_threads, fastgrad_backends, require, thread_limit
from .timing import Budget, Stats, measure

CONFIGS = (((64, 64, 10), 32), ((784, 256, 128, 10), 128), ((784, 1024, 1024, 10), 512))
LR = 0.01
BATCHES = 16


def step_flops(sizes: tuple[int, ...], batch: int) -> int:
    """Matmul FLOPs of one training step (no grad_x for the first layer)."""
    total = 0
    for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += 2 * batch * din * dout * (2 if i == 0 else 3)
    return total


def _data(sizes, batch, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCHES, batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], (BATCHES, batch))
    return X, y


def _init(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
             np.zeros(b, np.float32)) for a, b in zip(sizes[:-1], sizes[1:])]


# ------------------------------------------------------------------ the steps
def numpy_step(sizes, batch) -> Callable[[int], object]:
    """A hand-written NumPy step: in-place where NumPy allows, one call per operation."""
    params = _init(sizes)
    X, Y = _data(sizes, batch)
    rows = np.arange(batch)
    last = len(params) - 1

    def step(i):
        xb, yb = X[i % BATCHES], Y[i % BATCHES]
        acts = [xb]
        for k, (W, b) in enumerate(params):
            z = acts[-1] @ W
            z += b
            if k < last:
                np.maximum(z, 0, out=z)
            acts.append(z)
        z = acts.pop()
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(1, keepdims=True)
        loss = -np.log(z[rows, yb]).mean()
        z[rows, yb] -= 1
        z /= batch
        g = z
        for k in range(last, -1, -1):
            W, b = params[k]
            h = acts[k]
            gW = h.T @ g
            gb = g.sum(0)
            if k > 0:
                g = g @ W.T
                g *= h > 0
            W -= LR * gW
            b -= LR * gb
        return loss

    return step


def torch_step(sizes, batch) -> Callable[[int], object]:
    """PyTorch eager: nn.Sequential, CrossEntropyLoss, optim.SGD, zero_grad/backward/step."""
    torch = require("torch")
    nn = torch.nn
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    X, Y = _data(sizes, batch)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y)

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[i % BATCHES]), Y[i % BATCHES])
        loss.backward()
        opt.step()
        return loss

    return step


def jax_step(sizes, batch) -> Callable[[int], object]:
    """jax.jit of the whole step (forward, loss, grad, SGD update) returning new params."""
    jax = require("jax")
    jnp = jax.numpy
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in _init(sizes)]
    X, Y = _data(sizes, batch)
    X, Y = jax.device_put(X), jax.device_put(Y)

    def loss_fn(p, x, y):
        h = x
        for W, b in p[:-1]:
            h = jax.nn.relu(h @ W + b)
        logits = h @ p[-1][0] + p[-1][1]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    @jax.jit
    def update(p, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        return jax.tree_util.tree_map(lambda w, g: w - LR * g, p, grads), loss

    state = {"p": params}

    def step(i):
        state["p"], loss = update(state["p"], X[i % BATCHES], Y[i % BATCHES])
        return loss.block_until_ready()

    return step


_PINNED_CHILD = """
import json, os, sys
os.sched_setaffinity(0, {cores})  # before the library starts: its threads inherit it
sys.path.insert(0, {root!r})
from bench import mlp, timing
step = mlp.{maker}({sizes!r}, {batch!r})
counter = iter(range(1 << 62))
stats = timing.measure(lambda: step(next(counter)), timing.Budget{budget!r})
print(json.dumps({{"times": stats.times, "number": stats.number,
                  "cores": len(os.sched_getaffinity(0))}}))
"""


def pinned_step(maker: str, sizes, batch, budget: Budget, threads: int) -> tuple[Stats, int]:
    """(stats, cores the child ran on) of `maker`(sizes, batch)'s step, timed in a child
    process confined to `threads` cores before it imports anything. For JAX: XLA sizes
    its CPU pool when JAX starts, and on this machine XLA_FLAGS
    (--xla_cpu_multi_thread_eigen=false, intra_op_parallelism_threads=1) left it at two
    threads (the large net 34-37 steps/s with and without them, 19 under `taskset -c
    0`); the pool's threads follow the process's CPU affinity."""
    if not hasattr(os, "sched_setaffinity"):
        raise NotAvailable("no os.sched_setaffinity here: a child's threads cannot be bound")
    cores = set(sorted(os.sched_getaffinity(0))[:threads])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _PINNED_CHILD.format(cores=cores, root=root, maker=maker, sizes=tuple(sizes),
                                  batch=batch,
                                  budget=(budget.warmup, budget.repeat, budget.min_time))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise NotAvailable(f"{maker} in a pinned child failed: {proc.stderr.strip()[-300:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Stats(tuple(data["times"]), data["number"]), data["cores"]


def jax_pinned_cell(sizes, batch, budget: Budget, threads: int) -> Cell:
    """jax_step's cell at `threads` threads: see pinned_step."""
    require("jax")
    stats, _ = pinned_step("jax_step", sizes, batch, budget, threads)
    return Cell(stats, 1.0 / stats.median)


def fastgrad_kernel_step(sizes, batch, backend: str) -> Callable[[int], object]:
    """fastgrad's public kernels, one call per layer (linear_forward with the ReLU fused,
    softmax_forward, linear_backward with the ReLU backward fused), the loss gradient and
    the SGD update in NumPy: what a user composes without the trainer."""
    import fastgrad as fg

    params = _init(sizes)
    X, Y = _data(sizes, batch)
    rows = np.arange(batch)
    last = len(params) - 1

    def step(i):
        xb, yb = X[i % BATCHES], Y[i % BATCHES]
        inputs, pres = [], []
        h = xb
        for k, (W, b) in enumerate(params):
            inputs.append(h)
            h, pre = fg.linear_forward(h, W, b, activation="relu" if k < last else None,
                                       return_pre=True, backend=backend)
            pres.append(pre)
        p = fg.softmax_forward(h, backend=backend)
        loss = -np.log(p[rows, yb]).mean()
        p[rows, yb] -= 1
        p /= batch
        g = p
        for k in range(last, -1, -1):
            W, b = params[k]
            gx, gW, gb = fg.linear_backward(g, inputs[k], W, pre=pres[k],
                                            activation="relu" if k < last else None,
                                            need_grad_x=k > 0, backend=backend)
            W -= LR * gW
            b -= LR * gb
            g = gx
        return loss

    return step


def _accepted(func, **kwargs):
    """Only the keyword arguments func's signature takes (the trainer's API may differ)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def fastgrad_trainer(sizes, batch, backend: str | None, per_step: bool = False):
    """A measurable call through fastgrad's public trainer API.

    per_step=False: fit(epochs) -> fastgrad.MLP(...).fit(X, y, epochs=epochs, ...) over
    BATCHES batches per epoch. per_step=True: step(i) -> model.train_step(x_i, y_i), when the
    model has such a method. The first call (compilation) runs here, untimed. Raises
    NotAvailable when the trainer is absent or its API cannot be driven."""
    import fastgrad as fg

    MLP = getattr(fg, "MLP", None)
    if MLP is None:
        raise NotAvailable("fastgrad.MLP not in this checkout (trainer not merged)")
    kwargs = _accepted(MLP, activation="relu", dtype="float32", seed=0, backend=backend)
    # A trainer without backend= follows the active backend (fastgrad.use_backend).
    def scope():
        if backend is not None and "backend" not in kwargs:
            return fg.use_backend(backend)
        return contextlib.nullcontext()

    X, Y = _data(sizes, batch)
    try:
        with scope():
            model = MLP(list(sizes), **kwargs)
    except Exception as exc:
        raise NotAvailable(f"fastgrad.MLP(...) failed: {type(exc).__name__}: {exc}") from exc
    if per_step:
        train_step = getattr(model, "train_step", None)
        if not callable(train_step):
            raise NotAvailable("fastgrad.MLP has no train_step (per-step API)")

        def call(i):
            with scope():
                return train_step(X[i % BATCHES], Y[i % BATCHES])
    else:
        Xf, Yf = X.reshape(-1, sizes[0]), Y.reshape(-1)
        # fit takes **optimizer_params, so every keyword "is accepted": pass only the
        # contract's names (lr, not learning_rate, which SGD rejects).
        fit_kwargs = _accepted(model.fit, batch_size=batch, optimizer="sgd", lr=LR,
                               shuffle=False, verbose=0, health=False)

        def call(epochs):
            with scope(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return model.fit(Xf, Yf, epochs=epochs, **fit_kwargs)
    try:
        # compiles (or loads the Numba cache); not timed. Three epochs: fit's blocks of
        # epochs start at the second, and their kernel compiles on first use too.
        call(3)
    except Exception as exc:
        what = "train_step" if per_step else "fit"
        raise NotAvailable(f"fastgrad.MLP.{what} failed: {type(exc).__name__}: {exc}") from exc
    return call


# ------------------------------------------------------------------ section 4
@dataclass
class StepResults:
    impls: list[str]
    notes: dict[str, str]
    cells: dict[tuple[int, int, str], Cell] = field(default_factory=dict)
    """(config index, threads, impl) -> Cell (rate = steps/s)"""
    floors: dict[tuple[int, int], float] = field(default_factory=dict)


def _step_cell(step, budget: Budget) -> Cell:
    counter = iter(range(1 << 62))
    stats = measure(lambda: step(next(counter)), budget)
    return Cell(stats, 1.0 / stats.median)


def _wait_for_idle_cores(limit: float = 2.0) -> None:
    """Wait (up to `limit` seconds) until no other thread is runnable: another process's,
    or another of this process's (a BLAS pool spins ~100 ms after a multi-threaded call).
    fit picks its BLAS threads from the other processes' count when it starts
    (fastgrad.train.machine_busy): the peers measured just before (XLA's and PyTorch's
    pools winding down) made it train the medium net's two-thread row on one thread
    (509-645 against 1,030-1,130 steps/s alone). The cython runner splits batches over its
    threads only while no other thread runs (fastgrad._kernels.train_threads_free):
    scikit-learn's fits just before left NumPy's pool spinning through the whole of
    fastgrad's digits fits (2026-11-29), which then ran on one thread."""
    try:
        from fastgrad.train import _own_running_threads, other_runnable_threads
    except ImportError:
        return
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline and (
            (other_runnable_threads() or 0) > 0 or _own_running_threads() > 1):
        time.sleep(0.02)


def _fit_cell(fit, budget: Budget) -> Cell:
    """steps/s inside fit: fit(epochs) timed after the compiling first fit; an epoch is
    BATCHES steps, and the epoch count is chosen so one fit lasts ~min_time."""
    t0 = time.perf_counter()
    fit(1)
    one = max(time.perf_counter() - t0, 1e-6)
    epochs = max(1, min(1000, int(budget.min_time * 4 / one)))
    times = []
    for _ in range(max(budget.repeat, 1)):
        t0 = time.perf_counter()
        fit(epochs)
        times.append((time.perf_counter() - t0) / (epochs * BATCHES))
    stats = Stats(tuple(times), epochs * BATCHES)
    return Cell(stats, 1.0 / stats.median)


def run_steps(budget: Budget, thread_counts: list[int], sgemm: dict[int, float],
              backends: list[str] | None = None, configs=CONFIGS
              ) -> tuple[StepResults, dict[str, str]]:
    ok, missing = fastgrad_backends(backends)
    missing = {f"fastgrad-{b} kernels": r for b, r in missing.items()}
    makers: dict[str, Callable] = {}
    notes = {}
    for b in ok:
        makers[f"fastgrad-{b} trainer"] = ("fit", lambda s, B, b=b: fastgrad_trainer(s, B, b))
        makers[f"fastgrad-{b} train_step"] = (
            "step", lambda s, B, b=b: fastgrad_trainer(s, B, b, per_step=True))
        notes[f"fastgrad-{b} train_step"] = "model.train_step(x, y) per batch, if the API has it"
        notes[f"fastgrad-{b} trainer"] = (
            "fastgrad.MLP(...).fit(epochs=E) after a first fit that compiles; steps/s = "
            f"E x {BATCHES} batches / wall time of fit (fit's per-epoch overhead included; "
            "shuffle=False, verbose=0, health=False: a backend with a block form runs the "
            "epochs after the first in blocks, one call each)")
        makers[f"fastgrad-{b} kernels"] = ("step",
                                           lambda s, B, b=b: fastgrad_kernel_step(s, B, b))
        notes[f"fastgrad-{b} kernels"] = ("public kernels one call per layer, loss gradient "
                                          "and SGD update in NumPy")
    makers["numpy"] = ("step", numpy_step)
    notes["numpy"] = "hand-written NumPy step, in place where NumPy allows"
    makers["torch"] = ("step", torch_step)
    notes["torch"] = "PyTorch eager: nn.Sequential + CrossEntropyLoss + optim.SGD"
    makers["jax"] = ("step", jax_step)
    notes["jax"] = ("jax.jit of the whole step (value_and_grad + SGD), new params returned; "
                    "XLA's CPU pool is sized at JAX start-up (XLA_FLAGS did not bind it here), "
                    "so rows of fewer threads than this process's cores time it in a child "
                    "process pinned to that many cores (os.sched_setaffinity before JAX "
                    "starts); the all-cores row runs in this process")
    res = StepResults(list(makers), notes)
    for c, (sizes, batch) in enumerate(configs):
        flops = step_flops(sizes, batch)
        for t in thread_counts:
            if t in sgemm:
                res.floors[(c, t)] = sgemm[t] * 1e9 / flops
        for impl, (kind, make) in makers.items():
            for t in thread_counts:
                with thread_limit(t):
                    try:
                        if impl == "jax" and t < all_threads():
                            cell = jax_pinned_cell(sizes, batch, budget, t)
                        else:
                            if kind == "fit":
                                _wait_for_idle_cores()
                            fn = make(sizes, batch)
                            cell = (_fit_cell(fn, budget) if kind == "fit"
                                    else _step_cell(fn, budget))
                    except NotAvailable as exc:
                        cell = Cell(note=str(exc))
                res.cells[(c, t, impl)] = cell
            _flag_slower_than_one_thread(res.cells, c, impl, thread_counts)
            time.sleep(0.05)
    return res, missing


SLOWER_THAN_ONE_THREAD = "⚠ below its 1-thread rate (disturbed)"


def _flag_slower_than_one_thread(cells: dict, c: int, impl: str, thread_counts) -> None:
    """Mark a many-thread cell that ran slower than the same implementation on one thread.
    On this shared VM a two-thread step sometimes falls to ~half for a minute or more (the
    medium net at 470-580 steps/s against 1,000-1,100, in a fresh process as well, with no
    steal time counted), whichever implementation is running then: such a cell measures
    the host, not the code."""
    one = cells.get((c, 1, impl))
    if one is None or one.rate is None:
        return
    for t in thread_counts:
        cell = cells.get((c, t, impl))
        if t > 1 and cell is not None and cell.rate is not None and cell.rate < one.rate:
            cell.note = f"{cell.note} {SLOWER_THAN_ONE_THREAD}".strip()


# ------------------------------------------------------------------ section 5
DIGITS_PARAMS = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam",
                     alpha=1e-4, batch_size=200, learning_rate_init=1e-3, max_iter=20,
                     shuffle=True, random_state=0, tol=0.0, n_iter_no_change=1000)
"""Same for both estimators; tol=0 and n_iter_no_change=1000 make both run all 20 epochs."""


@dataclass
class DigitsRow:
    name: str
    first: float | None = None      # first fit, seconds (includes compilation for fastgrad)
    stats: Stats | None = None      # warm fits
    accuracy: float | None = None
    n_iter: object = None
    note: str = ""


def _digits_split():
    sk = require("sklearn")  # noqa: F841  (raises NotAvailable when absent)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    return (scaler.transform(Xtr).astype(np.float32), scaler.transform(Xte).astype(np.float32),
            ytr, yte)


def run_digits(budget: Budget, threads: int) -> list[DigitsRow]:
    try:
        Xtr, Xte, ytr, yte = _digits_split()
    except NotAvailable as exc:
        return [DigitsRow("scikit-learn MLPClassifier", note=str(exc)),
                DigitsRow("fastgrad.sklearn.MLPClassifier", note=str(exc))]
    from sklearn.neural_network import MLPClassifier as SkMLP

    estimators: list[tuple[str, Callable | None, str]] = [
        ("scikit-learn MLPClassifier", SkMLP, "")]
    try:
        import fastgrad.sklearn as fsk
        estimators.append(("fastgrad.sklearn.MLPClassifier", fsk.MLPClassifier, ""))
    except Exception as exc:  # absent until the trainer lands
        estimators.append(("fastgrad.sklearn.MLPClassifier", None,
                           f"fastgrad.sklearn not importable ({type(exc).__name__}: {exc})"))
    rows = []
    repeat = max(1, min(budget.repeat, 5))
    for name, cls, why in estimators:
        if cls is None:
            rows.append(DigitsRow(name, note=why))
            continue
        try:
            with thread_limit(threads), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _wait_for_idle_cores()  # the previous estimator's BLAS pool winding down
                t0 = time.perf_counter()
                est = cls(**DIGITS_PARAMS).fit(Xtr, ytr)
                first = time.perf_counter() - t0
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    est = cls(**DIGITS_PARAMS).fit(Xtr, ytr)
                    times.append(time.perf_counter() - t0)
            rows.append(DigitsRow(name, first, Stats(tuple(times), 1),
                                  float(est.score(Xte, yte)), getattr(est, "n_iter_", "?")))
        except Exception as exc:
            rows.append(DigitsRow(name, note=f"{type(exc).__name__}: {exc}"))
    return rows
