"""Models: `Dense` layers composed into a `Sequential`, and `MLP` for the common case.

A model keeps every weight and bias as views into ONE flat parameter vector (layer by
layer: W_0, b_0, W_1, b_1, ...), and its gradients likewise, so an optimizer step is a
single compiled pass and a layer's parameters are one contiguous slice. Forward and
backward go through the functional layer (`fastgrad.linear_forward` / `linear_backward`).

The last layer's activation is the model's *output* activation: "identity"
(regression, trained with mse), "sigmoid" (binary, binary cross-entropy from logits) or
"softmax" (multiclass, cross-entropy from logits), or None to infer it from y at fit.
The network itself always ends in raw outputs (logits); the output activation is applied
by `predict_proba`, and the loss takes the logits so it is stable for any value.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceType
from typing import Any

import numpy as np

from . import functional as F
from .activations import get_activation
from .losses import LOSS_FOR_OUTPUT

OUTPUT_ACTIVATIONS = ("identity", "sigmoid", "softmax")

# Initialization by the activation that follows the layer (He et al. 2015 for the ReLU
# family, Glorot & Bengio 2010 for the saturating and linear ones, LeCun for SELU, whose
# self-normalization assumes it).
_GLOROT = {"tanh", "sigmoid", "identity", "softmax", "log_softmax"}
_LECUN = {"selu"}


def init_scheme(activation: str | None) -> str:
    """"he", "glorot" or "lecun": the initialization used before `activation`."""
    name = get_activation(activation).name
    return "lecun" if name in _LECUN else "glorot" if name in _GLOROT else "he"


class Dense:
    """Fully connected layer y = act(x @ W + b), W (d_in, d_out), b (d_out,).

    activation: any name in fastgrad.ACTIVATIONS (parameters as keywords, e.g.
    ``Dense(8, 4, "leaky_relu", alpha=0.1)``); None means identity, except on a model's
    last layer, where None leaves the output activation to be inferred at fit.
    """

    def __init__(self, d_in: int, d_out: int, activation: str | None = None,
                 **params: Any) -> None:
        for name, v in (("d_in", d_in), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense {name} must be a positive integer, got {v!r}")
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.activation = None if activation is None else get_activation(activation).name
        self.params = dict(params)
        spec = get_activation(self.activation)
        spec.encoded(self.params, func="Dense")  # validate the parameters now
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None

    @property
    def spec(self):
        return get_activation(self.activation)

    def __getstate__(self) -> dict:
        # W, b and their gradients are views into the model's flat buffers: the model
        # re-creates them after unpickling (a pickled view would become a detached copy).
        return {k: v for k, v in self.__dict__.items()
                if k not in ("W", "b", "grad_W", "grad_b")}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Dense({self.d_in}, {self.d_out}, activation={self.activation!r}{extra})"


class Sequential:
    """A stack of Dense layers trained end to end.

    layers: Dense layers whose widths chain (layer k's d_out = layer k+1's d_in). The last
    layer's activation is the output activation (see the module docstring).
    dtype: "float32" or "float64" for parameters and computation. backend: a backend name
    for every kernel (None: the default). seed: makes initialization, shuffling and
    validation splits reproducible bit for bit on one machine and backend.
    """

    def __init__(self, layers: SequenceType[Dense], *, dtype: str = "float32",
                 backend: str | None = None, seed: int | None = None) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, Dense) for layer in layers):
            raise TypeError("Sequential takes a non-empty list of fastgrad.Dense layers")
        for k in range(1, len(layers)):
            if layers[k].d_in != layers[k - 1].d_out:
                raise ValueError(f"layer {k} has d_in={layers[k].d_in} but layer {k - 1} "
                                 f"has d_out={layers[k - 1].d_out}")
        out = layers[-1].activation
        if out is not None and out not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"the last layer's activation is the output activation and "
                             f"must be one of {OUTPUT_ACTIVATIONS} or None, got {out!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if backend is not None:
            from .backends import get_backend
            get_backend(backend)  # fail now, naming the reason, not at fit
        self.layers = layers
        self.backend = backend
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.task: str | None = None
        self.classes_: np.ndarray | None = None
        self.n_features_in_ = layers[0].d_in
        self._y_ndim = 1
        self.history_ = None
        self._allocate()
        self.reset_parameters()

    # --- parameters ------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["grads"], state["layer_slices"]
        state.pop("_runner_cache", None)  # views into the buffers above: rebuilt on use
        return state

    def __setstate__(self, state: dict) -> None:
        params = state.pop("params")
        self.__dict__.update(state)
        self._allocate()  # fresh flat buffers with every layer's W and b as views again
        self.params[...] = params

    def _allocate(self) -> None:
        sizes = [layer.d_in * layer.d_out + layer.d_out for layer in self.layers]
        self.params = np.zeros(sum(sizes), self.dtype)
        self.grads = np.zeros_like(self.params)
        self.layer_slices = []
        start = 0
        for layer, size in zip(self.layers, sizes):
            n_w = layer.d_in * layer.d_out
            layer.W = self.params[start:start + n_w].reshape(layer.d_in, layer.d_out)
            layer.b = self.params[start + n_w:start + size]
            layer.grad_W = self.grads[start:start + n_w].reshape(layer.d_in, layer.d_out)
            layer.grad_b = self.grads[start + n_w:start + size]
            self.layer_slices.append(slice(start, start + size))
            start += size

    def reset_parameters(self) -> None:
        """Fresh weights (He / Glorot / LeCun by each layer's activation), zero biases."""
        for layer in self.layers:
            fan_in, fan_out = layer.d_in, layer.d_out
            scheme = init_scheme(layer.activation)
            if scheme == "glorot":
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w = self._rng.uniform(-limit, limit, (fan_in, fan_out))
            else:
                std = np.sqrt((2.0 if scheme == "he" else 1.0) / fan_in)
                w = self._rng.standard_normal((fan_in, fan_out)) * std
            layer.W[...] = w
            layer.b[...] = 0

    @property
    def weights(self) -> list[np.ndarray]:
        return [layer.W for layer in self.layers]

    @property
    def biases(self) -> list[np.ndarray]:
        return [layer.b for layer in self.layers]

    @property
    def output(self) -> str | None:
        return self.layers[-1].activation

    @property
    def loss_spec(self):
        """The loss the model trains with (from its output activation)."""
        if self.output is None:
            raise RuntimeError("the output activation is not known yet: call fit first "
                               "or give output=")
        return LOSS_FOR_OUTPUT[self.output]

    def hidden_activation(self, k: int):
        """(activation spec, params) layer k applies in the network (the last layer: none,
        its output activation is applied outside, on the logits)."""
        if k == len(self.layers) - 1:
            return get_activation(None), {}
        layer = self.layers[k]
        return layer.spec, layer.params

    # --- inference -------------------------------------------------------------------
    def forward(self, X: Any) -> np.ndarray:
        """Raw outputs (logits) for X (N, n_features) -> (N, d_out), the model's dtype."""
        a = self._check_X(X)
        return self._logits(a)

    def _logits(self, a: np.ndarray) -> np.ndarray:
        from .backends import get_backend

        # A device backend: X goes in once, the activations stay there, the logits come
        # back once (each layer's W and b are copied in by the functional layer).
        device = self.backend is not None and getattr(get_backend(self.backend), "DEVICE",
                                                      False)
        if device:
            a = get_backend(self.backend).to_device(a)
        for k, layer in enumerate(self.layers):
            spec, params = self.hidden_activation(k)
            a = F.linear_forward(a, layer.W, layer.b, activation=spec.name,
                                 backend=self.backend, **params)
        return get_backend(self.backend).to_host(a) if device else a

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, n_classes), columns in the order of classes_ (binary:
        [1 - p, p])."""
        self._require_classifier("predict_proba")
        z = self.forward(X)
        if self.output == "sigmoid":
            p = F.forward("sigmoid", z[:, 0], backend=self.backend)
            return np.stack([1 - p, p], axis=1)
        return F.forward("softmax", z, backend=self.backend)

    def predict(self, X: Any) -> np.ndarray:
        """Labels (classification, from classes_) or values (regression: (N,) when fit on
        1-D y, else (N, K))."""
        if self.task is None:
            raise RuntimeError("the model has not been fit: call fit first")
        z = self.forward(X)
        if self.task == "regression":
            return z[:, 0] if self._y_ndim == 1 else z
        if self.output == "sigmoid":
            idx = (z[:, 0] >= 0).astype(np.intp)  # sigmoid(z) >= 0.5 without computing it
        else:
            idx = np.argmax(z, axis=1)
        return self.classes_[idx]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy (classification) or the coefficient of determination R^2 (regression,
        averaged over outputs like scikit-learn's r2_score)."""
        from .targets import r2_score, target_indices
        if self.task is None:
            raise RuntimeError("the model has not been fit: call fit first")
        pred = self.predict(X)
        if self.task == "regression":
            y = _as_targets(y, len(pred), self.dtype)
            return r2_score(y.reshape(pred.shape), pred)
        idx = target_indices(y, self.classes_, len(pred))
        return float(np.mean(self.classes_[idx] == pred))

    def _require_classifier(self, what: str) -> None:
        if self.task is None:
            raise RuntimeError("the model has not been fit: call fit first")
        if self.task == "regression":
            raise AttributeError(f"{what} is for classifiers; this model does regression")

    # --- training and files ------------------------------------------------------------
    def fit(self, X: Any, y: Any, **kwargs: Any):
        """Train the model; see `fastgrad.train.fit` for every parameter. Returns the
        History (also kept as `history_`)."""
        from .train import fit
        return fit(self, X, y, **kwargs)

    def save(self, path: str) -> None:
        """Write the model to `path` (npz + JSON metadata, atomically); see fastgrad.io."""
        from .io import save
        save(self, path)

    # --- validation --------------------------------------------------------------------
    def _check_X(self, X: Any) -> np.ndarray:
        """X as a C-contiguous 2-D array of the model's dtype, finite, non-empty, with the
        model's feature count."""
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"X must be numeric, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {arr.shape}"
                             + ("; use X.reshape(-1, 1) for one feature" if arr.ndim == 1
                                else ""))
        if arr.shape[0] == 0:
            raise ValueError(f"X is empty (shape {arr.shape}): at least one sample needed")
        if arr.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {arr.shape[1]} features, but the model expects "
                             f"{self.n_features_in_}")
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        check_finite(arr, "X")
        return arr

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        return f"Sequential([{inner}], dtype={self.dtype.name!r})"


