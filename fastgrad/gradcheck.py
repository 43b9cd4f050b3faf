"""Finite-difference checks of analytic gradients, in float64."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with central differences."""


def numerical_vjp(f: Callable[..., np.ndarray], inputs: Sequence[np.ndarray],
                  grad_out: np.ndarray, eps: float = 1e-6) -> list[np.ndarray]:
    """Central-difference vector-Jacobian products, one per input.

    For each input x_k and each element i: (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),
    where L(inputs) = sum(grad_out * f(*inputs)). Inputs are copied to float64.
    Cost: 2 * (total input size) calls of f.
    """
    xs = [np.array(x, dtype=np.float64) for x in inputs]
    g = np.asarray(grad_out, dtype=np.float64)

    def loss() -> float:
        return float(np.sum(g * np.asarray(f(*xs), dtype=np.float64)))

    grads = []
    for x in xs:
        grad = np.zeros_like(x)
        flat, gflat = x.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            up = loss()
            flat[i] = orig - eps
            down = loss()
            flat[i] = orig
            gflat[i] = (up - down) / (2.0 * eps)
        grads.append(grad)
    return grads


def _tensor_function(f: Callable) -> tuple[Callable, Callable]:
    """For f on Tensors: (f on arrays, without recording a graph; its vjp by autograd)."""
    from .autograd import Tensor, no_grad
    from .derivatives import vjp_multi

    def f_arrays(*xs: np.ndarray) -> np.ndarray:
        with no_grad():
            y = f(*(Tensor(x) for x in xs))
        return y.data if isinstance(y, Tensor) else np.asarray(y)

    def vjp(grad_out: np.ndarray, *xs: np.ndarray) -> list[np.ndarray]:
        return vjp_multi(f, list(xs), grad_out)

    return f_arrays, vjp


def gradcheck(f: Callable[..., np.ndarray], inputs: Sequence[np.ndarray],
              vjp: Callable[..., Sequence[np.ndarray]] | None = None, *,
              grad_out: np.ndarray | None = None,
              eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
              seed: int | None = 0) -> bool:
    """Check `vjp` (the analytic backward) against central differences of `f`.

    f(*inputs) -> y; vjp(grad_out, *inputs) -> one gradient per input (None for inputs
    without one). Without `vjp`, f must take and return fastgrad Tensors and the analytic
    gradients come from autograd (reverse mode through every recorded operation).
    grad_out defaults to a random array of y's shape. Passes when
    |analytic - numeric| <= atol + rtol |numeric| everywhere; otherwise raises GradcheckError
    naming the input, the worst element and both values. Returns True.
    Use float64 inputs away from kinks (relu at 0): differences straddling a kink disagree.
    """
    if vjp is None:
        f, vjp = _tensor_function(f)
    xs = [np.asarray(x, dtype=np.float64) for x in inputs]
    y = np.asarray(f(*xs))
    if grad_out is None:
        grad_out = np.random.default_rng(seed).standard_normal(y.shape)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    if grad_out.shape != y.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected {y.shape} "
                         "(the shape of f's output)")
    analytic = vjp(grad_out, *xs)
    if len(analytic) != len(xs):
        raise ValueError(f"vjp returned {len(analytic)} gradients for {len(xs)} inputs")
    numeric = numerical_vjp(f, xs, grad_out, eps)
    for k, (got, want) in enumerate(zip(analytic, numeric)):
        if got is None:
            continue
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            raise GradcheckError(f"input {k}: gradient has shape {got.shape}, "
                                 f"expected {want.shape}")
        err = np.abs(got - want) - (atol + rtol * np.abs(want))
        if got.size and not (np.all(err <= 0) and np.all(np.isfinite(got))):
            i = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(err), err, np.inf))),
                                 got.shape)
            raise GradcheckError(f"input {k}: analytic {got[i]!r} != numeric {want[i]!r} "
                                 f"at index {i} (rtol={rtol}, atol={atol})")
    return True
