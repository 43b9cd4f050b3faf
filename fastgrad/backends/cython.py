"""The `cython` backend: a thin adapter over the compiled module fastgrad._kernels.

Each activation and each loss in the tables maps, by name, to its compiled kernel id; the
optimizer updates are the compiled entry points themselves (same signatures as the
interface). The compiled entry points validate again (they must never run out of bounds
when called directly) and choose serial or threaded loops by size. The backend interface
is documented in `fastgrad.backends`: this backend has every kernel it names, so
`get_kernel` never serves it from another backend.
"""

from __future__ import annotations

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
