"""Reverse-mode automatic differentiation: `Tensor`, over the compiled kernels.

A `Tensor` wraps a float32/float64 ndarray (`.data`, shared, not copied). Every operation
on tensors that require gradients records a node: its parents, a vector-Jacobian product
(reverse mode: grad_out -> one gradient per parent) and a Jacobian-vector product (forward
mode: parent tangents -> output tangent, used by `fastgrad.jvp` / `jacobian(mode="fwd")`).

Semantics (the patterns micrograd got wrong are pinned by tests):

- `backward()` visits the graph in reverse topological order, built with an explicit
  stack, never recursion: a chain of 100,000 nodes works.
- A node used several times (``a + a``, fan-out) receives the sum of its uses' gradients.
- Gradients ACCUMULATE into ``leaf.grad`` across `backward()` calls (as in PyTorch) until
  `zero_grad()`: call it between optimisation steps. Only leaves (tensors created by the
  user with ``requires_grad=True``) get ``.grad``; call `retain_grad()` on an intermediate
  tensor to keep its gradient too. The graph is kept after `backward()`, so it may be
  called again (the gradients then add up).
- `detach()` gives a tensor on the same data with no history; inside ``with no_grad():``
  operations record nothing.
- Results follow NumPy's dtype rules: Python scalars keep a tensor's dtype (float32 stays
  float32), float32 with float64 gives float64; each gradient has its input's dtype and
  shape (broadcast dimensions are summed back).

Gradients use the kernels of the active backend through the functional layer:
activations call ``fastgrad.forward`` / ``fastgrad.backward`` (one op per entry of
``fastgrad.ACTIVATIONS``, generated from the table), ``x @ W`` with a 2-D W and `linear`
call ``fastgrad.linear_forward`` / ``linear_backward``; the rest is NumPy.

Ties: ``max``/``min`` over an axis send the whole gradient to the first extremal element
(the one ``np.argmax`` picks); ``maximum(a, b)``/``minimum(a, b)`` send it to ``a`` where
``a == b``. Both are valid subgradients; the choice keeps "max routes the gradient" a
route to exactly one input.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import functional
from ._validation import as_float_array
from .activations import ACTIVATIONS, ActivationSpec, get_activation

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("fastgrad_grad_enabled",
                                                                     default=True)


def is_grad_enabled() -> bool:
    """False inside ``with no_grad():``."""
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """``with no_grad():`` operations inside record no graph (results never require grad)."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


# VJP: grad_out -> one gradient (or None) per parent. JVP: one tangent per parent (zeros
# where the parent has none) -> the output's tangent.
Vjp = Callable[[np.ndarray], Sequence[Any]]
Jvp = Callable[[Sequence[np.ndarray]], np.ndarray]


