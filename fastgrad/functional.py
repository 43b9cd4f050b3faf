"""The public kernel API: validate once, then dispatch to a backend.

Every function here checks its arguments (dtype, shape, `out=`), brings arrays to the
C-contiguous layout the backends assume, picks the backend (`backend=`, the one set by
`set_backend`/`use_backend`, else the fastest available) and calls its kernel. Backends
never validate again.

Device backends (``cuda``, whose module sets ``DEVICE = True``) take device arrays: numba
device arrays and any object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch
CUDA tensors) are used in place, without copies, and the results are numba device arrays;
host (NumPy) input is validated as usual, copied to the device, and the results copied
back to NumPy arrays. A call with any device array among its array inputs returns device
arrays; ``out=`` may be a device array or a NumPy array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validation import as_float_array, check_device_array, check_out, check_shape, contiguous
from .activations import ACTIVATIONS, ActivationSpec, get_activation
from .backends import get_backend, get_kernel
from .losses import LossSpec, get_loss

ArrayLike = Any


def _device_backend(backend: str | None):
    """The backend module when its kernels take device arrays (cuda), else None."""
    module = get_backend(backend)
    return module if getattr(module, "DEVICE", False) else None


def _any_device(dev, *values: Any) -> bool:
    """Whether any of `values` is a device array (then results stay on the device)."""
    return dev is not None and any(dev.is_device_array(v) for v in values if v is not None)


def _array(value: Any, name: str, dev, dtype: np.dtype | None = None):
    """`as_float_array`, or on a device backend a C-contiguous float device array: device
    input wrapped without a copy, host input validated and then copied to the device."""
    if dev is None:
        return as_float_array(value, name, dtype)
    if dev.is_device_array(value):
        arr = dev.as_device(value)
        check_device_array(arr, name, dtype)
        return arr
    arr = as_float_array(value, name, dtype)
    return dev.to_device(contiguous(arr).reshape(arr.shape))  # 0-d stays 0-d


def _empty(shape: tuple[int, ...], dtype: np.dtype, dev):
    return np.empty(shape, dtype) if dev is None else dev.empty(shape, dtype)


def _result_buffer(out: Any, shape: tuple[int, ...], dtype: np.dtype, dev=None,
                   on_device: bool = False):
    """(buffer the kernel writes, array to return): `out` itself when it is C-contiguous,
    else a fresh buffer copied into `out` afterwards. On a device backend the buffer is a
    device array; the array to return is None when a new host array is wanted."""
    if dev is not None:
        if out is None:
            buf = dev.empty(shape, dtype)
            return buf, (buf if on_device else None)
        if dev.is_device_array(out):
            buf = dev.as_device(out)
            check_device_array(buf, "out", dtype)
            check_shape(buf, "out", shape, f"dtype {np.dtype(dtype)}")
            return buf, out
        check_out(out, shape, dtype)
        return dev.empty(shape, dtype), out
    if out is None:
        buf = np.empty(shape, dtype)
        return buf, buf
    check_out(out, shape, dtype)
    if out.flags.c_contiguous:
        return out, out
    return np.empty(shape, dtype), out


def _finish(buf: Any, result: Any, dev=None) -> Any:
    if buf is result:
        return result
    if dev is not None:
        if result is None:
            return dev.to_host(buf)
        if dev.is_device_array(result):  # buf is a view of it
            return result
        result[...] = dev.to_host(buf)
        return result
    result[...] = buf
    return result


def _to_host(arr: Any, dev, on_device: bool) -> Any:
    """A device result copied back to the host unless the call was given device arrays."""
    if dev is None or on_device or arr is None:
        return arr
    return dev.to_host(arr)


def _kernel_view(arr: np.ndarray, spec: ActivationSpec) -> np.ndarray:
    """Flat for elementwise kernels; (rows, last axis) for row-wise ones (0-d: one row)."""
    if spec.rowwise:
        # tuple(): the CUDA simulator's device-array shapes refuse negative indices
        n = tuple(arr.shape)[-1] if arr.ndim else 1
        return arr.reshape(_rows(arr.shape[:-1]), n)
    return arr.reshape(-1)


def forward(name: str, x: ArrayLike, *, out: np.ndarray | None = None,
            backend: str | None = None, **params: Any) -> np.ndarray:
    """y = f(x) for the activation `name` (any name or alias in fastgrad.ACTIVATIONS).

    x: any shape, float32 or float64 (integers become float64); y has x's shape and dtype.
    Row-wise activations (softmax, log_softmax) act along the last axis. With a device
    backend x may be a device array (see the module docstring).
    """
    spec = get_activation(name)
    a, b = spec.encoded(params, func=f"{spec.name}_forward")
    dev = _device_backend(backend)
    on_device = _any_device(dev, x)
    x = _array(x, "x", dev)
    buf, result = _result_buffer(out, x.shape, x.dtype, dev, on_device)
    xc = contiguous(x)
    get_backend(backend).activation_forward(spec, _kernel_view(xc, spec),
                                            _kernel_view(buf, spec), a, b)
    return _finish(buf, result, dev)


def backward(name: str, grad_out: ArrayLike, *, x: ArrayLike | None = None,
             y: ArrayLike | None = None, out: np.ndarray | None = None,
             backend: str | None = None, **params: Any) -> np.ndarray:
    """grad_x = grad_out * f'(x) (row-wise: the Jacobian-vector product along the last axis).

    Pass x (the forward input) or y (the forward output) as the table's `needs` says;
    an activation that needs y also accepts x (y is then recomputed). grad_out, x and y
    share one shape and dtype; the result has it too.
    """
    spec = get_activation(name)
    func = f"{spec.name}_backward"
    a, b = spec.encoded(params, func=func)
    dev = _device_backend(backend)
    on_device = _any_device(dev, grad_out, x, y)
    g = _array(grad_out, "grad_out", dev)
    saved = None
    if spec.needs == "x":
        if x is None:
            raise ValueError(f"{func} needs x (the forward input); got "
                             f"{'only y' if y is not None else 'neither x nor y'}")
        saved = _array(x, "x", dev, g.dtype)
        check_shape(saved, "x", g.shape, "the shape of grad_out")
    elif spec.needs == "y":
        if y is not None:
            saved = _array(y, "y", dev, g.dtype)
            check_shape(saved, "y", g.shape, "the shape of grad_out")
        elif x is not None:
            xs = _array(x, "x", dev, g.dtype)
            check_shape(xs, "x", g.shape, "the shape of grad_out")
            saved = forward(spec, xs, backend=backend, **params)
        else:
            raise ValueError(f"{func} needs y (the forward output) or x; got neither")
    buf, result = _result_buffer(out, g.shape, g.dtype, dev, on_device)
    view = _kernel_view
    saved_view = None if saved is None else view(contiguous(saved), spec)
    get_backend(backend).activation_backward(spec, view(contiguous(g), spec), saved_view,
                                             view(buf, spec), a, b)
    return _finish(buf, result, dev)


def _check_linear(x: ArrayLike, W: ArrayLike, b: ArrayLike | None, dev=None):
    x = _array(x, "x", dev)
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., D_in), got a 0-d array")
    W = _array(W, "W", dev, x.dtype)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (D_in, D_out), got shape {W.shape}")
    d_in = tuple(x.shape)[-1]  # tuple(): see _kernel_view
    if d_in != W.shape[0]:
        raise ValueError(f"x has shape {tuple(x.shape)} and W has shape {tuple(W.shape)}: "
                         f"x's last axis ({d_in}) must equal W's first (D_in = {W.shape[0]})")
    if b is not None:
        b = _array(b, "b", dev, x.dtype)
        check_shape(b, "b", (W.shape[1],), "(D_out,)")
    return x, W, b


def _rows(lead: tuple[int, ...]) -> int:
    """Rows of the 2-D view of an array with leading dimensions `lead` (reshape(-1, 0)
    cannot infer them). math.prod, not np.prod: NumPy's costs ~4 µs per call, a third of
    a small dense layer's whole backward."""
    return math.prod(int(n) for n in lead)


