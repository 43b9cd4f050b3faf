"""A trained model and the preprocessing the command line applied, in one .npz file.

The model part is whatever ``model.save`` writes (``fastgrad.load`` reads it back). The
command line standardizes the features and knows the column names and the training split;
`save` adds those as extra arrays named ``cli.*`` to the same archive, so that
``fastgrad predict model.npz new.csv`` applies the same transformation to new rows and
``fastgrad evaluate model.npz`` finds the held-out rows again. A model saved from Python
(no ``cli.*`` arrays) loads with ``Preprocessing`` None and takes features as they are.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .datasets import BUNDLED, Standardizer

PREFIX = "cli."


class ModelFileError(ValueError):
    """The file is missing, unreadable, or not a model saved by fastgrad."""


@dataclass
class Preprocessing:
    """What the command line did to the data before the model saw it."""

    feature_names: list[str]
    target_name: str
    mean: np.ndarray
    scale: np.ndarray
    source: str
    seed: int
    test_size: float
    task: str

    @property
    def source_is_bundled(self) -> bool:
        return self.source in BUNDLED

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) / scale, X of shape (n, len(mean)): the training rows' statistics."""
        return Standardizer(self.mean, self.scale).transform(X)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature_names": np.array(self.feature_names, dtype=str),
            "target_name": np.array(self.target_name, dtype=str),
            "mean": np.asarray(self.mean, np.float64),
            "scale": np.asarray(self.scale, np.float64),
            # a relative path is kept as given: evaluate from the same directory finds it
            "source": np.array(self.source, dtype=str),
            "seed": np.array(self.seed, dtype=np.int64),
            "test_size": np.array(self.test_size, dtype=np.float64),
            "task": np.array(self.task, dtype=str),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Preprocessing:
        return cls(feature_names=[str(s) for s in a["feature_names"]],
                   target_name=str(a["target_name"]), mean=a["mean"], scale=a["scale"],
                   source=str(a["source"]), seed=int(a["seed"]),
                   test_size=float(a["test_size"]), task=str(a["task"]))


def _resolved(path: str) -> str:
    # np.savez appends .npz to a name without it
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        return path + ".npz"
    return path


def save(model, path: str, prep: Preprocessing) -> str:
    """model.save(path), then the preprocessing arrays appended to the archive. Returns the
    path written (with .npz appended when numpy added it)."""
    model.save(path)
    path = _resolved(path)
    with zipfile.ZipFile(path, "a") as z:
        for name, arr in prep.arrays().items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            z.writestr(f"{PREFIX}{name}.npy", buf.getvalue())
    return path


def load(path: str):
    """(model, Preprocessing or None) from a file written by `save` or ``model.save``;
    ModelFileError when the file is missing, unreadable or not fastgrad's."""
    import fastgrad as fg

    if not os.path.exists(path):
        raise ModelFileError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"cannot read {path}: it is a directory")
    try:
        model = fg.load(path)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        # the trainer's load names what is wrong (not an archive, missing arrays, ...)
        raise ModelFileError(f"{path} is not a fastgrad model file: {exc}") from None
    prep = None
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [k for k in z.files if k.startswith(PREFIX)]
            if names:
                prep = Preprocessing.from_arrays({k[len(PREFIX):]: z[k] for k in names})
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged preprocessing record ({exc})") from None
    return model, prep


def n_features(model) -> int:
    """How many input features the model takes."""
    return int(model.layer_sizes[0])


def task(model) -> str:
    """"regression", "binary" or "multiclass"."""
    return str(model.task)
