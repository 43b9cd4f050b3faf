"""Optimizers and learning-rate schedules.

Each optimizer owns its state arrays (momentum, moment estimates) and updates a flat
parameter vector in place with ONE compiled kernel call per step (the backend's
``sgd_update`` / ``adam_update`` / ``rmsprop_update``, see `fastgrad.backends`): the
trainer keeps every weight and bias of a model as views into one flat buffer, so a step
is a single fused pass whatever the depth.

The update formulas are PyTorch's (torch.optim, dampening 0, not centered, no amsgrad);
g is the gradient, p the parameter, t the step count from 1:

- SGD: g += wd p; with momentum: v = mu v + g, then g = g + mu v (Nesterov) or g = v;
  p -= lr g.
- Adam: g += wd p (L2 penalty); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
- AdamW: Adam with decoupled weight decay: p *= 1 - lr wd before the Adam step
  (and no wd in g).
- RMSprop: g += wd p; s = alpha s + (1 - alpha) g^2; u = g / (sqrt(s) + eps);
  with momentum: b = mu b + u, u = b; p -= lr u.

Weight decay has two conventions, chosen by ``decay``: "pytorch" (the default, above: wd p
on every parameter, weights and biases, no penalty in the loss) and "sklearn"
(scikit-learn's MLP L2 penalty, not for AdamW): g_W += wd W / r on the weight matrices
only, r the rows of the batch (the last batch of an epoch may be shorter), and the penalty
0.5 wd sum_k ||W_k||^2 / r joins the batch loss. Only the epoch runners know a batch's rows
and which parameters are weights, so with "sklearn" they apply it (`Optimizer.penalize`,
or the fused kernel's own equivalent) and `step` adds no decay itself.

Schedules map (epoch, base_lr) -> lr, epoch counted from 0; the trainer applies them at
the start of every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backends import get_backend, get_kernel


def _nonneg(name: str, value: Any, upper: float | None = None, open_upper: bool = False,
            positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    bad = not math.isfinite(v) or v < 0 or (positive and v == 0)
    if upper is not None:
        bad = bad or v > upper or (open_upper and v == upper)
    if bad:
        rng = "> 0" if positive else ">= 0"
        if upper is not None:
            rng += f" and {'<' if open_upper else '<='} {upper}"
        raise ValueError(f"{name} must be finite and {rng}, got {value!r}")
    return v


class Optimizer:
    """Base class: holds lr and weight decay, allocates the state on `bind`, and applies
    `step(params, grads, lr)` to a flat parameter vector in place."""

    name = "optimizer"
    default_lr = 1e-3
    kernel = ""

    def __init__(self, lr: float | None = None, weight_decay: float = 0.0,
                 decay: str = "pytorch") -> None:
        self.lr = _nonneg("lr", self.default_lr if lr is None else lr, positive=True)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(map(repr, DECAYS))}, got "
                             f"{decay!r}")
        self.decay = decay
        self.steps = 0
        self._size: int | None = None
        self._update = None

    state_names: tuple[str, ...] = ()
    """The attributes holding the optimizer's state arrays (one per parameter each)."""

    def bind(self, params: np.ndarray, backend: str | None = None) -> None:
        """Allocate the state for `params` (1-D float array) unless already bound to the
        same size and dtype on the same side (so a second fit continues with the same
        moments), and pick the backend's update kernel. On a device backend (cuda) the
        state is allocated on the device, zeroed there, and `step` takes device arrays."""
        module = get_backend(backend)
        device = getattr(module, "DEVICE", False)
        key = (params.size, np.dtype(params.dtype), device)
        if self._size != key:
            self._size = key
            self.steps = 0
            for name in self.state_names:
                setattr(self, name, module.zeros(params.size, params.dtype) if device
                        else np.zeros_like(params))
        self._update = get_kernel(self.kernel, backend)

    def state(self) -> list:
        """The state arrays, in `state_names` order (host or device arrays)."""
        return [getattr(self, name) for name in self.state_names]

    @property
    def _step_decay(self) -> float:
        """The weight decay `step` applies itself (none with decay="sklearn")."""
        return self.weight_decay if self.decay == "pytorch" else 0.0

    def penalize(self, params: np.ndarray, grads: np.ndarray, rows: int,
                 weight_slices: list[slice]) -> float:
        """decay="sklearn": add wd * W / rows to the gradient of every weight matrix
        (weight_slices: their places in the flat params / grads) and return the batch's
        penalty 0.5 * wd * sum ||W||^2 / rows, from the weights before the update; the
        epoch runners call it once per batch, before `step`. decay="pytorch": 0.0, nothing
        changed (step applies that decay)."""
        if self.decay != "sklearn" or not self.weight_decay:
            return 0.0
        scale = grads.dtype.type(self.weight_decay / rows)
        sq = 0.0
        for s in weight_slices:
            w = params[s]
            w_sq = float(np.dot(w, w))
            if not math.isfinite(w_sq):  # float32 squares overflow first: redo in float64
                w64 = w.astype(np.float64)  # (as the fused runners sum them, in double)
                w_sq = float(np.dot(w64, w64))
            sq += w_sq
            grads[s] += scale * w
        return 0.5 * self.weight_decay * sq / rows

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None) -> None:
        """One update of `params` in place from `grads` (same shape and dtype)."""
        self.steps += 1
        self._apply(params, grads, self.lr if lr is None else lr)

    def _apply(self, params, grads, lr) -> None:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The hyperparameters (for repr and for saving)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")
                and k != "steps" and k not in self.state_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