def _backend_for(shape: tuple[int, ...], backend: str | None, dev=None):
    # Zero-size dense layers (an empty batch, D_in or D_out of 0) are answered by the
    # reference: BLAS and the compiled loops gain nothing there. Device backends keep
    # their arrays (their kernels handle zero sizes).
    if dev is not None:
        return dev
    return get_backend("numpy") if 0 in shape else get_backend(backend)


def linear_forward(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None, *,
                   activation: str | None = None, out: np.ndarray | None = None,
                   backend: str | None = None, return_pre: bool = False,
                   **params: Any):
    """Dense layer y = act(x @ W + b), the bias and activation fused into one pass over y.

    x: (..., D_in); W: (D_in, D_out); b: (D_out,) or None; y: (..., D_out), x's dtype.
    With return_pre=True returns (y, pre), pre = x @ W + b (what x-needing activations'
    backward takes).
    """
    spec = get_activation(activation)
    a, p2 = spec.encoded(params, func="linear_forward")
    dev = _device_backend(backend)
    on_device = _any_device(dev, x, W, b)
    x, W, b = _check_linear(x, W, b, dev)
    d_in, d_out = W.shape
    lead = x.shape[:-1]
    buf, result = _result_buffer(out, (*lead, d_out), x.dtype, dev, on_device)
    x2 = contiguous(x).reshape(_rows(lead), d_in)
    pre = _empty((x2.shape[0], d_out), x.dtype, dev) if return_pre else None
    kernel = _backend_for((x2.shape[0], d_in, d_out), backend, dev).linear_forward
    kernel(x2, contiguous(W), None if b is None else contiguous(b),
           buf.reshape(x2.shape[0], d_out), pre, spec, a, p2)
    result = _finish(buf, result, dev)
    if return_pre:
        return result, _to_host(pre.reshape(*lead, d_out), dev, on_device)
    return result


