"""Training: `fit`, the epoch loop, gradient-health diagnostics, early stopping, History.

One epoch is run by an *epoch runner* with one contract (`EpochPlan` in, the number of
batches completed out): the layer-by-layer runner here (`train_epoch_layers`, the
fallback every CPU backend has), its device twin for device backends
(`fastgrad.train_device.DeviceEpochRunner`: weights, gradients, optimizer state and
activations resident on the GPU for the whole fit) or a backend's fused ``train_epoch``
kernel, which `fit` takes when the backend module defines it and its
``supports_train_epoch(plan)`` (if defined) accepts the plan. Everything else (task
inference, targets, validation, diagnostics, early stopping, callbacks, progress) is
shared, so every runner trains the same way and reports the same history.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import available_backends, get_backend, get_kernel
from .losses import LossSpec
from .nn import Sequential
from .optim import Optimizer, Schedule, make_optimizer
from .targets import prepare_targets, score_logits


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinity in the loss or a gradient. Attributes: epoch, batch
    (both counted from 0), layer (index, or None when the loss itself is the first
    non-finite value) and what ("loss" or "gradient"). The model keeps its last finite
    weights."""

    def __init__(self, message: str, epoch: int, batch: int, layer: int | None,
                 what: str) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.layer, self.what = epoch, batch, layer, what


class GradientHealthWarning(RuntimeWarning):
    """A layer's gradients vanish (norm below `vanish` for `patience` epochs in a row) or
    explode (norm above `explode`)."""


@dataclass
class GradientHealth:
    """Gradient-health settings for `fit(..., health=...)`.

    vanish / explode: per-layer gradient-norm thresholds (on the epoch's root-mean-square
    over batches of ||dL/d(W, b)||, what history["grad_norm"] records); patience: epochs
    in a row below `vanish` before warning.
    sample_rows: training rows the end-of-epoch diagnostic pass (dead ReLU units,
    saturated sigmoid/tanh units, the training metric) runs on.
    """

    vanish: float = 1e-7
    explode: float = 1e4
    patience: int = 3
    sample_rows: int = 2048


@dataclass
class EarlyStopping:
    """Stop when `monitor` ("val_loss" when there is validation data, else "loss"; also
    "accuracy"/"r2" and their "val_" versions, which must rise) has not improved by more
    than `min_delta` for `patience` epochs; with restore_best_weights the model ends
    with the weights of its best epoch."""

    patience: int = 10
    min_delta: float = 0.0
    monitor: str | None = None
    restore_best_weights: bool = True