DECAYS = ("pytorch", "sklearn")  # weight-decay conventions (module docstring)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    name = "sgd"
    default_lr = 1e-2
    kernel = "sgd_update"
    state_names = ("velocity",)

    def __init__(self, lr: float | None = None, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 decay: str = "pytorch") -> None:
        super().__init__(lr, weight_decay, decay)
        self.momentum = _nonneg("momentum", momentum, upper=1.0, open_upper=True)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _apply(self, params, grads, lr):
        self._update(params, grads, self.velocity, lr, self.momentum, self._step_decay,
                     self.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is an L2 penalty on g."""

    name = "adam"
    kernel = "adam_update"
    state_names = ("m", "v")
    decoupled = False

    def __init__(self, lr: float | None = None, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, decay: str = "pytorch") -> None:
        super().__init__(lr, weight_decay, decay)
        if self.decoupled and decay != "pytorch":
            raise ValueError("AdamW's weight decay is decoupled (p *= 1 - lr wd): "
                             "decay='sklearn' needs Adam, SGD or RMSprop")
        self.beta1 = _nonneg("beta1", beta1, upper=1.0, open_upper=True)
        self.beta2 = _nonneg("beta2", beta2, upper=1.0, open_upper=True)
        self.eps = _nonneg("eps", eps, positive=True)

    def _apply(self, params, grads, lr):
        self._update(params, grads, self.m, self.v, lr, self.beta1, self.beta2, self.eps,
                     self._step_decay, self.decoupled, self.steps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr wd per step."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float | None = None, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, decay: str = "pytorch") -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay, decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton), eps outside the square root as in PyTorch; optional momentum."""

    name = "rmsprop"
    default_lr = 1e-2
    kernel = "rmsprop_update"
    state_names = ("square_avg", "momentum_buf")

    def __init__(self, lr: float | None = None, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0,
                 decay: str = "pytorch") -> None:
        super().__init__(lr, weight_decay, decay)
        self.alpha = _nonneg("alpha", alpha, upper=1.0)
        self.eps = _nonneg("eps", eps, positive=True)
        self.momentum = _nonneg("momentum", momentum, upper=1.0, open_upper=True)

    def _apply(self, params, grads, lr):
        self._update(params, grads, self.square_avg, self.momentum_buf, lr, self.alpha,
                     self.eps, self._step_decay, self.momentum)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop)}


def make_optimizer(optimizer: str | Optimizer, lr: float | None = None,
                   **params: Any) -> Optimizer:
    """An Optimizer from a name ("sgd", "adam", "adamw", "rmsprop") and its parameters,
    or `optimizer` itself when it is one (lr then overrides its lr when given)."""
    if isinstance(optimizer, Optimizer):
        if params:
            raise TypeError(f"optimizer parameters {sorted(params)} given with an "
                            "Optimizer instance; set them on the instance")
        if lr is not None:
            optimizer.lr = _nonneg("lr", lr, positive=True)
        return optimizer
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[optimizer.lower()]
    try:
        return cls(lr=lr, **params)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            import inspect
            allowed = [p for p in inspect.signature(cls).parameters if p != "lr"]
            raise TypeError(f"{cls.__name__} got unexpected parameter(s) "
                            f"{sorted(set(params) - set(allowed))}; it takes: "
                            f"{', '.join(allowed)}") from None
        raise


# --- learning-rate schedules: (epoch from 0, base lr) -> lr ----------------------------

class Schedule:
    """A learning-rate schedule: `schedule(epoch, base_lr)` is the lr of that epoch."""

    def __call__(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class StepLR(Schedule):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if int(step_size) < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _nonneg("gamma", gamma, positive=True)

    def __call__(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(Schedule):
    """Cosine annealing from base_lr to min_lr over total_epochs, then min_lr:
    lr = min_lr + (base_lr - min_lr) (1 + cos(pi min(epoch, T) / T)) / 2."""

    def __init__(self, total_epochs: int, min_lr: float = 0.0) -> None:
        if int(total_epochs) < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs!r}")
        self.total_epochs = int(total_epochs)
        self.min_lr = _nonneg("min_lr", min_lr)

    def __call__(self, epoch, base_lr):
        frac = min(epoch, self.total_epochs) / self.total_epochs
        return self.min_lr + (base_lr - self.min_lr) * (1.0 + math.cos(math.pi * frac)) / 2


class WarmupLR(Schedule):
    """Linear warmup: lr = base_lr (epoch + 1) / warmup_epochs for the first
    warmup_epochs epochs, then `after(epoch - warmup_epochs, base_lr)` (constant base_lr
    when `after` is None)."""

    def __init__(self, warmup_epochs: int, after: Schedule | None = None) -> None:
        if int(warmup_epochs) < 1:
            raise ValueError(f"warmup_epochs must be >= 1, got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)
        self.after = after

    def __call__(self, epoch, base_lr):
        if epoch < self.warmup_epochs:
            return base_lr * (epoch + 1) / self.warmup_epochs
        return base_lr if self.after is None else self.after(epoch - self.warmup_epochs,
                                                             base_lr)