def linear_backward(grad_y: ArrayLike, x: ArrayLike, W: ArrayLike, *,
                    activation: str | None = None, y: ArrayLike | None = None,
                    pre: ArrayLike | None = None, need_grad_x: bool = True,
                    backend: str | None = None, **params: Any):
    """Backprop through y = act(x @ W + b): returns (grad_x, grad_W, grad_b).

    g = grad_y passed back through the activation (from pre = x @ W + b or from y, as the
    table says), then grad_x = g @ W^T (..., D_in) [None if need_grad_x is False],
    grad_W = x^T g (D_in, D_out) and grad_b = column sums of g (D_out,), the leading batch
    dimensions of x flattened.
    """
    spec = get_activation(activation)
    a, p2 = spec.encoded(params, func="linear_backward")
    dev = _device_backend(backend)
    on_device = _any_device(dev, grad_y, x, W, y, pre)
    x, W, _ = _check_linear(x, W, None, dev)
    d_in, d_out = W.shape
    g = _array(grad_y, "grad_y", dev, x.dtype)
    check_shape(g, "grad_y", (*x.shape[:-1], d_out), "x's leading dimensions + (D_out,)")
    saved = None
    if spec.needs == "x":
        if pre is None:
            raise ValueError(f"linear_backward with activation {spec.name!r} needs pre "
                             "(x @ W + b, from linear_forward(..., return_pre=True))")
        saved = _array(pre, "pre", dev, x.dtype)
        check_shape(saved, "pre", g.shape, "the shape of grad_y")
    elif spec.needs == "y":
        if y is not None:
            saved = _array(y, "y", dev, x.dtype)
            check_shape(saved, "y", g.shape, "the shape of grad_y")
        elif pre is not None:
            p = _array(pre, "pre", dev, x.dtype)
            check_shape(p, "pre", g.shape, "the shape of grad_y")
            saved = forward(spec, p, backend=backend, **params)
        else:
            raise ValueError(f"linear_backward with activation {spec.name!r} needs y "
                             "(the layer's output) or pre")
    n = _rows(x.shape[:-1])
    g2 = contiguous(g).reshape(n, d_out)
    x2 = contiguous(x).reshape(n, d_in)
    saved2 = None if saved is None else contiguous(saved).reshape(n, d_out)
    kernel = _backend_for((x2.shape[0], d_in, d_out), backend, dev).linear_backward
    grad_x, grad_W, grad_b = kernel(g2, x2, contiguous(W), saved2, spec, a, p2,
                                    bool(need_grad_x))
    if grad_x is not None:
        grad_x = grad_x.reshape(x.shape)
    return tuple(_to_host(arr, dev, on_device) for arr in (grad_x, grad_W, grad_b))