class History:
    """What `fit` records. ``history`` maps a name to one value per epoch: "loss",
    "val_loss", the metric ("accuracy" or "r2", and "val_" versions), "lr", "grad_norm"
    (per epoch, a list with one norm per layer), "dead_relu" and "saturated" (per epoch,
    one fraction per layer, None where the layer's activation has no such failure mode);
    with fit(..., health=False) the training metric, "dead_relu" and "saturated" are not
    recorded (no end-of-epoch pass runs) unless early stopping monitors the metric.
    ``epoch`` lists the epoch numbers; ``stopped_early`` and ``best_epoch`` say how it
    ended; ``runner`` which epoch runner trained ("fused": the backend's compiled epoch,
    "layers": layer by layer)."""

    def __init__(self) -> None:
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.stopped_early = False
        self.best_epoch: int | None = None
        self.runner: str | None = None  # "fused" or "layers": the epoch runner fit used

    def append(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


@dataclass
class EpochPlan:
    """Everything one epoch needs; the contract between `fit` and an epoch runner.

    layers: per layer (W, b, activation spec, a, b), W and b views into `params`, (a, b)
    the activation's encoded parameters as the backend kernels take them; the last layer
    has the identity activation (the loss takes logits).
    grads: the flat gradient buffer, layer k's slice `layer_slices[k]` (its W then b).
    X, T: this epoch's (shuffled) inputs (N, D) and targets (N, K), C-contiguous, the
    model's dtype; batches are consecutive rows, the last one possibly shorter.
    The runner trains batch after batch with `optimizer.step(params, grads, lr)` (or its
    own fused equivalent: PyTorch's formulas, state in the optimizer's arrays, steps
    counted in optimizer.steps), after clipping the gradients by value then by global norm
    when clip_value / clip_norm are set, then (optimizer.decay == "sklearn") adding
    scikit-learn's L2 penalty to the weights' gradients (`Optimizer.penalize`). It fills
    batch_loss[i] (the batch's mean loss, plus that penalty with decay="sklearn")
    and grad_sq[i, k] (layer k's squared gradient norm, before clipping), and returns the
    number of batches completed: fewer than n_batches when batch i = the return value had
    a non-finite loss or gradient, in which case that batch made no update. A runner may
    set last_good to the parameters before its last update (fit restores them, else the
    epoch's starting parameters, when the current ones are not finite).
    cache: a dict that lives as long as the model (fit passes the same one every epoch and
    every fit), where a runner keeps what it builds once per model (buffers, views);
    None means nothing is kept.
    """

    layers: list[tuple]
    params: np.ndarray
    grads: np.ndarray
    layer_slices: list[slice]
    X: np.ndarray
    T: np.ndarray
    batch_size: int
    loss: LossSpec
    optimizer: Optimizer
    lr: float
    clip_norm: float | None
    clip_value: float | None
    backend: str | None
    batch_loss: np.ndarray = field(default=None)
    grad_sq: np.ndarray = field(default=None)
    last_good: np.ndarray | None = None
    cache: dict | None = None

    @property
    def n_batches(self) -> int:
        return -(-len(self.X) // self.batch_size)


def dense_forward(backend, a: np.ndarray, W: np.ndarray, b: np.ndarray, spec, act_a: float,
                  act_b: float, want_pre: bool = False):
    """(y, pre) of one dense layer through the backend's kernel; pre is None unless
    want_pre. Arrays must already be what the kernel expects (C-contiguous, one dtype):
    the trainer validates its data once per fit instead of once per call."""
    out = np.empty((a.shape[0], W.shape[1]), a.dtype)
    pre = np.empty_like(out) if want_pre else None
    backend.linear_forward(a, W, b, out, pre, spec, act_a, act_b)
    return out, pre


def forward_backward(layers: list[tuple], xb: np.ndarray, tb: np.ndarray, loss: LossSpec,
                     grad_W: list[np.ndarray], grad_b: list[np.ndarray],
                     backend: str | None = None,
                     loss_kernels: tuple[Callable, Callable] | None = None) -> float:
    """One batch through the network and back: returns the batch's mean loss and writes
    dL/dW_k, dL/db_k into grad_W[k], grad_b[k]. layers as in EpochPlan; loss_kernels, the
    backend's (loss_forward, loss_backward), looked up when not given.

    Calls the backend object's dense-layer kernels directly (the interface in
    fastgrad.backends): every array here is C-contiguous in the model's dtype by
    construction, so the functional layer's per-call checks would only add overhead.
    """
    be = get_backend(backend)
    if loss_kernels is None:
        loss_kernels = (get_kernel("loss_forward", backend),
                        get_kernel("loss_backward", backend))
    inputs, saved = [xb], []
    a = xb
    for W, b, spec, pa, pb in layers:
        a, pre = dense_forward(be, a, W, b, spec, pa, pb, want_pre=spec.needs == "x")
        saved.append(pre if spec.needs == "x" else a if spec.needs == "y" else None)
        inputs.append(a)
    value = loss_kernels[0](loss, a, tb)
    g = np.empty_like(a)
    loss_kernels[1](loss, a, tb, g)
    for k in range(len(layers) - 1, -1, -1):
        W, b, spec, pa, pb = layers[k]
        g, gW, gb = be.linear_backward(g, inputs[k], W, saved[k], spec, pa, pb, k > 0)
        grad_W[k][...] = gW
        grad_b[k][...] = gb
    return value


def _grad_views(plan_layers, grads, layer_slices):
    views = [grads[s] for s in layer_slices]
    grad_W = [g[:W.size].reshape(W.shape) for g, (W, *_rest) in zip(views, plan_layers)]
    grad_b = [g[W.size:] for g, (W, *_rest) in zip(views, plan_layers)]
    return views, grad_W, grad_b


def train_epoch_layers(plan: EpochPlan) -> int:
    """The layer-by-layer epoch runner: per batch, linear_forward through the layers, the
    loss kernel, linear_backward back, one optimizer kernel call on the flat buffer."""
    X, T, B = plan.X, plan.T, plan.batch_size
    params, grads, opt = plan.params, plan.grads, plan.optimizer
    views, grad_W, grad_b = _grad_views(plan.layers, grads, plan.layer_slices)
    kernels = (get_kernel("loss_forward", plan.backend),
               get_kernel("loss_backward", plan.backend))
    weight_slices = [slice(s.start, s.start + W.size)
                     for s, (W, *_rest) in zip(plan.layer_slices, plan.layers)]
    prev = params.copy()  # weights before the last update: the fallback if it broke them
    plan.last_good = prev
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite value is reported
        for i in range(plan.n_batches):
            rows = slice(i * B, (i + 1) * B)
            plan.batch_loss[i] = forward_backward(plan.layers, X[rows], T[rows], plan.loss,
                                                  grad_W, grad_b, plan.backend, kernels)
            for k, view in enumerate(views):
                sq = np.dot(view, view)
                if not math.isfinite(sq):  # float32 squares overflow first: redo in float64
                    v64 = view.astype(np.float64)
                    sq = np.dot(v64, v64)
                plan.grad_sq[i, k] = sq
            if not (math.isfinite(plan.batch_loss[i])
                    and (np.isfinite(plan.grad_sq[i]).all() or np.isfinite(grads).all())):
                return i
            clip_gradients(grads, plan.clip_value, plan.clip_norm)
            penalty = opt.penalize(params, grads, min(B, len(X) - i * B), weight_slices)
            if penalty:
                plan.batch_loss[i] += penalty
                if not math.isfinite(plan.batch_loss[i]):
                    return i
            np.copyto(prev, params)
            opt.step(params, grads, plan.lr)
    return plan.n_batches


def batch_gradient(model: Sequential, X: Any, y: Any) -> tuple[float, np.ndarray]:
    """(mean loss, flat gradient) of a fitted (or output-fixed) model on one batch, with
    the training code path; y as for fit. The gradient is laid out like model.params."""
    X = model._check_X(X)
    T, _ = prepare_targets(model, y, len(X))
    grads = np.zeros_like(model.params)
    layers = _plan_layers(model)
    if getattr(get_backend(model.backend), "DEVICE", False):
        from .train_device import DeviceEpochRunner
        plan = EpochPlan(layers, model.params, grads, model.layer_slices, X, T, len(X),
                         model.loss_spec, None, 0.0, None, None, model.backend)
        return DeviceEpochRunner(model.backend).gradient(plan), grads
    _, grad_W, grad_b = _grad_views(layers, grads, model.layer_slices)
    value = forward_backward(layers, X, T, model.loss_spec, grad_W, grad_b, model.backend)
    return value, grads


def clip_gradients(grads: np.ndarray, clip_value: float | None,
                   clip_norm: float | None) -> None:
    """In place: clamp each element to [-clip_value, clip_value], then scale all by
    clip_norm / ||grads|| when the global L2 norm exceeds clip_norm."""
    if clip_value is not None:
        np.clip(grads, -clip_value, clip_value, out=grads)
    if clip_norm is not None:
        norm = math.sqrt(float(np.dot(grads.astype(np.float64, copy=False),
                                      grads.astype(np.float64, copy=False))))
        if norm > clip_norm:
            grads *= grads.dtype.type(clip_norm / norm)


# --- diagnostics ---------------------------------------------------------------------

def _layer_outputs(model: Sequential, X: np.ndarray, wants: list[str | None],
                   runner: Any = None):
    """(logits, taken): one forward pass of X (host) through the model; taken[k] is layer
    k's pre-activation ("pre"), output ("a") or None as wants[k] says. A device runner
    answers it with its resident weights (`layer_outputs`); host arrays come back."""
    on_device = getattr(runner, "layer_outputs", None)
    if on_device is not None:
        return on_device(X, wants)
    a, taken = X, []
    be = get_backend(model.backend)
    for (W, b, spec, pa, pb), want in zip(_plan_layers(model), wants):
        a, pre = dense_forward(be, a, W, b, spec, pa, pb, want_pre=want == "pre")
        taken.append(pre if want == "pre" else a if want == "a" else None)
    return a, taken


def _diagnose(model: Sequential, X: np.ndarray, runner: Any = None):
    """One forward pass over X: the logits, and per layer the fraction of dead ReLU units
    (never positive on X) and of saturated sigmoid/tanh activations (|derivative| < 2%:
    sigmoid outside [0.01, 0.99], |tanh| > 0.99); None where not applicable."""
    last = len(model.layers) - 1
    names = [spec.name if k < last else None
             for k, (_, _, spec, *_rest) in enumerate(_plan_layers(model))]
    wants = ["pre" if name == "relu" else "a" if name in ("sigmoid", "tanh") else None
             for name in names]
    logits, taken = _layer_outputs(model, X, wants, runner)
    dead, saturated = [], []
    for name, arr in zip(names, taken):
        dead.append(float(np.mean(np.all(arr <= 0, axis=0))) if name == "relu" else None)
        if name == "sigmoid":
            saturated.append(float(np.mean((arr < 0.01) | (arr > 0.99))))
        elif name == "tanh":
            saturated.append(float(np.mean(np.abs(arr) > 0.99)))
        else:
            saturated.append(None)
    return logits, dead, saturated


def _first_nonfinite_layer(model: Sequential, X: np.ndarray,
                           runner: Any = None) -> int | None:
    _, outputs = _layer_outputs(model, X, ["a"] * len(model.layers), runner)
    for k, a in enumerate(outputs):
        if not np.isfinite(a).all():
            return k
    return None


def _plan_layers(model: Sequential) -> list[tuple]:
    out = []
    for k, layer in enumerate(model.layers):
        spec, params = model.hidden_activation(k)
        out.append((layer.W, layer.b, spec, *spec.encoded(params)))
    return out


class _HealthMonitor:
    def __init__(self, config: GradientHealth, model: Sequential) -> None:
        self.config, self.model = config, model
        self.low = [0] * len(model.layers)
        self.warned: set[tuple[str, int]] = set()

    def check(self, epoch: int, norms: list[float]) -> None:
        for k, norm in enumerate(norms):
            name = f"layer {k} ({self.model.layers[k]!r})"
            self.low[k] = self.low[k] + 1 if norm < self.config.vanish else 0
            if self.low[k] >= self.config.patience and ("vanish", k) not in self.warned:
                self.warned.add(("vanish", k))
                warnings.warn(f"vanishing gradients in {name}: norm {norm:.3g} < "
                              f"{self.config.vanish:g} for {self.low[k]} epochs (epoch "
                              f"{epoch})", GradientHealthWarning, stacklevel=4)
            if norm > self.config.explode and ("explode", k) not in self.warned:
                self.warned.add(("explode", k))
                warnings.warn(f"exploding gradients in {name}: norm {norm:.3g} > "
                              f"{self.config.explode:g} at epoch {epoch}; consider "
                              "clip_norm= or a lower lr", GradientHealthWarning,
                              stacklevel=4)


# --- fit -----------------------------------------------------------------------------------

def _epoch_runner(model: Sequential, plan: EpochPlan, batch_callbacks: bool,
                  fused: bool | None = None) -> Callable:
    """The single door for fused training: the backend's `train_epoch` when it has one
    that supports this plan and no callback needs Python between batches; otherwise the
    layer-by-layer runner. fused=False always takes the layer-by-layer runner; fused=True
    raises ValueError, with the backend's reason, when the fused one cannot run."""
    backend = get_backend(model.backend)
    if fused is False:
        return _layer_runner(model, backend)
    # backend=None leaves the choice to fastgrad: the default backend's fused runner, else
    # the first CPU backend (fastest first) whose fused runner takes the plan - one
    # compiled call per epoch beats the fastest layer-by-layer kernels on small nets.
    candidates = [backend] if model.backend is not None else [backend] + [
        get_backend(name) for name in available_backends() if name not in ("cuda", backend.NAME)]
    for candidate in candidates:
        runner = getattr(candidate, "train_epoch", None)
        supports = getattr(candidate, "supports_train_epoch", None)
        if runner is not None and not batch_callbacks and (supports is None or supports(plan)):
            return runner
    if fused:
        explain = getattr(backend, "train_epoch_reason", None)
        why = (explain(plan) if explain is not None and runner is not None
               else f"backend {backend.NAME!r} has no fused epoch runner")
        raise ValueError(f"fused=True but the fused epoch runner cannot run this model: "
                         f"{why}")
    return _layer_runner(model, backend)


def _layer_runner(model: Sequential, backend) -> Callable:
    """`train_epoch_layers`, or on a device backend its twin with the weights, gradients,
    optimizer state and activations resident on the device (one per fit)."""
    if getattr(backend, "DEVICE", False):
        from .train_device import DeviceEpochRunner
        return DeviceEpochRunner(model.backend)
    return train_epoch_layers


# --- BLAS threads ----------------------------------------------------------------------

BLAS_SINGLE_THREAD_FLOPS = 2e7
"""fit limits BLAS to one thread while it trains when one batch's matmuls (forward and
backward, 6 * batch * sum of d_in * d_out) take fewer FLOPs than this, or when the machine
has no idle core for a second thread (`machine_busy`). Why (2-core machine, DESIGN.md §5 and
docs/training.md): the 64-64-10 net at batch 32 (0.9 MFLOP a batch) gains nothing from a
second thread, while 784-256-128-10 at batch 128 (181 MFLOP) runs ~1.7x faster with two
on an idle machine; the threshold sits between the two, near their geometric mean. On a
loaded machine two OpenBLAS threads wait on each other for a core: the medium net fell
from ~200-400 to 20-40 steps/s with two threads (measured 2026-11-28, load ~4)."""


def batch_matmul_flops(layers: Sequence[tuple], batch_size: int) -> int:
    """FLOPs of one batch's matmuls: 2*B*d_in*d_out per layer forward, twice that back."""
    return 6 * batch_size * sum(int(W.size) for W, *_rest in layers)


def machine_busy() -> bool:
    """True when other processes' runnable threads leave no idle core for a second BLAS
    thread: more than cores - 1.5 of them (on 2 cores: any). Counted from /proc where it
    exists (`other_runnable_threads`), else from the 1-minute load average (load > cores -
    0.5, this process's own thread included); False where neither is available.

    Not the load average alone where /proc has the count: it includes this process's own
    threads over the last minute, so a program that has just run two threads (a benchmark,
    a previous fit) would find its own load and train on one."""
    import os
    cores = os.cpu_count() or 1
    others = other_runnable_threads()
    if others is not None:
        return others > cores - 1.5
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    return load > cores - 0.5


def other_runnable_threads(samples: int = 3, pause: float = 2e-4) -> int | None:
    """Runnable threads of other processes now: /proc/loadavg's running count less this
    process's own running threads (/proc/self/task/*/stat), the smallest of a few samples
    `pause` seconds apart (a single sample catches short-lived kernel work). None where
    /proc is not available."""
    import time
    counts = []
    for i in range(samples):
        if i:
            time.sleep(pause)
        try:
            with open("/proc/loadavg") as f:
                loadavg = f.read()
            own = _own_running_threads()
        except OSError:
            return None
        counts.append(running_from_loadavg(loadavg) - own)
    return max(0, min(counts))


def running_from_loadavg(text: str) -> int:
    """The running count of /proc/loadavg ("0.52 0.58 0.59 3/219 4242": 3), the reading
    thread itself included."""
    return int(text.split()[3].split("/")[0])


def _own_running_threads() -> int:
    import os
    running = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        # "tid (comm) S ...": the state follows the last ")" (comm may hold spaces, parens)
        if stat[stat.rindex(")") + 2] == "R":
            running += 1
    return running


def blas_thread_limit(layers: Sequence[tuple], batch_size: int, busy: bool | None = None):
    """A context manager for fit's training loop: one BLAS thread when the batch's matmuls
    are below BLAS_SINGLE_THREAD_FLOPS or the machine is busy (`busy`, or machine_busy()
    when None), through threadpoolctl (an optional dependency: without it, a no-op),
    restoring every library's previous limit on exit. Imports scipy.linalg first so SciPy's
    OpenBLAS, the one numba's np.dot calls, is loaded and limited along with NumPy's."""
    from contextlib import nullcontext
    if (batch_matmul_flops(layers, batch_size) >= BLAS_SINGLE_THREAD_FLOPS
            and not (machine_busy() if busy is None else busy)):
        return nullcontext()
    return one_blas_thread()


def one_blas_thread():
    """A context manager that runs BLAS on one thread (every BLAS library threadpoolctl
    finds), restoring the previous limits on exit; a no-op without threadpoolctl."""
    from contextlib import nullcontext
    controller = _blas_controller()
    if controller is None:
        return nullcontext()
    return controller.limit(limits=1, user_api="blas")


_CONTROLLER: list = []  # the process's threadpoolctl controller, made on first use


def _blas_controller():
    """A threadpoolctl ThreadpoolController made once per process (None without
    threadpoolctl): finding the loaded libraries reads /proc/self/maps, ~8 ms, too much to
    repeat for every fit of a small model (scikit-learn-style estimators fit often). The
    BLAS libraries are loaded before it is made (NumPy's by import, SciPy's here)."""
    if not _CONTROLLER:
        try:
            import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so threadpoolctl sees it)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _progress(verbose: int, epochs: int):
    if verbose == 1:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=epochs, unit="epoch", leave=False, file=sys.stderr)
    return None


