"""Every activation forward and backward written the way each peer's users would.

For each (peer, activation) two forms: allocating (the natural expression, temporaries
and all) and into a preallocated output (`out=`, the best sequence of in-place calls the
peer offers; None where it offers none). Backward functions take (g, x, y, out) and use
what the peer's own backward needs: PyTorch's aten backward ops (the ones its autograd
calls) take y for sigmoid/tanh/softmax/log_softmax and x otherwise; JAX takes x and lets
XLA fuse the recomputation (jax.vjp of the jitted function). Default parameters only
(leaky_relu alpha=0.01, elu alpha=1, swish beta=1, gelu exact, softplus beta=1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .peers import NotAvailable, require

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
LEAKY = 0.01
ROW = 1024
"""Row-wise activations (softmax, log_softmax) act on rows of ROW elements."""

Fwd = Callable[[object, object], object]      # (x, out) -> result
Bwd = Callable[[object, object, object, object], object]  # (g, x, y, out) -> result


@dataclass(frozen=True)
class Pair:
    """One peer's forms for one activation and direction: alloc(...) and into(..., out)."""

    alloc: Callable | None
    into: Callable | None
    why_no_into: str = ""


# ---------------------------------------------------------------- NumPy (+ SciPy ufuncs)
def _numpy_table() -> dict[str, tuple[Pair, Pair]]:
    from scipy.special import erf, expit

    r2, rpi = 1 / math.sqrt(2), 1 / math.sqrt(2 * math.pi)

    def rowmax(a):
        return a.max(-1, keepdims=True)

    def elu_into(x, out, scale=1.0, alpha=1.0):
        np.minimum(x, 0, out=out)
        np.expm1(out, out=out)
        out *= alpha
        np.copyto(out, x, where=x > 0)
        if scale != 1.0:
            out *= scale
        return out

    def elu_bwd_into(g, x, out, scale=1.0, alpha=1.0):
        np.minimum(x, 0, out=out)
        np.exp(out, out=out)
        out *= alpha
        out *= g
        np.copyto(out, g, where=x >= 0)
        if scale != 1.0:
            out *= scale
        return out

    def softmax_into(x, out):
        np.subtract(x, rowmax(x), out=out)
        np.exp(out, out=out)
        out /= out.sum(-1, keepdims=True)
        return out

    def log_softmax_into(x, out):
        np.subtract(x, rowmax(x), out=out)
        out -= np.log(np.exp(out).sum(-1, keepdims=True))
        return out

    def swish_bwd_into(g, x, out):
        expit(x, out=out)           # s
        t = np.subtract(1, out)     # 1 - s (one temporary)
        t *= x
        t += 1
        out *= t                    # s (1 + x (1 - s))
        out *= g
        return out

    def gelu_fwd_into(x, out):
        np.multiply(x, r2, out=out)
        erf(out, out=out)
        out += 1
        out *= x
        out *= 0.5
        return out

    def gelu_bwd(g, x):
        return g * (0.5 * (1 + erf(x * r2)) + x * rpi * np.exp(-0.5 * x * x))

    def gelu_bwd_into(g, x, out):
        np.multiply(x, r2, out=out)
        erf(out, out=out)
        out += 1
        out *= 0.5                  # Phi(x)
        t = np.multiply(x, x)       # one temporary for x phi(x)
        t *= -0.5
        np.exp(t, out=t)
        t *= rpi
        t *= x
        out += t
        out *= g
        return out

    return {
        "identity": (Pair(lambda x: x.copy(), lambda x, o: np.copyto(o, x)),
                     Pair(lambda g, x, y: g.copy(), lambda g, x, y, o: np.copyto(o, g))),
        "binary_step": (Pair(lambda x: (x >= 0).astype(x.dtype),
                             lambda x, o: np.greater_equal(x, 0, out=o)),
                        Pair(lambda g, x, y: np.zeros_like(g), lambda g, x, y, o: o.fill(0))),
        "sigmoid": (Pair(lambda x: expit(x), lambda x, o: expit(x, out=o)),
                    Pair(lambda g, x, y: g * y * (1 - y),
                         lambda g, x, y, o: _seq(np.subtract(1, y, out=o), o.__imul__(y),
                                                 o.__imul__(g)))),
        "tanh": (Pair(lambda x: np.tanh(x), lambda x, o: np.tanh(x, out=o)),
                 Pair(lambda g, x, y: g * (1 - y * y),
                      lambda g, x, y, o: _seq(np.multiply(y, y, out=o),
                                              np.subtract(1, o, out=o), o.__imul__(g)))),
        "relu": (Pair(lambda x: np.maximum(x, 0), lambda x, o: np.maximum(x, 0, out=o)),
                 Pair(lambda g, x, y: g * (x > 0),
                      lambda g, x, y, o: np.multiply(g, x > 0, out=o))),
        "leaky_relu": (Pair(lambda x: np.where(x >= 0, x, LEAKY * x),
                            lambda x, o: _seq(np.multiply(x, LEAKY, out=o),
                                              np.maximum(x, o, out=o))),
                       Pair(lambda g, x, y: np.where(x >= 0, g, LEAKY * g),
                            lambda g, x, y, o: _seq(np.multiply(g, LEAKY, out=o),
                                                    np.copyto(o, g, where=x >= 0)))),
        "elu": (Pair(lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), elu_into),
                Pair(lambda g, x, y: np.where(x >= 0, g, g * np.exp(np.minimum(x, 0))),
                     lambda g, x, y, o: elu_bwd_into(g, x, o))),
        "selu": (Pair(lambda x: SELU_SCALE * np.where(
                          x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                      lambda x, o: elu_into(x, o, SELU_SCALE, SELU_ALPHA)),
                 Pair(lambda g, x, y: SELU_SCALE * np.where(
                          x >= 0, g, SELU_ALPHA * g * np.exp(np.minimum(x, 0))),
                      lambda g, x, y, o: elu_bwd_into(g, x, o, SELU_SCALE, SELU_ALPHA))),
        "softmax": (Pair(lambda x: _softmax(x), softmax_into),
                    Pair(lambda g, x, y: y * (g - (g * y).sum(-1, keepdims=True)),
                         lambda g, x, y, o: _seq(np.multiply(g, y, out=o),
                                                 np.subtract(g, o.sum(-1, keepdims=True),
                                                             out=o), o.__imul__(y)))),
        "log_softmax": (Pair(lambda x: _log_softmax(x), log_softmax_into),
                        Pair(lambda g, x, y: g - np.exp(y) * g.sum(-1, keepdims=True),
                             lambda g, x, y, o: _seq(np.exp(y, out=o),
                                                     o.__imul__(g.sum(-1, keepdims=True)),
                                                     np.subtract(g, o, out=o)))),
        "swish": (Pair(lambda x: x * expit(x),
                       lambda x, o: _seq(expit(x, out=o), o.__imul__(x))),
                  Pair(lambda g, x, y: _swish_bwd(g, x, expit),
                       lambda g, x, y, o: swish_bwd_into(g, x, o))),
        "gelu": (Pair(lambda x: 0.5 * x * (1 + erf(x * r2)), gelu_fwd_into),
                 Pair(lambda g, x, y: gelu_bwd(g, x),
                      lambda g, x, y, o: gelu_bwd_into(g, x, o))),
        "softplus": (Pair(lambda x: np.logaddexp(x, 0), lambda x, o: np.logaddexp(x, 0, out=o)),
                     Pair(lambda g, x, y: g * expit(x),
                          lambda g, x, y, o: _seq(expit(x, out=o), o.__imul__(g)))),
    }


