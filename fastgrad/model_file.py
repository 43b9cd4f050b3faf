"""A model trained by the command line, in one file that ``fastgrad.load`` reads.

The command standardizes the features before training. `fold_standardization` moves that
transformation into the first layer (W' = W / s, b' = b - (m / s) W, exact in float64),
so the saved model takes the raw features: ``fastgrad.load("model.npz").predict(X)``
works from Python on the same columns, with nothing to remember.

What the model file does not know, the command adds as a small JSON record ``cli`` in
the same archive (fastgrad.io's `extra`, under the model's checksum): the feature column
names (so `predict` picks the columns by name, and ignores a target column), the target's
name, the data source and the seeded split (so `evaluate` finds the held-out rows again).
A model saved from Python has no record; the commands then take the columns as they come.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from .datasets import BUNDLED

RECORD = "cli"


class ModelFileError(ValueError):
    """The model file is missing, unreadable, or not a model saved by fastgrad."""


@dataclass
class TrainingRecord:
    """Where the model's data came from and how it was split."""

    feature_names: list[str]
    target_name: str
    source: str
    seed: int
    test_size: float
    task: str

    @property
    def source_is_bundled(self) -> bool:
        return self.source in BUNDLED


def fold_standardization(model, mean: np.ndarray, scale: np.ndarray) -> None:
    """Make the model take raw x where it was trained on (x - mean) / scale: the first
    layer's W (d_in, d_out) becomes W / scale[:, None] and b becomes b - (mean / scale) W.
    Computed in float64, stored in the model's dtype."""
    W, b = model.layers[0].W, model.layers[0].b
    W64 = W.astype(np.float64) / np.asarray(scale, np.float64)[:, None]
    b64 = b.astype(np.float64) - (np.asarray(mean, np.float64) / scale) @ W.astype(np.float64)
    W[...] = W64
    b[...] = b64


def save(model, path: str, record: TrainingRecord) -> str:
    """Save the model with the record beside it (one atomic write). Returns path."""
    from . import io as model_io

    model_io.save(model, path, extra={RECORD: asdict(record)})
    return path


def load(path: str):
    """(model, TrainingRecord or None); ModelFileError when the file is missing,
    unreadable or not fastgrad's."""
    import fastgrad as fg

    from . import io as model_io

    if not os.path.exists(path):
        raise ModelFileError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"cannot read {path}: it is a directory")
    try:
        model = fg.load(path)
    except fg.ModelFileError as exc:
        raise ModelFileError(_plain(str(exc), path)) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = model_io.read_extra(path).get(RECORD)
    except fg.ModelFileError as exc:
        raise ModelFileError(_plain(str(exc), path)) from None
    if raw is None:
        return model, None
    try:
        return model, TrainingRecord(**raw)
    except TypeError as exc:
        raise ModelFileError(f"{path}: unreadable {RECORD} record ({exc})") from None


def _plain(message: str, path: str) -> str:
    # fastgrad.io quotes the path (repr); the command line names files bare
    return message.replace(repr(path), path)