class Tensor:
    """An ndarray with a gradient: ``Tensor(data, requires_grad=False)``.

    data: array-like; float32/float64 arrays are wrapped without a copy, integers and
    bools become float64, anything else raises TypeError. ``requires_grad=True`` makes it
    a leaf whose ``.grad`` (same shape and dtype) `backward()` fills.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_vjp", "_jvp", "_op",
                 "_retain", "__weakref__")
    # ndarray (op) Tensor defers to Tensor's reflected operator; np.exp(tensor) raises.
    __array_ufunc__ = None

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        self.data: np.ndarray = as_float_array(data, "data")
        self.grad: np.ndarray | None = None
        self.requires_grad: bool = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._vjp: Vjp | None = None
        self._jvp: Jvp | None = None
        self._op: str = ""
        self._retain: bool = False

    # -- inspection ------------------------------------------------------------------
    shape = property(lambda self: self.data.shape, doc="The data's shape.")
    dtype = property(lambda self: self.data.dtype, doc="The data's dtype.")
    ndim = property(lambda self: self.data.ndim, doc="Number of dimensions.")
    size = property(lambda self: self.data.size, doc="Number of elements.")
    is_leaf = property(lambda self: self._vjp is None,
                       doc="True for tensors made by the user (no recorded operation).")

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The data (shared, not copied)."""
        return self.data

    def __float__(self) -> float:
        return float(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python float."""
        return self.data.item()

    def __repr__(self) -> str:
        extra = f", grad_fn={self._op}" if self._op else (
            ", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({np.array2string(self.data, separator=', ')}{extra})"

    # -- gradients -------------------------------------------------------------------
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf), weighted by `grad`, into every leaf's ``.grad``.

        grad: the gradient of the final objective with respect to this tensor (same shape);
        may be omitted for a one-element tensor (it is then 1). Adds to existing ``.grad``
        (see `zero_grad`).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under "
                               "no_grad())")
        seed = _seed_grad(self, grad)
        for node, g in _backprop(self, seed).items():
            node._accumulate(g)

    def _accumulate(self, g: np.ndarray) -> None:
        if self.grad is None:
            self.grad = np.array(g, dtype=self.dtype, copy=True)
        else:
            self.grad += g

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (``.grad = None``)."""
        self.grad = None

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this intermediate tensor during backward(); returns self."""
        self._retain = True
        return self

    def detach(self) -> Tensor:
        """The same data (shared) without history: gradients stop here."""
        return Tensor(self.data)

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return power(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return power(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return matmul(other, self)

    def __neg__(self) -> Tensor:
        return neg(self)

    def __getitem__(self, index: Any) -> Tensor:
        return getitem(self, index)

    def __abs__(self) -> Tensor:
        return absolute(self)

    # Comparisons give plain boolean arrays (no gradient), e.g. for masks: t[t > 0].
    # __eq__ stays identity: the engine keys dictionaries by tensor.
    def __lt__(self, other: Any) -> np.ndarray:
        return self.data < _raw(other)

    def __le__(self, other: Any) -> np.ndarray:
        return self.data <= _raw(other)

    def __gt__(self, other: Any) -> np.ndarray:
        return self.data > _raw(other)

    def __ge__(self, other: Any) -> np.ndarray:
        return self.data >= _raw(other)

    # -- methods ---------------------------------------------------------------------
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return tensor_sum(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return mean(self, axis, keepdims)

    def max(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        return tensor_max(self, axis, keepdims)

    def min(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        return tensor_min(self, axis, keepdims)

    def exp(self) -> Tensor:
        return exp(self)

    def log(self) -> Tensor:
        return log(self)

    def reshape(self, *shape: Any) -> Tensor:
        return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> Tensor:
        return transpose(self, (axes[0] if len(axes) == 1 else axes) or None)

    @property
    def T(self) -> Tensor:  # noqa: N802 (NumPy's name)
        """Axes reversed (``transpose()``)."""
        return transpose(self)

    def activation(self, name: str, **params: Any) -> Tensor:
        """Any activation of the table by name or alias (``t.activation("silu")``)."""
        return activation(name, self, **params)


# -- the engine ----------------------------------------------------------------------

def _seed_grad(root: Tensor, grad: Any) -> np.ndarray:
    if grad is None:
        if root.size != 1:
            raise ValueError(f"backward() without grad needs a one-element tensor; this one "
                             f"has shape {root.shape}: pass grad= of that shape")
        return np.ones(root.shape, root.dtype)
    g = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
    g = as_float_array(g, "grad").astype(root.dtype, copy=False)
    if g.shape != root.shape:
        raise ValueError(f"grad has shape {g.shape}, expected {root.shape} (the tensor's)")
    return g


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes that require grad, each after all of its parents (iterative post-order DFS)."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents
                     if p.requires_grad and id(p) not in visited)
    return order


def _fit(g: Any, node: Tensor, op: str) -> np.ndarray:
    """A parent's gradient as an array of the parent's dtype and shape."""
    g = np.asarray(g, dtype=node.dtype)
    if g.shape != node.shape:
        raise RuntimeError(f"internal error: {op} produced a gradient of shape {g.shape} "
                           f"for an input of shape {node.shape}")
    return g


def _backprop(root: Tensor, seed: np.ndarray) -> dict[Tensor, np.ndarray]:
    """d(sum(seed * root))/d(node) for every leaf (and retained node) under root; no
    side effects. One vector-Jacobian product per node, in reverse topological order."""
    pending: dict[int, np.ndarray] = {id(root): seed}
    result: dict[Tensor, np.ndarray] = {}
    for node in reversed(_topological_order(root)):
        g = pending.pop(id(node), None)
        if g is None:
            continue
        if node._vjp is None or node._retain:
            result[node] = g
        if node._vjp is None:
            continue
        for parent, pg in zip(node._parents, node._vjp(g)):
            if pg is None or not parent.requires_grad:
                continue
            pg = _fit(pg, parent, node._op)
            key = id(parent)
            # Out of place: a vjp may hand the same array to several parents (add).
            pending[key] = pending[key] + pg if key in pending else pg
    return result


def _forward_tangents(root: Tensor, tangents: dict[int, np.ndarray]) -> np.ndarray:
    """Forward mode over a recorded graph: the tangent of root given the tangents of some
    leaves (id -> array), one Jacobian-vector product per node in topological order."""
    known = dict(tangents)
    for node in _topological_order(root):
        if node._jvp is None or id(node) in known:
            continue
        ts = [known.get(id(p)) for p in node._parents]
        if all(t is None for t in ts):
            continue
        ts = [np.zeros(p.shape, p.dtype) if t is None else t
              for p, t in zip(node._parents, ts)]
        known[id(node)] = _fit(node._jvp(ts), node, node._op)
    t = known.get(id(root))
    return np.zeros(root.shape, root.dtype) if t is None else t


def _node(data: np.ndarray, parents: tuple[Tensor, ...], vjp: Vjp, jvp: Jvp, op: str
          ) -> Tensor:
    """The result of an operation: records the node when a parent requires grad."""
    out = Tensor.__new__(Tensor)
    out.data = np.asarray(data)
    out.grad = None
    out._retain = False
    out._op = op
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents, out._vjp, out._jvp = parents, vjp, jvp
    else:
        out.requires_grad = False
        out._parents, out._vjp, out._jvp = (), None, None
    return out


def as_tensor(value: Any) -> Tensor:
    """`value` itself when it is a Tensor, else a constant Tensor (no grad) around it."""
    return value if isinstance(value, Tensor) else Tensor(value)


def _operand(value: Any) -> Tensor | float:
    """Tensors stay; Python real numbers stay numbers (so float32 * 2.0 stays float32);
    arrays become constant tensors."""
    if isinstance(value, Tensor):
        return value
    # Plain types, not numbers.Real: an ABC check costs tens of microseconds per op.
    if isinstance(value, (int, float)) and not isinstance(value, np.generic):
        return float(value)
    return Tensor(value)


def _raw(value: Any) -> Any:
    return value.data if isinstance(value, Tensor) else value


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum g over the dimensions broadcasting added or stretched, back to `shape`."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


class _Rule(NamedTuple):
    """An elementwise binary op: forward(x, y); vjp_a(g, x, y, out) and vjp_b(...) the
    unreduced gradients; jvp(ta, tb, x, y, out) the output tangent."""

    op: str
    forward: Callable
    vjp_a: Callable
    vjp_b: Callable
    jvp: Callable


def _binary(a: Any, b: Any, rule: _Rule) -> Tensor:
    """Elementwise binary op with broadcasting; gradients summed back to each shape."""
    a, b = _operand(a), _operand(b)
    x = a.data if isinstance(a, Tensor) else a
    y = b.data if isinstance(b, Tensor) else b
    out = rule.forward(x, y)
    parents = tuple(t for t in (a, b) if isinstance(t, Tensor))

    def vjp(g):
        grads = []
        for t, grad_of in ((a, rule.vjp_a), (b, rule.vjp_b)):
            if isinstance(t, Tensor):
                grads.append(_unbroadcast(grad_of(g, x, y, out), t.shape)
                             if t.requires_grad else None)
        return grads

    def jvp(ts):
        it = iter(ts)
        ta = next(it) if isinstance(a, Tensor) else 0.0
        tb = next(it) if isinstance(b, Tensor) else 0.0
        return np.broadcast_to(rule.jvp(ta, tb, x, y, out), np.shape(out))

    return _node(out, parents, vjp, jvp, rule.op)


# -- arithmetic ----------------------------------------------------------------------
# Each rule is built once at import, not per call: fewer objects per node, less GC work.

def _log_base(x: Any) -> Any:
    # d(x^y)/dy = x^y log x; where x^y is 0 (x = 0, y > 0) the product is 0, not NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _pow_jvp(ta, tb, x, y, o):
    # ta or tb is the float 0.0 for a constant side: skip that term entirely.
    t = ta * y * np.power(x, y - 1.0) if np.any(ta) else 0.0
    if np.any(tb):
        t = t + np.where(o == 0, 0.0, tb * o * _log_base(x))
    return t


_ADD = _Rule("add", np.add, lambda g, x, y, o: g, lambda g, x, y, o: g,
             lambda ta, tb, x, y, o: ta + tb)
_SUB = _Rule("sub", np.subtract, lambda g, x, y, o: g, lambda g, x, y, o: -g,
             lambda ta, tb, x, y, o: ta - tb)
_MUL = _Rule("mul", np.multiply, lambda g, x, y, o: g * y, lambda g, x, y, o: g * x,
             lambda ta, tb, x, y, o: ta * y + x * tb)
_DIV = _Rule("div", np.true_divide, lambda g, x, y, o: g / y, lambda g, x, y, o: -g * o / y,
             lambda ta, tb, x, y, o: (ta - o * tb) / y)
_POW = _Rule("pow", np.power, lambda g, x, y, o: g * y * np.power(x, y - 1.0),
             lambda g, x, y, o: np.where(o == 0, 0.0, g * o * _log_base(x)), _pow_jvp)
_MAXIMUM = _Rule("maximum", np.maximum, lambda g, x, y, o: g * (x >= y),
                 lambda g, x, y, o: g * (x < y),
                 lambda ta, tb, x, y, o: np.where(x >= y, ta, tb))
_MINIMUM = _Rule("minimum", np.minimum, lambda g, x, y, o: g * (x <= y),
                 lambda g, x, y, o: g * (x > y),
                 lambda ta, tb, x, y, o: np.where(x <= y, ta, tb))


def add(a: Any, b: Any) -> Tensor:
    """a + b (broadcasting). Gradient: g to both, unchanged (summed to each shape)."""
    return _binary(a, b, _ADD)


def sub(a: Any, b: Any) -> Tensor:
    """a - b. Gradient: g to a, -g to b."""
    return _binary(a, b, _SUB)


def mul(a: Any, b: Any) -> Tensor:
    """a * b. Gradient: the inputs swap: g * b to a, g * a to b."""
    return _binary(a, b, _MUL)


def div(a: Any, b: Any) -> Tensor:
    """a / b. Gradient: g / b to a, -g a / b^2 = -g out / b to b."""
    return _binary(a, b, _DIV)


def power(a: Any, b: Any) -> Tensor:
    """a ** b. Gradient: g b a^(b-1) to a; g a^b log(a) to b (a > 0; 0 where a^b = 0)."""
    return _binary(a, b, _POW)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise max; the gradient goes to the larger input (to a on ties)."""
    return _binary(a, b, _MAXIMUM)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise min; the gradient goes to the smaller input (to a on ties)."""
    return _binary(a, b, _MINIMUM)


def neg(a: Any) -> Tensor:
    """-a."""
    a = as_tensor(a)
    return _node(-a.data, (a,), lambda g: (-g,), lambda ts: -ts[0], "neg")


def absolute(a: Any) -> Tensor:
    """|a|. Gradient: g sign(a), 0 at a = 0."""
    a = as_tensor(a)
    sign = np.sign(a.data)
    return _node(np.abs(a.data), (a,), lambda g: (g * sign,), lambda ts: ts[0] * sign, "abs")


def exp(a: Any) -> Tensor:
    """e^a. Gradient: g * out."""
    a = as_tensor(a)
    out = np.exp(a.data)
    return _node(out, (a,), lambda g: (g * out,), lambda ts: ts[0] * out, "exp")


def log(a: Any) -> Tensor:
    """Natural log. Gradient: g / a."""
    a = as_tensor(a)
    x = a.data  # saved at forward time, like every op's inputs
    return _node(np.log(x), (a,), lambda g: (g / x,), lambda ts: ts[0] / x, "log")


# -- matrix products -----------------------------------------------------------------

def _matmul_grads(g: np.ndarray, x: np.ndarray, y: np.ndarray, need_x: bool, need_y: bool):
    """Gradients of x @ y (np.matmul rules: 1-D operands promoted, batch broadcast)."""
    x2 = x[None, :] if x.ndim == 1 else x
    y2 = y[:, None] if y.ndim == 1 else y
    g2 = g  # restore the dimensions matmul dropped: y's column first, then x's row
    if y.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    if x.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    gx = gy = None
    if need_x:
        gx = _unbroadcast(np.matmul(g2, np.swapaxes(y2, -1, -2)), x2.shape).reshape(x.shape)
    if need_y:
        gy = _unbroadcast(np.matmul(np.swapaxes(x2, -1, -2), g2), y2.shape).reshape(y.shape)
    return gx, gy


def matmul(a: Any, b: Any) -> Tensor:
    """a @ b with NumPy's matmul rules. With a 2-D right operand (the dense layer's x @ W)
    forward and backward run on the backend's linear_forward / linear_backward kernels;
    other shapes use np.matmul."""
    a, b = as_tensor(a), as_tensor(b)
    dtype = np.result_type(a.dtype, b.dtype)
    x, y = a.data.astype(dtype, copy=False), b.data.astype(dtype, copy=False)
    dense = y.ndim == 2 and x.ndim >= 1 and x.shape[-1] == y.shape[0]
    out = functional.linear_forward(x, y) if dense else np.matmul(x, y)

    def vjp(g):
        if dense:
            gx, gy, _ = functional.linear_backward(g, x, y, need_grad_x=a.requires_grad)
            return gx, (gy if b.requires_grad else None)
        return _matmul_grads(g, x, y, a.requires_grad, b.requires_grad)

    def jvp(ts):
        return np.matmul(ts[0], y) + np.matmul(x, ts[1])

    return _node(out, (a, b), vjp, jvp, "matmul")


def linear(x: Any, W: Any, b: Any = None, *, activation: str | None = None,
           **params: Any) -> Tensor:
    """The dense layer act(x @ W + b) as one node on the fused kernels
    (fastgrad.linear_forward / linear_backward). x (..., D_in), W (D_in, D_out), b (D_out,)."""
    spec = get_activation(activation)
    x, W = as_tensor(x), as_tensor(W)
    parents = (x, W) if b is None else (x, W, as_tensor(b))
    bias = None if b is None else parents[2].data
    xd, Wd = x.data, W.data
    y, pre = functional.linear_forward(xd, Wd, bias, activation=spec, return_pre=True,
                                       **params)

    def vjp(g):
        gx, gW, gb = functional.linear_backward(g, xd, Wd, activation=spec, y=y,
                                                pre=pre, need_grad_x=x.requires_grad,
                                                **params)
        return (gx, gW) if b is None else (gx, gW, gb)

    def jvp(ts):
        t_pre = np.matmul(ts[0], Wd) + np.matmul(xd, ts[1])
        if b is not None:
            t_pre = t_pre + ts[2]
        return _activation_jvp(spec, t_pre, pre, y, params)

    return _node(y, parents, vjp, jvp, "linear")


# -- reductions ----------------------------------------------------------------------

def _axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(ax) % ndim if ndim else int(ax) for ax in axes)


def _expand(g: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...],
            keepdims: bool) -> np.ndarray:
    """A reduced gradient broadcast back over the reduced axes."""
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return np.broadcast_to(g, shape)


def tensor_sum(a: Any, axis: int | tuple[int, ...] | None = None,
               keepdims: bool = False) -> Tensor:
    """Sum over `axis` (all by default). Gradient: g copied over the summed axes."""
    a = as_tensor(a)
    axes = _axes(axis, a.ndim)
    out = np.sum(a.data, axis=axis, keepdims=keepdims)
    return _node(out, (a,), lambda g: (_expand(g, a.shape, axes, keepdims),),
                 lambda ts: np.sum(ts[0], axis=axis, keepdims=keepdims), "sum")


def mean(a: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    """Mean over `axis` (all by default). Gradient: g / count over the averaged axes."""
    a = as_tensor(a)
    count = int(np.prod([a.shape[ax] for ax in _axes(axis, a.ndim)], dtype=np.int64))
    return tensor_sum(a, axis, keepdims) / float(max(count, 1))


def _extremum(a: Any, axis: int | None, keepdims: bool, pick: Callable, op: str) -> Tensor:
    a = as_tensor(a)
    if axis is None:
        flat = a.data.reshape(-1)
        if flat.size == 0:
            raise ValueError(f"{op}() of an empty tensor")
        idx = np.unravel_index(int(pick(flat)), a.shape)
        out = a.data[idx]
        out = np.reshape(out, (1,) * a.ndim) if keepdims else np.asarray(out)

        def vjp(g):
            grad = np.zeros(a.shape, a.dtype)
            grad[idx] = np.reshape(g, ())
            return (grad,)

        def jvp(ts):
            return np.reshape(ts[0][idx], out.shape)

        return _node(out, (a,), vjp, jvp, op)
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int or None, got {axis!r}")
    ax = int(axis) % max(a.ndim, 1)
    where = np.expand_dims(pick(a.data, axis=ax), ax)  # first extremal element per slice
    out = np.take_along_axis(a.data, where, axis=ax)
    if not keepdims:
        out = np.squeeze(out, ax)

    def vjp(g):
        grad = np.zeros(a.shape, a.dtype)
        np.put_along_axis(grad, where, g if keepdims else np.expand_dims(g, ax), axis=ax)
        return (grad,)

    def jvp(ts):
        t = np.take_along_axis(ts[0], where, axis=ax)
        return t if keepdims else np.squeeze(t, ax)

    return _node(out, (a,), vjp, jvp, op)


def tensor_max(a: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Max over one axis (or all). Gradient routed to the argmax (first one on ties)."""
    return _extremum(a, axis, keepdims, np.argmax, "max")