class MLP(Sequential):
    """Multilayer perceptron: layer_sizes = [n_features, hidden..., n_outputs].

    Every hidden layer applies `activation` (any name in fastgrad.ACTIVATIONS); the output
    activation is `output` ("identity", "sigmoid", "softmax") or None to infer it from y
    at fit (float y: regression; two classes: binary; more: multiclass).
    """

    def __init__(self, layer_sizes: SequenceType[int], activation: str = "relu",
                 output: str | None = None, *, dtype: str = "float32",
                 backend: str | None = None, seed: int | None = None) -> None:
        sizes = list(layer_sizes)
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least [n_features, n_outputs], "
                             f"got {layer_sizes!r}")
        if output is not None:
            output = get_activation(output).name
        self.activation = get_activation(activation).name
        self.layer_sizes = sizes
        layers = [Dense(sizes[k], sizes[k + 1], self.activation)
                  for k in range(len(sizes) - 2)]
        layers.append(Dense(sizes[-2], sizes[-1], output))
        super().__init__(layers, dtype=dtype, backend=backend, seed=seed)

    def __repr__(self) -> str:
        return (f"MLP({self.layer_sizes}, activation={self.activation!r}, "
                f"output={self.output!r}, dtype={self.dtype.name!r})")


def check_finite(arr: np.ndarray, name: str) -> None:
    """ValueError naming the rows of `arr` that hold NaN or infinity."""
    if arr.dtype.kind != "f" or np.isfinite(arr).all():
        return
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    rows = np.flatnonzero(bad)
    shown = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
    raise ValueError(f"{name} contains NaN or infinity in {rows.size} row(s): {shown}")


def _as_targets(y: Any, n: int, dtype) -> np.ndarray:
    """Regression targets as a float array of `dtype`, (N,) or (N, K), finite."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"regression y must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ValueError(f"y has shape {arr.shape}, expected ({n},) or ({n}, n_outputs) "
                         "(one row per sample of X)")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    check_finite(arr, "y")
    return arr
