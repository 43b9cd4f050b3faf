"""The `cython` backend: a thin adapter over the compiled module fastgrad._kernels.

Each activation and each loss in the tables maps, by name, to its compiled kernel id; the
optimizer updates are the compiled entry points themselves (same signatures as the
interface). The compiled entry points validate again (they must never run out of bounds
when called directly) and choose serial or threaded loops by size. The backend interface
is documented in `fastgrad.backends`: this backend has every kernel it names, so
`get_kernel` never serves it from another backend.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels
from ..activations import ACTIVATIONS, ActivationSpec
from ..losses import LOSSES, LossSpec

NAME = "cython"

_REQUIRED = ("activation_forward", "activation_backward", "linear_forward", "linear_backward",
             "loss_forward", "loss_backward", "sgd_update", "adam_update", "rmsprop_update")

# Activation name -> compiled kernel id; None where the module lacks one, which makes
# check_available() fail: no activation silently falls back to another backend.
_KERNEL_IDS: dict[str, int | None] = {
    name: _kernels.KERNELS.get(name) for name in ACTIVATIONS
}
# Loss name -> compiled loss id (None where missing: check_available() fails).
_LOSS_IDS: dict[str, int | None] = {
    name: getattr(_kernels, "LOSSES", {}).get(name) for name in LOSSES
}


def check_available() -> None:
    """Raise ImportError unless the compiled module has every entry point, a kernel for
    every activation in the table (with the table's row-wise flag) and one for every loss
    (likewise)."""
    missing = [k for k in _REQUIRED if not hasattr(_kernels, k)]
    missing += [f"kernel {name!r}" for name, k in _KERNEL_IDS.items() if k is None]
    missing += [f"kernel {name!r} with rowwise={spec.rowwise}"
                for name, spec in ACTIVATIONS.items()
                if _KERNEL_IDS[name] is not None and (name in _kernels.ROWWISE) != spec.rowwise]
    missing += [f"loss {name!r}" for name, k in _LOSS_IDS.items() if k is None]
    missing += [f"loss {name!r} with rowwise={spec.rowwise}"
                for name, spec in LOSSES.items()
                if _LOSS_IDS[name] is not None
                and (name in _kernels.ROWWISE_LOSSES) != spec.rowwise]
    if missing:
        raise ImportError(f"fastgrad._kernels ({_kernels.__file__}) lacks {', '.join(missing)}")


def activation_forward(spec: ActivationSpec, x, out, a: float, b: float) -> None:
    _kernels.activation_forward(_KERNEL_IDS[spec.name], x, out, a, b)


def activation_backward(spec: ActivationSpec, grad, saved, out, a: float, b: float) -> None:
    _kernels.activation_backward(_KERNEL_IDS[spec.name], grad, saved, out, a, b)


def linear_forward(x, W, bias, out, pre, spec: ActivationSpec, a: float, b: float) -> None:
    _kernels.linear_forward(_KERNEL_IDS[spec.name], x, W, bias, out, pre, a, b)


def linear_backward(grad_y, x, W, saved, spec: ActivationSpec, a: float, b: float,
                    need_grad_x: bool):
    return _kernels.linear_backward(_KERNEL_IDS[spec.name], grad_y, x, W, saved, a, b,
                                    need_grad_x)


def loss_forward(spec: LossSpec, pred, target) -> float:
    return _kernels.loss_forward(_LOSS_IDS[spec.name], pred, target)


def loss_backward(spec: LossSpec, pred, target, out) -> None:
    _kernels.loss_backward(_LOSS_IDS[spec.name], pred, target, out)


def _update(name: str):
    # The compiled entry point itself where the module has it (its signature is the
    # interface's); check_available() has already failed the backend where it lacks it.
    return getattr(_kernels, name, None)


sgd_update = _update("sgd_update")
adam_update = _update("adam_update")
rmsprop_update = _update("rmsprop_update")


# =========================================================================================
# The trainer's fused epoch runner: an adapter from `fastgrad.train.EpochPlan` to the
# compiled epochs of _kernels.train_epochs (fastgrad/_train.pxi): one call without the GIL
# per epoch, or per block of epochs.
# =========================================================================================

from . import _fit_adapter  # noqa: E402  (the section's own imports)

_OPTIMIZER_CODES = {name: i for i, name in enumerate(getattr(_kernels, "TRAIN_OPTIMIZERS", ()))}
# float32 SGD and Adam update in float32 (the "<name>_dtype" codes), as PyTorch and the numba
# runner do, when the hyper-parameters each reads are float32 numbers
_DTYPE_UPDATE_READS = {"sgd": ("lr", "momentum", "weight_decay"),
                       "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
                       "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay")}
_SAVED_CODES = {None: 0, "x": 1, "y": 2}  # an activation's `needs` -> _kernels.TRAIN_SAVED


def train_epoch_reason(plan) -> str | None:
    """Why the fused runner cannot run `plan` (a fastgrad.train.EpochPlan), or None when it
    can: what every fused runner needs (`_fit_adapter.plan_reason`: float32/float64, logits
    out of the last layer, a loss and an optimizer (exact type) with a compiled form, X and
    T C-contiguous in the parameters' dtype), and the trainer's flat layout (each layer's W
    then b, layers one after another). Any activations, mixed or row-wise; clipping and
    both weight-decay conventions; the optimizers' hyper-parameters in double, as the
    layer-by-layer kernels take them."""
    if not hasattr(_kernels, "train_epochs"):
        return f"fastgrad._kernels ({_kernels.__file__}) has no train_epochs: rebuild it"
    why = _fit_adapter.plan_reason(plan, LOSSES)
    if why is not None:
        return why
    start = 0
    for s, (W, b, *_rest) in zip(plan.layer_slices, plan.layers):
        if s.start != start or s.stop != start + W.size + b.size:
            return "the parameters are not laid out as the trainer's flat buffer"
        start = s.stop
    if start != plan.params.size:
        return "the parameters are not laid out as the trainer's flat buffer"
    return None


def supports_train_epoch(plan) -> bool:
    """Whether `train_epoch(plan)` runs this plan (see `train_epoch_reason`)."""
    return train_epoch_reason(plan) is None


class _FitAdapter(_fit_adapter.FitAdapter):
    """The compiled kernel's side of the shared adapter: its per-layer arguments (sizes,
    kernel ids, saved-tensor codes, activation parameters), the workspace, the
    hyper-parameter vector and the step counter."""

    cache_name = "cython.train_epoch"

    def __init__(self, plan, opt_name: str, state_arrays: tuple) -> None:
        super().__init__(plan, opt_name, state_arrays)
        Ws = [W for W, *_ in plan.layers]
        sizes = [Ws[0].shape[0], *(W.shape[1] for W in Ws)]
        self.sizes = np.array(sizes, np.int64)
        self.kernels = np.array([_KERNEL_IDS[spec.name] for _W, _b, spec, *_ in plan.layers],
                                np.int32)
        self.saved = np.array([_SAVED_CODES[spec.needs] for _W, _b, spec, *_ in plan.layers],
                              np.int32)
        self.act = np.array([(a, b) for *_rest, a, b in plan.layers], np.float64)
        self.ws = np.empty(0, plan.params.dtype)  # sized by _launch for its thread count
        self.hyper = np.zeros(len(_kernels.TRAIN_HYPER))
        self.step = np.zeros(1, np.int64)
        self.no_order = np.zeros((1, 0), np.int64)  # one epoch over rows in the given order
        self.switches = (0, 0, False, False)  # loss id, optimizer code, nesterov, sklearn
        self.parts = 0  # the parts of a batch the workspace is sized for (0: none yet)

    def configure(self, plan, hyper: dict, use_order: bool) -> None:
        opt = plan.optimizer
        named = _fit_adapter.hyper_values(plan, hyper)
        values = tuple(named[name] for name in _kernels.TRAIN_HYPER)
        config = (plan.loss.name, self.opt_name, values, hyper.get("nesterov", False),
                  opt.decay)
        if config != self.configured:
            self.hyper[:] = values
            code = _OPTIMIZER_CODES[self.opt_name]
            reads = _DTYPE_UPDATE_READS.get(self.opt_name)
            if reads and plan.params.dtype == np.float32 and all(
                    _fit_adapter.representable(named[name], np.float32) for name in reads):
                code = _OPTIMIZER_CODES[f"{self.opt_name}_dtype"]
            self.switches = (_LOSS_IDS[plan.loss.name], code, bool(config[3]),
                             opt.decay == "sklearn")
            self.configured = config

    def _threads(self, plan) -> tuple[int, int]:
        """(parts of each batch, threads to run them on) for the next call, the workspace
        sized for the parts. The parts on one thread (the same result) where a thread
        would wait for a core: another thread is running now, of this process (a BLAS
        pool spins ~100 ms after a multi-threaded call) or another
        (`_kernels.train_threads_free`)."""
        parts = _fit_adapter.data_parallel_parts(plan, _kernels.max_threads())
        if parts != self.parts:
            self.ws = np.empty(_kernels.train_workspace_size(
                self.sizes, plan.batch_size, plan.params.dtype, parts), plan.params.dtype)
            self.parts = parts
        free = parts > 1 and _kernels.train_threads_free(parts)
        return parts, parts if free else 1

    def _launch(self, plan, X, T, orders, batch_loss, grad_sq, parts: int,
                threads: int) -> int:
        loss, code, nesterov, sklearn = self.switches
        return _kernels.train_epochs(
            plan.params, plan.grads, self.state_arrays[0], self.state_arrays[1], X, T, orders,
            self.sizes, self.kernels, self.act, self.saved, loss, code, self.hyper, nesterov,
            sklearn, plan.batch_size, self.ws, batch_loss, grad_sq, self.step, parts, threads)

    def run(self, plan, lo: int, hi: int, step: int) -> int:
        k0 = lo // plan.batch_size
        self.step[0] = step
        done = self._launch(plan, plan.X[lo:hi], plan.T[lo:hi], self.no_order,
                            plan.batch_loss[k0:], plan.grad_sq[k0:], *self._threads(plan))
        plan.optimizer.steps = int(self.step[0])
        return k0 + done

    def run_epochs(self, plan, orders: np.ndarray, step: int) -> tuple[int, int]:
        # While the parts run on one thread for want of a free core, one epoch per call,
        # so that the threads come back with the cores rather than at the block's end.
        nb = plan.n_batches
        self.step[0] = step
        epoch = 0
        while epoch < len(orders):
            parts, threads = self._threads(plan)
            count = len(orders) - epoch if threads == parts else 1
            done = self._launch(plan, plan.X, plan.T, orders[epoch:epoch + count],
                                plan.batch_loss[epoch * nb:], plan.grad_sq[epoch * nb:],
                                parts, threads)
            if done < count * nb:
                return epoch + (done // nb if nb else count), int(self.step[0])
            epoch += count
        return len(orders), int(self.step[0])


def train_epoch(plan) -> int:
    """The fused epoch runner for `fastgrad.train.fit`: the whole epoch of `plan` (a
    fastgrad.train.EpochPlan) in one call of the compiled _kernels.train_epochs, which runs
    the layer-by-layer runner's own kernels batch after batch without the GIL; the runner
    contract of `_fit_adapter.train_epoch` (batch records, the non-finite replay)."""
    return _fit_adapter.train_epoch(_FitAdapter, plan)


def train_epochs(plan, orders: np.ndarray) -> int:
    """Several epochs of `plan` in one compiled call (fit's blocks of epochs; rows gathered
    inside the kernel in each epoch's order): `_fit_adapter.train_epochs`'s contract."""
    return _fit_adapter.train_epochs(_FitAdapter, plan, orders)


def splits_batches(plan) -> bool:
    """Whether train_epoch splits the batches of `plan` into parts on threads of its own
    (`_fit_adapter.data_parallel_parts`): fit then keeps BLAS on one thread."""
    return _fit_adapter.data_parallel_parts(plan, _kernels.max_threads()) > 1


train_epoch.train_epochs = train_epochs  # the runner's form for blocks of epochs (fit)
train_epoch.splits_batches = splits_batches