def _seq(*steps):
    """Evaluate in-place steps in order (they already ran as arguments); return the last."""
    return steps[-1]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _swish_bwd(g, x, expit):
    s = expit(x)
    return g * (s + x * s * (1 - s))


# ---------------------------------------------------------------- PyTorch (aten ops)
def _torch_table() -> dict[str, tuple[Pair, Pair]]:
    torch = require("torch")
    F = torch.nn.functional
    aten = torch.ops.aten
    one = torch.tensor(1.0)
    f32 = torch.float32
    A, S = SELU_ALPHA, SELU_SCALE
    return {
        "identity": (Pair(lambda x: x.clone(), lambda x, o: o.copy_(x)),
                     Pair(lambda g, x, y: g.clone(), lambda g, x, y, o: o.copy_(g))),
        "binary_step": (Pair(lambda x: (x >= 0).to(x.dtype),
                             lambda x, o: torch.heaviside(x, one, out=o)),
                        Pair(lambda g, x, y: torch.zeros_like(g),
                             lambda g, x, y, o: o.zero_())),
        "sigmoid": (Pair(torch.sigmoid, lambda x, o: torch.sigmoid(x, out=o)),
                    Pair(lambda g, x, y: aten.sigmoid_backward(g, y),
                         lambda g, x, y, o: aten.sigmoid_backward.grad_input(
                             g, y, grad_input=o))),
        "tanh": (Pair(torch.tanh, lambda x, o: torch.tanh(x, out=o)),
                 Pair(lambda g, x, y: aten.tanh_backward(g, y),
                      lambda g, x, y, o: aten.tanh_backward.grad_input(g, y, grad_input=o))),
        "relu": (Pair(torch.relu, lambda x, o: torch.clamp(x, min=0, out=o)),
                 Pair(lambda g, x, y: aten.threshold_backward(g, x, 0.0),
                      lambda g, x, y, o: aten.threshold_backward.grad_input(
                          g, x, 0.0, grad_input=o))),
        "leaky_relu": (Pair(lambda x: F.leaky_relu(x, LEAKY),
                            lambda x, o: aten.leaky_relu.out(x, LEAKY, out=o)),
                       Pair(lambda g, x, y: aten.leaky_relu_backward(g, x, LEAKY, False),
                            lambda g, x, y, o: aten.leaky_relu_backward.grad_input(
                                g, x, LEAKY, False, grad_input=o))),
        "elu": (Pair(F.elu, lambda x, o: aten.elu.out(x, 1.0, 1.0, 1.0, out=o)),
                Pair(lambda g, x, y: aten.elu_backward(g, 1.0, 1.0, 1.0, False, x),
                     lambda g, x, y, o: aten.elu_backward.grad_input(
                         g, 1.0, 1.0, 1.0, False, x, grad_input=o))),
        "selu": (Pair(torch.selu, lambda x, o: aten.elu.out(x, A, S, 1.0, out=o)),
                 Pair(lambda g, x, y: aten.elu_backward(g, A, S, 1.0, False, x),
                      lambda g, x, y, o: aten.elu_backward.grad_input(
                          g, A, S, 1.0, False, x, grad_input=o))),
        "softmax": (Pair(lambda x: torch.softmax(x, -1),
                         lambda x, o: torch.softmax(x, -1, out=o)),
                    Pair(lambda g, x, y: aten._softmax_backward_data(g, y, -1, f32),
                         lambda g, x, y, o: aten._softmax_backward_data.out(
                             g, y, -1, f32, grad_input=o))),
        "log_softmax": (Pair(lambda x: torch.log_softmax(x, -1),
                             lambda x, o: torch.log_softmax(x, -1, out=o)),
                        Pair(lambda g, x, y: aten._log_softmax_backward_data(g, y, -1, f32),
                             lambda g, x, y, o: aten._log_softmax_backward_data.out(
                                 g, y, -1, f32, out=o))),
        "swish": (Pair(F.silu, lambda x, o: aten.silu.out(x, out=o)),
                  Pair(lambda g, x, y: aten.silu_backward(g, x),
                       lambda g, x, y, o: aten.silu_backward.grad_input(g, x, grad_input=o))),
        "gelu": (Pair(F.gelu, lambda x, o: aten.gelu.out(x, approximate="none", out=o)),
                 Pair(lambda g, x, y: aten.gelu_backward(g, x, approximate="none"),
                      lambda g, x, y, o: aten.gelu_backward.grad_input(
                          g, x, approximate="none", grad_input=o))),
        "softplus": (Pair(F.softplus, lambda x, o: aten.softplus.out(x, 1.0, 20.0, out=o)),
                     Pair(lambda g, x, y: aten.softplus_backward(g, x, 1.0, 20.0),
                          lambda g, x, y, o: aten.softplus_backward.grad_input(
                              g, x, 1.0, 20.0, grad_input=o))),
    }


