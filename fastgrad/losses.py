"""THE loss table: every loss declared once, like the activation table.

A `LossSpec` says what the loss computes (formula, gradient), which output activation
turns the network's raw outputs into predictions (the loss itself always takes the raw
outputs: logits for the classification losses, so they stay stable for any logit), and,
for elementwise losses, the one-number formulas the compiled backends build their loops
from. Every backend implements ``loss_forward`` / ``loss_backward`` for each entry; the
tests are written once over this table.

Conventions (scikit-learn's for the value, PyTorch's ``reduction="mean"`` for the rest):

- ``mse``: L = 0.5 * mean over all N*K elements of (p - t)^2; dL/dp = (p - t) / (N*K).
  With one output this is scikit-learn's ``squared_error`` loss exactly (half the mean
  squared error, so its gradient is the plain residual averaged over the batch).
- ``binary_cross_entropy``: from logits z, L = mean of max(z, 0) - z t + log1p(exp(-|z|));
  dL/dz = (sigmoid(z) - t) / (N*K). Equal to PyTorch's ``BCEWithLogitsLoss``.
- ``cross_entropy``: softmax + cross-entropy fused, from logits z (N, C) and targets t
  (N, C) whose rows sum to 1 (one-hot; integer class indices are turned into one-hot by
  the public API). L = mean over rows of sum_k t_k (logsumexp(z) - z_k);
  dL/dz = (softmax(z) - t) / N. log(0) is never formed. Equal to PyTorch's
  ``CrossEntropyLoss`` with class indices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .scalar_math import exp, log1p, sigmoid_value


@dataclass(frozen=True)
class LossSpec:
    """Declaration of one loss.

    name: canonical name. aliases: other accepted names.
    output: the activation that turns raw outputs into predictions ("identity",
    "sigmoid", "softmax"). task: the learning task it serves.
    rowwise: True when it couples the outputs of a row (cross_entropy), False when it is
    a mean of per-element terms.
    scalar_value(p, t) / scalar_grad(p, t): the per-element term and its derivative
    (before division by the element count), for elementwise losses; None for row-wise.
    formula, gradient: the math, for docs and error messages.
    """

    name: str
    output: str
    task: str
    formula: str
    gradient: str
    aliases: tuple[str, ...] = ()
    rowwise: bool = False
    scalar_value: Callable | None = None
    scalar_grad: Callable | None = None


# Per-element formulas, compiled by the numba backend through scalar_math.compile_scalar
# (exp, log1p and sigmoid_value are rebound to the target's compiled versions).

def mse_value(p, t):
    d = p - t
    return 0.5 * d * d


def mse_grad(p, t):
    return p - t


def bce_value(z, t):
    # max(z, 0) - z t + log1p(exp(-|z|)): exp never overflows, log never sees 0.
    return (0.0 if z < 0 else z) - z * t + log1p(exp(-abs(z)))


def bce_grad(z, t):
    return sigmoid_value(z) - t


_SPECS = [
    LossSpec(
        "mse", output="identity", task="regression",
        aliases=("squared_error", "mean_squared_error", "l2"),
        formula="L = 0.5 * mean((p - t)^2) over all elements",
        gradient="dL/dp = (p - t) / (N*K)",
        scalar_value=mse_value, scalar_grad=mse_grad,
    ),
    LossSpec(
        "binary_cross_entropy", output="sigmoid", task="binary",
        aliases=("bce", "log_loss", "binary_crossentropy"),
        formula="L = mean(max(z, 0) - z t + log1p(exp(-|z|))), z the logits",
        gradient="dL/dz = (sigmoid(z) - t) / (N*K)",
        scalar_value=bce_value, scalar_grad=bce_grad,
    ),
    LossSpec(
        "cross_entropy", output="softmax", task="multiclass", rowwise=True,
        aliases=("ce", "categorical_cross_entropy", "softmax_cross_entropy"),
        formula="L = mean over rows of sum_k t_k (logsumexp(z) - z_k), z the logits",
        gradient="dL/dz = (softmax(z) - t) / N",
    ),
]

LOSSES: Mapping[str, LossSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Canonical name -> LossSpec, in declaration order."""

_LOOKUP = {alias: s for s in _SPECS for alias in (s.name, *s.aliases)}

LOSS_FOR_OUTPUT = MappingProxyType({s.output: s for s in _SPECS})
"""Output activation -> the loss trained through it (identity: mse, sigmoid: BCE,
softmax: cross-entropy)."""


def get_loss(name: str | LossSpec) -> LossSpec:
    """The spec for a name or alias; ValueError naming the known ones otherwise."""
    if isinstance(name, LossSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name (str), got {type(name).__name__}")
    spec = _LOOKUP.get(name.lower())
    if spec is None:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(_LOOKUP))}")
    return spec