def tensor_min(a: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Min over one axis (or all). Gradient routed to the argmin (first one on ties)."""
    return _extremum(a, axis, keepdims, np.argmin, "min")


# -- shape ---------------------------------------------------------------------------

def reshape(a: Any, shape: Any) -> Tensor:
    """Same data, new shape. Gradient: reshaped back."""
    a = as_tensor(a)
    out = np.reshape(a.data, shape)
    return _node(out, (a,), lambda g: (np.reshape(g, a.shape),),
                 lambda ts: np.reshape(ts[0], out.shape), "reshape")


def transpose(a: Any, axes: Sequence[int] | None = None) -> Tensor:
    """Permute the axes (reverse them by default). Gradient: the inverse permutation."""
    a = as_tensor(a)
    perm = tuple(range(a.ndim))[::-1] if axes is None else tuple(axes)
    inverse = tuple(np.argsort(perm))
    return _node(np.transpose(a.data, perm), (a,), lambda g: (np.transpose(g, inverse),),
                 lambda ts: np.transpose(ts[0], perm), "transpose")


def _plain_index(index: Any) -> Any:
    if isinstance(index, Tensor):
        return index.data.astype(np.intp) if index.dtype.kind == "f" else index.data
    if isinstance(index, tuple):
        return tuple(_plain_index(i) for i in index)
    return index


def getitem(a: Any, index: Any) -> Tensor:
    """a[index] (basic and advanced indexing). Gradient scattered back with np.add.at, so
    an element picked several times receives the sum of its gradients."""
    a = as_tensor(a)
    index = _plain_index(index)
    out = a.data[index]

    def vjp(g):
        grad = np.zeros(a.shape, a.dtype)
        np.add.at(grad, index, g)
        return (grad,)

    return _node(np.array(out), (a,), vjp, lambda ts: ts[0][index], "getitem")


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join along an existing axis. Gradient: g split back into the pieces."""
    parts = [as_tensor(t) for t in tensors]
    if not parts:
        raise ValueError("concatenate needs at least one tensor, got none")
    out = np.concatenate([p.data for p in parts], axis=axis)
    ax = axis % out.ndim
    bounds = np.cumsum([p.shape[ax] for p in parts])[:-1]
    return _node(out, tuple(parts), lambda g: np.split(g, bounds, axis=ax),
                 lambda ts: np.concatenate(ts, axis=ax), "concatenate")


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join along a new axis (concatenate of the pieces with a unit axis inserted)."""
    parts = [as_tensor(t) for t in tensors]
    if not parts:
        raise ValueError("stack needs at least one tensor, got none")
    ax = axis % (parts[0].ndim + 1)
    return concatenate([reshape(p, p.shape[:ax] + (1,) + p.shape[ax:]) for p in parts], ax)


# -- activations, generated from the table -------------------------------------------

def _saved(spec: ActivationSpec, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """What the table says the backward kernel needs: the input, the output or nothing."""
    return {"x": {"x": x}, "y": {"y": y}}.get(spec.needs, {})


def _activation_jvp(spec: ActivationSpec, t: np.ndarray, x: np.ndarray, y: np.ndarray,
                    params: dict[str, Any]) -> np.ndarray:
    """J t for one activation, from its backward kernel (J^T g).

    Elementwise: J is diagonal, so J t = J^T t: one backward call. Row-wise (along the last
    axis, n wide): every row's J at once from one backward call on n one-hot cotangents
    (row i of the result is e_i^T J), then J t; O(rows n^2) work, no per-activation code.
    """
    if not spec.rowwise:
        return functional.backward(spec, t, **_saved(spec, x, y), **params)
    n = x.shape[-1] if x.ndim else 1
    lead = x.shape[:-1] if x.ndim else ()
    eye = np.broadcast_to(np.eye(n, dtype=t.dtype), (*lead, n, n))
    rows = {k: np.broadcast_to(np.expand_dims(v, -2), (*lead, n, n))
            for k, v in _saved(spec, x, y).items()}
    jac = functional.backward(spec, eye, **rows, **params)  # jac[..., i, j] = dy_i/dx_j
    return np.einsum("...ij,...j->...i", jac, np.reshape(t, (*lead, n))).reshape(t.shape)


def activation(name: str | ActivationSpec, x: Any, **params: Any) -> Tensor:
    """f(x) for any activation of fastgrad.ACTIVATIONS (name or alias): forward and
    backward on the active backend's kernels, backward given x or y as `spec.needs` says."""
    spec = get_activation(name)
    spec.encoded(params, func=spec.name)  # reject bad parameters before recording
    x = as_tensor(x)
    xd = x.data
    y = functional.forward(spec, xd, **params)

    def vjp(g):
        return (functional.backward(spec, g, **_saved(spec, xd, y), **params),)

    return _node(y, (x,), vjp, lambda ts: _activation_jvp(spec, ts[0], xd, y, params),
                 spec.name)


def _make_activation(spec: ActivationSpec) -> Callable[..., Tensor]:
    def op(x: Any, **params: Any) -> Tensor:
        return activation(spec, x, **params)

    op.__name__ = op.__qualname__ = spec.name
    op.__doc__ = (f"{spec.name} of a Tensor: {spec.formula}; gradient {spec.derivative}. "
                  f"Parameters: {dict(spec.params) or 'none'}.")
    return op


def _make_method(op: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def method(self: Tensor, **params: Any) -> Tensor:
        return op(self, **params)

    method.__name__ = method.__qualname__ = op.__name__
    method.__doc__ = op.__doc__
    return method


ACTIVATION_OPS: dict[str, Callable[..., Tensor]] = {
    spec.name: _make_activation(spec) for spec in ACTIVATIONS.values()}
"""Canonical activation name -> Tensor function; each is also a Tensor method
(``t.relu()``) unless Tensor already has an attribute of that name."""

for _name, _op in ACTIVATION_OPS.items():
    globals().setdefault(_name, _op)
    if not hasattr(Tensor, _name):
        setattr(Tensor, _name, _make_method(_op))
del _name, _op
