"""Backend registry: which backends exist, which import here, and the active one.

Every backend is a module with the same kernel names; arrays reach them validated,
C-contiguous and of one float dtype (float32 or float64):

- ``activation_forward(spec, x, out, a, b)``: elementwise specs get 1-D arrays, row-wise
  specs (softmax) 2-D arrays of shape (rows, n).
- ``activation_backward(spec, grad, saved, out, a, b)``: ``saved`` is x or y as
  ``spec.needs`` says (None when nothing is needed).
- ``linear_forward(x, W, bias, out, pre, spec, a, b)``: x (N, D_in), W (D_in, D_out),
  bias (D_out,) or None, out and pre (N, D_out); pre (the pre-activation) may be None.
- ``linear_backward(grad_y, x, W, saved, spec, a, b, need_grad_x)`` ->
  ``(grad_x or None, grad_W, grad_b)``; ``saved`` is the pre-activation or y.

- ``loss_forward(spec, pred, target) -> float``: the mean loss of `spec`
  (a ``fastgrad.losses.LossSpec``); pred and target (N, K), target already one-hot for
  cross_entropy.
- ``loss_backward(spec, pred, target, out)``: writes dL/dpred (N, K) into ``out``,
  the 1/count of the mean included.
- Optimizer updates, in place on 1-D arrays of one dtype (PyTorch's formulas, see
  ``fastgrad.optim``): ``sgd_update(param, grad, velocity, lr, momentum, weight_decay,
  nesterov)``, ``adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay,
  decoupled, step)``, ``rmsprop_update(param, grad, square_avg, momentum_buf, lr, alpha,
  eps, weight_decay, momentum)``.

The loss and optimizer kernels are optional: `get_kernel` serves a CPU backend that lacks
one from the fastest available backend that has it (the numpy reference has them all).
A device backend (``DEVICE = True``, cuda) is never served another backend's kernel: its
arrays live on the device, where a CPU kernel cannot run (or would copy on every call).

A backend module may define ``check_available()``, raising with the reason it cannot run.

A device backend (``DEVICE = True``) also provides what the trainer's device runner
(`fastgrad.train_device`) needs to keep a whole epoch on the device: array movement
(``to_device``, ``to_host``, ``empty``, ``zeros``, ``upload``, ``download``,
``copy_device``), ``linear_backward_into`` (into caller-owned buffers),
``loss_forward_into`` (the mean loss into a device slot), ``segment_sumsq_into``
(per-layer squared gradient norms and non-finite counts) and ``clip_value_`` /
``clip_norm_``; see fastgrad.backends.cuda.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator
from types import ModuleType

# Fastest first on a CPU: the order available_backends() reports and the default uses.
_MODULES = {
    "cython": "fastgrad.backends.cython",
    "numba": "fastgrad.backends.numba_cpu",
    "cuda": "fastgrad.backends.cuda",
    "numpy": "fastgrad.backends.reference",
}
# cuda is never chosen implicitly: host arrays would pay transfers on every call.
_DEFAULT_ORDER = ("cython", "numba", "numpy")

_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}
_active: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastgrad_backend",
                                                                     default=None)


def _load(name: str) -> ModuleType | None:
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
        check = getattr(module, "check_available", None)
        if check is not None:
            check()
    except Exception as exc:  # any import problem means "not available", with the reason
        _failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None
    _loaded[name] = module
    return module


def backend_info() -> dict[str, dict[str, object]]:
    """Each known backend: {"available": bool, "reason": str} (reason empty when available)."""
    info = {}
    for name in _MODULES:
        ok = _load(name) is not None
        info[name] = {"available": ok, "reason": "" if ok else _failed.get(name, "")}
    return info


def available_backends() -> list[str]:
    """Names of the backends that work here, fastest first."""
    return [name for name in _MODULES if _load(name) is not None]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_MODULES)}")
    return name


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module for `name`, or the active one (set_backend / use_backend), or the
    fastest available. Raises RuntimeError naming the reason when it cannot run here."""
    if name is None:
        name = _active.get()
    if name is None:
        for candidate in _DEFAULT_ORDER:
            module = _load(candidate)
            if module is not None:
                return module
        raise RuntimeError("no fastgrad backend is available")  # numpy always is
    module = _loaded.get(name) if isinstance(name, str) else None  # every kernel call: fast path
    if module is not None:
        return module
    module = _load(_check_name(name))
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available: {_failed[name]}")
    return module


def set_backend(name: str | None) -> None:
    """Make `name` the default backend of this context (None: back to the fastest)."""
    if name is not None:
        get_backend(name)
    _active.set(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[ModuleType]:
    """``with use_backend("numba"):`` runs the block with that default backend."""
    module = get_backend(name)
    token = _active.set(name)
    try:
        yield module
    finally:
        _active.reset(token)


def get_kernel(kernel: str, name: str | None = None):
    """The function `kernel` of the backend `get_backend(name)` picks; where that backend
    lacks it (an optional kernel), the same kernel of the fastest available CPU backend
    that has it. Raises AttributeError when none has it, and when a device backend (cuda)
    lacks it: a CPU kernel handed device arrays would fail or copy on every call."""
    module = get_backend(name)
    fn = getattr(module, kernel, None)
    if fn is not None:
        return fn
    if getattr(module, "DEVICE", False):
        raise AttributeError(f"the device backend {module.NAME!r} has no kernel {kernel!r}, "
                             "and a CPU backend's cannot stand in for it: its arrays live on "
                             "the device")
    for candidate in _DEFAULT_ORDER:
        module = _load(candidate)
        fn = None if module is None else getattr(module, kernel, None)
        if fn is not None:
            return fn
    raise AttributeError(f"no available fastgrad backend provides the kernel {kernel!r}")