def fit(model: Sequential, X: Any, y: Any, *, epochs: int = 10, batch_size: int = 32,
        optimizer: str | Optimizer = "adam", lr: float | None = None,
        validation_split: float | None = None, validation_data: tuple | None = None,
        shuffle: bool | Callable[[int], np.ndarray] = True,
        early_stopping: EarlyStopping | int | dict | None = None,
        callbacks: Sequence[Callable] | None = None, verbose: int = 1,
        lr_schedule: Schedule | Callable[[int, float], float] | None = None,
        clip_norm: float | None = None, clip_value: float | None = None,
        health: GradientHealth | bool | None = True, classes: Any = None,
        fused: bool | None = None, **optimizer_params: Any) -> History:
    """Train `model` on X (N, n_features) and y for `epochs` epochs of mini-batches.

    y: labels of any type (classification: classes_ = sorted unique labels, or `classes`
    when given) or float targets (N,) / (N, K) (regression). The task and the output
    activation are inferred from y on the first fit unless the model's output was given.
    optimizer: "sgd", "adam", "adamw", "rmsprop" (with lr and **optimizer_params, e.g.
    momentum=0.9, weight_decay=1e-4) or an Optimizer instance (its state carries over
    between fits). lr_schedule: e.g. fastgrad.optim.CosineLR(epochs), applied per epoch.
    validation_split: fraction of (X, y) held out at random (seeded by the model), or
    validation_data=(X_val, y_val). early_stopping: an EarlyStopping, a patience (int) or
    its keywords (dict). callbacks: callables cb(epoch, logs) or objects with
    on_epoch_end(epoch, logs); returning True stops training. A callback object may also
    have quiet_epochs(epoch) -> k: a promise that for the k epochs from `epoch` on it will
    not stop training, change the optimizer or read the model, so that fit may run them
    in one block and call it afterwards, once per epoch in order (see docs/training.md).
    shuffle: True reshuffles the training rows every epoch from the model's seed; a
    callable shuffle(epoch) returns that epoch's row order (a permutation of
    range(n_train): a caller's own random stream, as scikit-learn's estimators draw
    theirs; called once per epoch, in order, possibly a block's epochs ahead of
    training them). clip_norm / clip_value:
    gradient clipping. health: GradientHealth settings (True: defaults; False: no
    diagnostics, and no end-of-epoch pass over the training rows: "dead_relu",
    "saturated" and the training metric ("accuracy" / "r2") are then not logged, unless
    early stopping monitors that metric). verbose: 0 silent, 1 a tqdm progress bar (when
    tqdm is installed), 2 a line per epoch. fused: None (default) runs each epoch in the
    backend's fused compiled runner when it supports the model (numba, cython), else
    layer by layer; False forces the layer-by-layer runner; True requires the fused one
    (ValueError saying why not).
    history.runner names the runner used ("fused" or "layers"). BLAS runs on one thread
    while training nets whose batches are small, or on a busy machine (see
    BLAS_SINGLE_THREAD_FLOPS).
    Returns the History (also model.history_). Raises NonFiniteError on a NaN/inf loss or
    gradient (the model keeps its last finite weights).
    """
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
        if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive number or None, got {v!r}")
    opt = make_optimizer(optimizer, lr, **optimizer_params)
    fresh = model.task is None
    X = model._check_X(X)
    n = len(X)
    T, labels = prepare_targets(model, y, n, classes)
    if fresh and model.task == "regression":
        # Start the output at the targets' mean: raw targets far from 0 otherwise take
        # many epochs of steps of size ~lr just to shift the output bias.
        model.layers[-1].b[...] = T.mean(axis=0)

    if validation_data is not None and validation_split is not None:
        raise ValueError("give validation_split or validation_data, not both")
    Xv = Tv = labels_v = None
    if validation_split is not None:
        if not (isinstance(validation_split, float) and 0 < validation_split < 1):
            raise ValueError(f"validation_split must be a float in (0, 1), got "
                             f"{validation_split!r}")
        n_val = int(math.ceil(validation_split * n))
        if n_val >= n:
            raise ValueError(f"validation_split={validation_split} leaves no training "
                             f"sample out of {n}")
        perm = model._rng.permutation(n)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        Xv, Tv = X[val], T[val]
        labels_v = None if labels is None else labels[val]
        X, T = X[train], T[train]
        labels = None if labels is None else labels[train]
        n = len(X)
    elif validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        Xv = model._check_X(validation_data[0])
        Tv, labels_v = prepare_targets(model, validation_data[1], len(Xv))

    stopper = _early_stopping(early_stopping, Xv is not None)
    health_cfg = GradientHealth() if health is True else (health or None)
    monitor = _HealthMonitor(health_cfg, model) if health_cfg is not None else None
    callbacks = list(callbacks or [])
    schedule = lr_schedule
    opt.bind(model.params, model.backend)
    loss_kernel = get_kernel("loss_forward", model.backend)
    history = History()
    model.history_ = history
    layers = _plan_layers(model)
    n_layers = len(layers)
    best, wait, best_params = math.inf, 0, None
    bar = _progress(verbose, epochs)
    runner = None
    cache = model.__dict__.setdefault("_runner_cache", {})
    diag_rows = X[:health_cfg.sample_rows] if health_cfg else X[:2048]
    diag_labels = None if labels is None else labels[:len(diag_rows)]
    metric = "r2" if model.task == "regression" else "accuracy"
    # The end-of-epoch pass over diag_rows (a forward of up to 2048 rows) costs as much as
    # several batches of a small net: run it only when something reads what it gives.
    diagnose = health_cfg is not None or (stopper is not None and stopper.monitor == metric)
    flops = batch_matmul_flops(layers, batch_size)
    busy = flops >= BLAS_SINGLE_THREAD_FLOPS and machine_busy()
    # threadpoolctl applies its limits when the limiter is made: make it right here
    threads = blas_thread_limit(layers, batch_size, busy)
    # After the first epoch (which picks the runner), a runner with a block form runs the
    # rest in blocks of epochs, one call each, when nothing reads or acts between epochs
    # (callbacks only where they promise quiet epochs): the same training, batches and
    # history (tested), without the per-epoch Python.
    blockable = (stopper is None and not diagnose and Xv is None and schedule is None
                 and bar is None and verbose == 0 and monitor is None
                 and X.flags.c_contiguous and T.flags.c_contiguous)
    blocks = False
    ordered = False  # whether the runner gathers each epoch's rows itself (its block form)
    drawn: dict[int, np.ndarray] = {}  # a callable shuffle's orders of a block put back

    def order_of(epoch: int) -> np.ndarray | None:
        """Epoch `epoch`'s row order, each drawn once, in epoch order (None: unshuffled)."""
        if epoch in drawn:
            return drawn.pop(epoch)
        if not shuffle:
            return None
        if not callable(shuffle):
            return model._rng.permutation(n)
        perm = np.array(shuffle(epoch))  # a copy: drawn ahead, it must not change
        if perm.shape != (n,):
            raise ValueError(f"shuffle(epoch) must return a permutation of range({n}), "
                             f"got an array of shape {perm.shape}")
        return perm

    threads.__enter__()
    try:
        epoch = 0
        while epoch < epochs:
            count = (min(_block_length(callbacks, epoch, epochs - epoch),
                         _block_cap(n, batch_size, n_layers)) if blocks else 0)
            if count:
                rng_state = model._rng.bit_generator.state
                orders = [order_of(epoch + i) for i in range(count)]
                block_logs = _fit_block(model, runner, layers, X, T, batch_size, opt,
                                        clip_norm, clip_value, cache, orders)
                if block_logs is None:  # a non-finite batch: replay epoch by epoch
                    blocks = False
                    if callable(shuffle):  # the caller's stream: its orders, kept
                        drawn.update(zip(range(epoch, epoch + count), orders))
                    else:  # the model's stream, put back: the replay draws them again
                        model._rng.bit_generator.state = rng_state
                    continue
                stop = False
                for logs in block_logs:
                    history.append(epoch, logs)
                    stop = _end_of_epoch(callbacks, epoch, logs)
                    epoch += 1
                    if stop:
                        break
                if stop:
                    history.stopped_early = True
                    break
                continue
            epoch_lr = opt.lr if schedule is None else float(schedule(epoch, opt.lr))
            perm = order_of(epoch)
            plan = None
            if perm is not None and ordered:
                # the runner's block form, one epoch: it gathers the rows in the epoch's
                # order itself (the same batches, the same bits as the rows taken here),
                # sparing the copy of X and T (~40 us an epoch of digits: 6% of its fit)
                plan = EpochPlan(layers, model.params, model.grads, model.layer_slices, X,
                                 T, batch_size, model.loss_spec, opt, epoch_lr, clip_norm,
                                 clip_value, model.backend, cache=cache)
                plan.batch_loss = np.zeros(plan.n_batches)
                plan.grad_sq = np.zeros((plan.n_batches, n_layers))
                order = np.ascontiguousarray(perm, dtype=np.int64).reshape(1, n)
                if runner.train_epochs(plan, order) != 1:
                    plan = None  # a non-finite batch, put back: the epoch below reports it
            if plan is None:
                # np.take: ~2x faster than X[perm] on small arrays (measured; out= would
                # make it buffer the result to check the indices, slower still)
                Xs, Ts = (X, T) if perm is None else (np.take(X, perm, axis=0),
                                                      np.take(T, perm, axis=0))
                plan = EpochPlan(layers, model.params, model.grads, model.layer_slices, Xs,
                                 Ts, batch_size, model.loss_spec, opt, epoch_lr, clip_norm,
                                 clip_value, model.backend, cache=cache)
                plan.batch_loss = np.zeros(plan.n_batches)
                plan.grad_sq = np.zeros((plan.n_batches, n_layers))
                if runner is None:
                    runner = _epoch_runner(model, plan, batch_callbacks=False, fused=fused)
                    history.runner = ("layers" if runner is train_epoch_layers
                                      or getattr(runner, "layer_by_layer", False) else "fused")
                    ordered = (getattr(runner, "train_epochs", None) is not None
                               and X.flags.c_contiguous and T.flags.c_contiguous)
                    splits = getattr(runner, "splits_batches", None)
                    if (flops >= BLAS_SINGLE_THREAD_FLOPS and not busy and splits
                            and splits(plan)):
                        # The runner shares batches among its own threads: BLAS on one for
                        # the rest of fit too, or the multi-threaded calls between epochs
                        # (the diagnostics' forward) leave its pool spinning (~100 ms), and
                        # the runner, finding the cores taken, runs its parts on one thread.
                        threads.__exit__(None, None, None)
                        threads = one_blas_thread()
                        threads.__enter__()
                snapshot = model.params.copy()
                done = runner(plan)
                if done < plan.n_batches:
                    _raise_nonfinite(model, plan, epoch, done, snapshot, runner)
            losses, norms = _epoch_summaries(plan.batch_loss, plan.grad_sq, batch_size, n)
            logs: dict[str, Any] = {"loss": float(losses[0])}
            if diagnose:
                logits, dead, saturated = _diagnose(model, diag_rows, runner)
                logs[metric] = score_logits(model, logits, T[:len(diag_rows)], diag_labels)
            if Xv is not None:
                zv = _layer_outputs(model, Xv, [None] * n_layers, runner)[0]
                logs["val_loss"] = loss_kernel(model.loss_spec, zv, Tv)
                logs["val_" + metric] = score_logits(model, zv, Tv, labels_v)
            logs["lr"] = epoch_lr
            logs["grad_norm"] = norms[0].tolist()
            if diagnose:
                logs["dead_relu"], logs["saturated"] = dead, saturated
            history.append(epoch, logs)
            if monitor is not None:
                monitor.check(epoch, logs["grad_norm"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("loss", metric) if k in logs})
            elif verbose >= 1:
                shown = "  ".join(f"{k}={v:.4g}" for k, v in logs.items()
                                  if isinstance(v, float))
                print(f"epoch {epoch + 1}/{epochs}  {shown}")
            stop = False
            if stopper is not None:
                if stopper.monitor not in logs:
                    raise ValueError(f"early stopping monitors {stopper.monitor!r}, which "
                                     f"this {model.task} model does not log")
                # losses fall, metrics (accuracy, r2) rise: compare on a falling scale
                sign = 1.0 if stopper.monitor.endswith("loss") else -1.0
                value = sign * logs[stopper.monitor]
                if value < best - stopper.min_delta:
                    best, wait, history.best_epoch = value, 0, epoch
                    if stopper.restore_best_weights:
                        best_params = model.params.copy()
                else:
                    wait += 1
                    stop = wait >= stopper.patience
            if _end_of_epoch(callbacks, epoch, logs):
                stop = True
            if stop:
                history.stopped_early = True
                break
            if epoch == 0 and blockable:
                blocks = getattr(runner, "train_epochs", None) is not None
            epoch += 1
    finally:
        threads.__exit__(None, None, None)
        if bar is not None:
            bar.close()
    if best_params is not None:
        model.params[...] = best_params
    return history