def _make_pair(spec: ActivationSpec, public: str):
    params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items()) or "none"
    saved = {"x": "x (the input)", "y": "y (the output; x also accepted)", None: "nothing"}

    def fwd(x: ArrayLike, *, out: np.ndarray | None = None, backend: str | None = None,
            **params: Any) -> np.ndarray:
        return forward(spec, x, out=out, backend=backend, **params)

    def bwd(grad_out: ArrayLike, *, x: ArrayLike | None = None, y: ArrayLike | None = None,
            out: np.ndarray | None = None, backend: str | None = None,
            **params: Any) -> np.ndarray:
        return backward(spec, grad_out, x=x, y=y, out=out, backend=backend, **params)

    axis = " along the last axis" if spec.rowwise else " elementwise"
    fwd.__doc__ = (f"{spec.name} forward{axis}: {spec.formula}.\n\n"
                   f"Parameters: {params}. Output: x's shape and dtype.")
    bwd.__doc__ = (f"{spec.name} backward{axis}: grad_x = grad_out * f'(x), {spec.derivative}."
                   f"\n\nNeeds {saved[spec.needs]}. Parameters: {params}.")
    for func, suffix in ((fwd, "forward"), (bwd, "backward")):
        func.__name__ = func.__qualname__ = f"{public}_{suffix}"
        func.__module__ = "fastgrad"
    return fwd, bwd


def activation_functions() -> dict[str, Any]:
    """`<name>_forward` / `<name>_backward` for every activation in the table (and `silu`)."""
    funcs = {}
    names = [(s, s.name) for s in ACTIVATIONS.values()] + [(ACTIVATIONS["swish"], "silu")]
    for spec, public in names:
        fwd, bwd = _make_pair(spec, public)
        funcs[fwd.__name__] = fwd
        funcs[bwd.__name__] = bwd
    return funcs


def one_hot(labels: ArrayLike, n_classes: int, dtype=np.float64) -> np.ndarray:
    """(N, n_classes) array with a 1 at each row's class index; ValueError naming the
    first bad entry when a label is not an integer in [0, n_classes)."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.dtype.kind not in "iu":
        raise TypeError(f"class-index target must be a 1-D integer array, got dtype "
                        f"{lab.dtype} and shape {lab.shape}")
    bad = np.flatnonzero((lab < 0) | (lab >= n_classes))
    if bad.size:
        raise ValueError(f"target[{bad[0]}] = {lab[bad[0]]} is not a class index in "
                         f"[0, {n_classes}) ({bad.size} such entries)")
    out = np.zeros((lab.shape[0], n_classes), dtype)
    out[np.arange(lab.shape[0]), lab] = 1
    return out


def _check_loss(spec: LossSpec, pred: ArrayLike, target: ArrayLike):
    """pred and target as C-contiguous 2-D (N, K) arrays of pred's float dtype."""
    p = as_float_array(pred, "pred")
    if p.ndim not in (1, 2) or p.size == 0:
        raise ValueError(f"pred must be a non-empty (N,) or (N, K) array, got shape {p.shape}")
    t = np.asarray(target)
    if spec.rowwise:
        if p.ndim != 2:
            raise ValueError(f"{spec.name} takes logits of shape (N, C), got {p.shape}")
        if t.ndim == 1 and t.dtype.kind in "iu":
            check_shape(t, "target", p.shape[:1], "one class index per row of pred")
            return contiguous(p), one_hot(t, p.shape[1], p.dtype)
    t = as_float_array(t, "target").astype(p.dtype, copy=False)
    check_shape(t, "target", p.shape, "the shape of pred" + (
        ", or (N,) integer class indices" if spec.rowwise else ""))
    if p.ndim == 1:
        p, t = p.reshape(-1, 1), t.reshape(-1, 1)
    return contiguous(p), contiguous(t)


def loss(name: str | LossSpec, pred: ArrayLike, target: ArrayLike, *,
         backend: str | None = None) -> float:
    """The mean loss `name` (see fastgrad.LOSSES) of raw outputs `pred` against `target`.

    pred: (N,) or (N, K) float32/float64 (logits for the cross-entropies); target: pred's
    shape, or for cross_entropy (N,) integer class indices. Returns a Python float
    (accumulated in float64).
    """
    spec = get_loss(name)
    p, t = _check_loss(spec, pred, target)
    return get_kernel("loss_forward", backend)(spec, p, t)


def loss_grad(name: str | LossSpec, pred: ArrayLike, target: ArrayLike, *,
              backend: str | None = None) -> np.ndarray:
    """dL/dpred of `loss(name, pred, target)`: pred's shape and dtype (the 1/N of the
    mean included; for cross_entropy (softmax(pred) - onehot(target)) / N)."""
    spec = get_loss(name)
    p0 = as_float_array(pred, "pred")
    p, t = _check_loss(spec, p0, target)
    out = np.empty_like(p)
    get_kernel("loss_backward", backend)(spec, p, t, out)
    return out.reshape(p0.shape)