# ---------------------------------------------------------------- JAX (jax.jit)
_JAX_NO_OUT = "JAX arrays are immutable, no out="


def _jax_table() -> dict[str, tuple[Pair, Pair]]:
    jax = require("jax")
    jnp = jax.numpy
    nn = jax.nn
    # No identity: a jitted identity hands back its input buffer, so there is no work to time.
    funcs = {
        "binary_step": lambda x: (x >= 0).astype(x.dtype),
        "sigmoid": nn.sigmoid, "tanh": jnp.tanh, "relu": nn.relu,
        "leaky_relu": lambda x: nn.leaky_relu(x, LEAKY), "elu": nn.elu, "selu": nn.selu,
        "softmax": lambda x: nn.softmax(x, axis=-1),
        "log_softmax": lambda x: nn.log_softmax(x, axis=-1),
        "swish": nn.silu, "gelu": lambda x: nn.gelu(x, approximate=False),
        "softplus": nn.softplus,
    }
    table = {}
    for name, f in funcs.items():
        fwd = jax.jit(f)
        bwd = jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
        table[name] = (Pair(lambda x, fwd=fwd: fwd(x).block_until_ready(), None, _JAX_NO_OUT),
                       Pair(lambda g, x, y, bwd=bwd: bwd(x, g).block_until_ready(), None,
                            _JAX_NO_OUT))
    return table


BUILDERS = {"numpy": _numpy_table, "torch": _torch_table, "jax": _jax_table}


def peer_table(peer: str) -> dict[str, tuple[Pair, Pair]]:
    """{activation: (forward Pair, backward Pair)} for 'numpy', 'torch' or 'jax'; raises
    NotAvailable when the peer is not installed."""
    return BUILDERS[peer]()


def convert(peer: str, arr: np.ndarray):
    """The peer's array for a NumPy array (PyTorch shares the memory; JAX copies it to its
    device buffer once, outside the timing)."""
    if peer == "torch":
        return require("torch").from_numpy(arr)
    if peer == "jax":
        jax = require("jax")
        return jax.device_put(arr).block_until_ready()
    return arr


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().numpy()
    return np.asarray(value)


def shape_for(rowwise: bool, n: int) -> tuple[int, ...]:
    return (n // ROW, ROW) if rowwise else (n,)


__all__ = ["Pair", "NotAvailable", "peer_table", "convert", "to_numpy", "shape_for", "ROW"]