def _epoch_summaries(batch_loss: np.ndarray, grad_sq: np.ndarray, batch_size: int,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, of E epochs of n rows whose batches' losses are batch_loss (E * nb,) and
    squared gradient norms grad_sq (E * nb, L): the loss (the batches' losses weighted by
    their rows, / n) and the per-layer gradient norm (the root mean square over batches),
    (E,) and (E, L). One formula for one epoch and for a block, so both log the same."""
    nb = -(-n // batch_size)
    sizes = np.full(nb, batch_size, np.float64)
    sizes[-1] = n - batch_size * (nb - 1)
    losses = (batch_loss.reshape(-1, nb) * sizes).sum(axis=1) / n
    norms = np.sqrt(grad_sq.reshape(-1, nb, grad_sq.shape[1]).mean(axis=1))
    return losses, norms


def _end_of_epoch(callbacks: Sequence, epoch: int, logs: dict[str, Any]) -> bool:
    """Every callback, in order, on epoch `epoch`'s logs; True when one asks to stop."""
    stop = False
    for cb in callbacks:
        if getattr(cb, "on_epoch_end", cb)(epoch, logs):
            stop = True
    return stop


# Largest block of epochs fit runs in one call: its row orders (E x n int64) and batch
# records stay below ~8 MiB, and a block of a small net lasts well under a second.
_BLOCK_ELEMENTS = 1 << 20


def _block_cap(n: int, batch_size: int, n_layers: int) -> int:
    """The most epochs of n rows one block may hold (_BLOCK_ELEMENTS)."""
    return max(1, _BLOCK_ELEMENTS // max(n, -(-n // batch_size) * n_layers))


def _block_length(callbacks: Sequence, epoch: int, remaining: int) -> int:
    """How many epochs from `epoch` on fit may run as one block: the remaining ones, as
    long as every callback promises them quiet (its quiet_epochs(epoch); a callback
    without one promises none)."""
    for cb in callbacks:
        quiet = getattr(cb, "quiet_epochs", None)
        promised = quiet(epoch) if quiet is not None else 0  # may be inf
        if isinstance(promised, bool) or not isinstance(promised, numbers.Real):
            raise TypeError(f"{type(cb).__name__}.quiet_epochs({epoch}) must return a number "
                            f"of epochs (an int, or math.inf), got {promised!r}")
        remaining = min(remaining, promised) if promised >= 0 else 0  # NaN: none
    return max(int(remaining), 0)


def _fit_block(model: Sequential, runner: Any, layers: list[tuple], X: np.ndarray,
               T: np.ndarray, batch_size: int, opt: Optimizer, clip_norm: float | None,
               clip_value: float | None, cache: dict,
               orders: list[np.ndarray | None]) -> list[dict[str, Any]] | None:
    """len(orders) epochs of fit, rows in the given orders (None: unshuffled), in one call
    of the runner's block form; their logs as fit logs them, or None when one met a
    non-finite batch (the runner put the weights and optimizer state back: fit replays
    them epoch by epoch, in the same orders, and reports the failure)."""
    n = len(X)
    nb = -(-n // batch_size)
    count = len(orders)
    block = (np.stack(orders).astype(np.int64, copy=False) if orders[0] is not None
             else np.zeros((count, 0), np.int64))
    plan = EpochPlan(layers, model.params, model.grads, model.layer_slices, X, T, batch_size,
                     model.loss_spec, opt, opt.lr, clip_norm, clip_value, model.backend,
                     cache=cache)
    plan.batch_loss = np.zeros(count * nb)
    plan.grad_sq = np.zeros((count * nb, len(layers)))
    if runner.train_epochs(plan, block) < count:
        return None
    losses, norms = _epoch_summaries(plan.batch_loss, plan.grad_sq, batch_size, n)
    return [{"loss": float(losses[i]), "lr": opt.lr, "grad_norm": norms[i].tolist()}
            for i in range(count)]


def _early_stopping(spec, has_validation: bool) -> EarlyStopping | None:
    if spec is None or spec is False:
        return None
    if isinstance(spec, bool):
        stopper = EarlyStopping()
    elif isinstance(spec, (int, np.integer)):
        stopper = EarlyStopping(patience=int(spec))
    elif isinstance(spec, dict):
        stopper = EarlyStopping(**spec)
    elif isinstance(spec, EarlyStopping):
        stopper = EarlyStopping(**vars(spec))
    else:
        raise TypeError(f"early_stopping must be an EarlyStopping, a patience (int), a "
                        f"dict or None, got {type(spec).__name__}")
    if stopper.monitor is None:
        stopper.monitor = "val_loss" if has_validation else "loss"
    if stopper.monitor.startswith("val_") and not has_validation:
        raise ValueError(f"early stopping monitors {stopper.monitor!r} but there is no "
                         "validation data (give validation_split or validation_data)")
    known = ("loss", "accuracy", "r2")
    if stopper.monitor not in known + tuple("val_" + k for k in known):
        raise ValueError(f"early stopping can monitor loss, accuracy or r2 (with val_ "
                         f"for the validation data), got {stopper.monitor!r}")
    return stopper


def _raise_nonfinite(model: Sequential, plan: EpochPlan, epoch: int, batch: int,
                     snapshot: np.ndarray, runner: Any = None) -> None:
    B = plan.batch_size
    xb = plan.X[batch * B:(batch + 1) * B]
    loss_value = plan.batch_loss[batch]
    row = plan.grad_sq[batch]
    if math.isfinite(loss_value):
        bad = [k for k in range(len(row)) if not np.isfinite(
            plan.grads[plan.layer_slices[k]]).all()]
        layer = max(bad) if bad else None  # backprop runs from the last layer down
        what, detail = "gradient", "a NaN or infinite gradient"
    else:
        layer = _first_nonfinite_layer(model, xb, runner)
        what, detail = "loss", f"a non-finite loss ({loss_value})"
    if not np.isfinite(model.params).all():  # the last update broke them: roll it back
        for fallback in (plan.last_good, snapshot):
            if fallback is not None and np.isfinite(fallback).all():
                model.params[...] = fallback
                break
    where = "" if layer is None else f", layer {layer} ({model.layers[layer]!r})"
    raise NonFiniteError(
        f"training stopped at epoch {epoch}, batch {batch} (counted from 0){where}: "
        f"{detail}. The model keeps its last finite weights; lower lr, set clip_norm=, "
        f"or check the data's scale.", epoch, batch, layer, what)
