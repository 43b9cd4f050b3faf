"""THE activation table: every activation declared once.

Each `ActivationSpec` says what the function is (formula, derivative), what it takes
(parameters with defaults, encoded into two floats `a`, `b` for the compiled kernels),
what its backward needs saved (the input ``"x"``, the output ``"y"``, or nothing), and
whether it works elementwise or along the last axis. The public API, every backend and
the test suite are driven by this table: an activation added here is exposed as
``fastgrad.<name>_forward`` / ``<name>_backward`` and tested on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import scalar_math


@dataclass(frozen=True)
class ActivationSpec:
    """Declaration of one activation.

    name: canonical name. aliases: other accepted names.
    params: parameter name -> default. encode: params -> (a, b) floats for the kernels.
    needs: what backward needs saved: "x" (input), "y" (output) or None.
    rowwise: True when it acts along the last axis (softmax), False when elementwise.
    formula, derivative: the math, for docs and error messages.
    scalar_forward, scalar_backward: the one-number formulas the compiled Python backends
    build their loops from (None for row-wise activations, which have their own kernels).
    """

    name: str
    formula: str
    derivative: str
    needs: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    encode: Callable[[Mapping[str, Any]], tuple[float, float]] = lambda p: (0.0, 0.0)
    aliases: tuple[str, ...] = ()
    rowwise: bool = False
    scalar_forward: Callable | None = None
    scalar_backward: Callable | None = None

    def bind(self, given: Mapping[str, Any], *, func: str | None = None) -> dict[str, Any]:
        """Defaults updated with `given`; unknown names raise TypeError."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            where = func or self.name
            allowed = ", ".join(self.params) or "none"
            raise TypeError(
                f"{where}() got unexpected parameter(s) {', '.join(unknown)}; "
                f"{self.name} takes: {allowed}"
            )
        bound = dict(self.params)
        bound.update(given)
        return bound

    def encoded(self, given: Mapping[str, Any], *, func: str | None = None) -> tuple[float, float]:
        """The (a, b) floats the kernels take, from user parameters (validated)."""
        a, b = self.encode(self.bind(given, func=func))
        return float(a), float(b)


def _finite_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"parameter {name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"parameter {name} must be finite, got {value!r}")
    return v


def _encode_gelu(p: Mapping[str, Any]) -> tuple[float, float]:
    approximate = p["approximate"]
    if approximate not in ("none", "tanh"):
        raise ValueError(f"parameter approximate must be 'none' or 'tanh', got {approximate!r}")
    return (0.0 if approximate == "none" else 1.0), 0.0


def _encode_binary_step(p: Mapping[str, Any]) -> tuple[float, float]:
    return _finite_float("threshold", p["threshold"]), (1.0 if p["straight_through"] else 0.0)


def _one(name: str) -> Callable[[Mapping[str, Any]], tuple[float, float]]:
    return lambda p: (_finite_float(name, p[name]), 0.0)


def _elementwise(name: str, **kwargs: Any) -> ActivationSpec:
    return ActivationSpec(
        name=name,
        scalar_forward=getattr(scalar_math, f"{name}_forward"),
        scalar_backward=getattr(scalar_math, f"{name}_backward"),
        **kwargs,
    )


_SPECS = [
    _elementwise(
        "identity", aliases=("linear", "none"), needs=None,
        formula="f(x) = x", derivative="f'(x) = 1",
    ),
    _elementwise(
        "binary_step", aliases=("step", "heaviside"), needs=None,
        params={"threshold": 0.0, "straight_through": False}, encode=_encode_binary_step,
        formula="f(x) = 1 if x >= threshold else 0",
        derivative="f'(x) = 0 (straight_through=True passes grad_out through unchanged)",
    ),
    _elementwise(
        "sigmoid", aliases=("logistic",), needs="y",
        formula="f(x) = 1 / (1 + exp(-x))", derivative="f'(x) = y (1 - y)",
    ),
    _elementwise(
        "tanh", needs="y", formula="f(x) = tanh(x)", derivative="f'(x) = 1 - y^2",
    ),
    _elementwise(
        "relu", needs="x", formula="f(x) = max(x, 0)", derivative="f'(x) = 1 if x > 0 else 0",
    ),
    _elementwise(
        "leaky_relu", needs="x", params={"alpha": 0.01}, encode=_one("alpha"),
        formula="f(x) = x if x >= 0 else alpha x",
        derivative="f'(x) = 1 if x >= 0 else alpha",
    ),
    _elementwise(
        "elu", needs="x", params={"alpha": 1.0}, encode=_one("alpha"),
        formula="f(x) = x if x > 0 else alpha (exp(x) - 1)",
        derivative="f'(x) = 1 if x >= 0 else alpha exp(x)",
    ),
    ActivationSpec(
        "softmax", needs="y", rowwise=True,
        formula="f(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)  (over the last axis)",
        derivative="J = diag(y) - y y^T;  grad_x = y * (g - sum(g * y))",
    ),
    ActivationSpec(
        "log_softmax", needs="y", rowwise=True,
        formula="f(x)_i = x_i - max x - log sum_j exp(x_j - max x)  (over the last axis)",
        derivative="grad_x = g - exp(y) * sum(g)",
    ),
    _elementwise(
        "swish", aliases=("silu",), needs="x", params={"beta": 1.0}, encode=_one("beta"),
        formula="f(x) = x sigmoid(beta x)",
        derivative="f'(x) = s + beta x s (1 - s),  s = sigmoid(beta x)",
    ),
    _elementwise(
        "gelu", needs="x", params={"approximate": "none"}, encode=_encode_gelu,
        formula="f(x) = x Phi(x)  (approximate='tanh': "
        "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))",
        derivative="f'(x) = Phi(x) + x phi(x)  (and the tanh form's derivative)",
    ),
    _elementwise(
        "softplus", needs="x",
        formula="f(x) = log(1 + exp(x)) = log1p(exp(-|x|)) + max(x, 0)",
        derivative="f'(x) = sigmoid(x)",
    ),
    _elementwise(
        "selu", needs="x",
        formula="f(x) = scale (x if x > 0 else alpha (exp(x) - 1)), "
        "alpha = 1.6732632423543772, scale = 1.0507009873554805",
        derivative="f'(x) = scale if x >= 0 else scale alpha exp(x)",
    ),
]

ACTIVATIONS: Mapping[str, ActivationSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Canonical name -> ActivationSpec, in declaration order."""

_LOOKUP = {alias: s for s in _SPECS for alias in (s.name, *s.aliases)}


def get_activation(name: str | ActivationSpec | None) -> ActivationSpec:
    """The spec for a name or alias (None means identity); ValueError for unknown names."""
    if isinstance(name, ActivationSpec):
        return name
    if name is None:
        return ACTIVATIONS["identity"]
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name (str), got {type(name).__name__}")
    spec = _LOOKUP.get(name.lower())
    if spec is None:
        known = ", ".join(sorted(_LOOKUP))
        raise ValueError(f"unknown activation {name!r}; known: {known}")
    return spec
