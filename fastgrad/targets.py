"""Targets and metrics: labels to class indices, the task a y implies, the loss targets
a model trains against, accuracy and R^2."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import functional as F
from .nn import Sequential, _as_targets, check_finite


def target_indices(y: Any, classes: np.ndarray, n: int) -> np.ndarray:
    """Index into `classes` of each label of y (1-D, length n); ValueError naming labels
    that are not among `classes` (unseen at fit)."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"y has shape {arr.shape}, expected ({n},) (one label per sample)")
    try:
        idx = np.searchsorted(classes, arr)
    except TypeError as exc:
        raise ValueError(f"y's labels cannot be compared with the model's classes_ "
                         f"{classes.tolist()}: {exc}") from None
    idx = np.minimum(idx, len(classes) - 1)
    unseen = classes[idx] != arr
    if np.any(unseen):
        labels = np.unique(arr[unseen])
        raise ValueError(f"y contains labels not seen during fit: {labels[:10].tolist()}; "
                         f"the model's classes_ are {classes.tolist()}")
    return idx


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination, averaged over outputs (scikit-learn's r2_score: an
    output with constant y scores 1 when predicted exactly, else 0)."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(r2))


def _is_continuous(y: np.ndarray, d_out: int) -> bool:
    """Regression targets rather than labels: float y that is 2-D, not integer-valued, or
    integer-valued with more distinct values than the output layer could classify
    (d_out = 1 fits 2 classes, otherwise d_out classes)."""
    if y.dtype.kind != "f":
        return False
    if y.ndim == 2 or not np.array_equal(y, np.round(y)):
        return True
    n_values = len(np.unique(y))
    return not (n_values == d_out or (n_values == 2 and d_out == 1))


def prepare_targets(model: Sequential, y: Any, n: int, classes: Any = None):
    """Fix the model's task, output activation and classes_ on its first fit (inferred
    from y unless the output was given); return (T, labels): T the (N, K) loss targets
    in the model's dtype, labels the class indices (None for regression)."""
    arr = np.asarray(y)
    d_out = model.layers[-1].d_out
    if model.task is None:
        out = model.output
        if out == "identity" or (out is None and _is_continuous(arr, d_out)):
            model.task = "regression"
        elif out == "sigmoid":
            model.task = "binary"
        elif out == "softmax":
            model.task = "multiclass"
        if model.task != "regression":
            if arr.ndim != 1:
                raise ValueError(f"classification y must be 1-D (one label per sample), "
                                 f"got shape {arr.shape}")
            if arr.dtype.kind == "f":
                check_finite(arr, "y")
            found = np.unique(arr if classes is None else np.asarray(classes))
            if len(found) < 2:
                raise ValueError(f"y has a single class {found.tolist()}: a classifier "
                                 "needs at least two")
            task = model.task or ("binary" if len(found) == 2 else "multiclass")
            if out is None:
                out = "sigmoid" if (len(found) == 2 and d_out == 1) else "softmax"
            want = 1 if out == "sigmoid" else len(found)
            if d_out != want or (out == "sigmoid" and len(found) != 2):
                model.task = None
                raise ValueError(f"y has {len(found)} classes but the output layer has "
                                 f"d_out={d_out}: expected {want}"
                                 + (" (or 1 with a sigmoid output)" if len(found) == 2 else ""))
            model.task, model.classes_ = task, found
        else:
            out = "identity"
            model._y_ndim = arr.ndim
        model.layers[-1].activation = out
    if model.task == "regression":
        t = _as_targets(arr, n, model.dtype)
        k = 1 if t.ndim == 1 else t.shape[1]
        if k != d_out:
            raise ValueError(f"y has {k} output(s) per sample but the output layer has "
                             f"d_out={d_out}")
        return np.ascontiguousarray(t.reshape(n, k)), None
    idx = target_indices(arr, model.classes_, n)
    if model.output == "sigmoid":
        return idx.astype(model.dtype).reshape(n, 1), idx
    return F.one_hot(idx, len(model.classes_), model.dtype), idx


def score_logits(model: Sequential, logits: np.ndarray, T: np.ndarray, labels) -> float:
    """The model's metric from its raw outputs: R^2 against T (regression) or accuracy
    against the class indices `labels`."""
    if model.task == "regression":
        return r2_score(T, logits)
    pred = (logits[:, 0] >= 0) if model.output == "sigmoid" else np.argmax(logits, axis=1)
    return float(np.mean(pred == labels))
