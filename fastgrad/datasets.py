"""Data for the command line and the examples: bundled datasets, CSV and NPZ files.

- ``load_data(source, target=None)``: a bundled dataset by name (``BUNDLED``: digits, iris,
  wine, breast_cancer, diabetes, from scikit-learn, no download) or a path to a ``.csv``
  (header row, numeric feature columns, the target by name or index, default the last
  column) or ``.npz`` file (arrays ``X`` and ``y``, or ``X`` and the array named by
  ``target``). Returns a `Dataset` (X float64 (n, d), y (n,), names, source).
- ``detect_task(y)``: "regression", "binary" or "multiclass" from the target.
- ``train_test_split(X, y, test_size, seed, stratify)``: the held-out split.
- ``Standardizer``: per-column mean / standard deviation, fit on the training rows only.

Every problem with the user's data raises `DataError` (a ValueError) with one line that
names the file, the line and the column where it applies.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

BUNDLED: dict[str, str] = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
}
"""Bundled dataset name -> the scikit-learn loader that ships it (no download)."""

TASKS = ("regression", "binary", "multiclass")

MAX_CLASSES = 30
"""An integer-valued numeric target with at most this many distinct values (and fewer
than half as many values as rows) is taken as class labels; more means regression.
`--task` overrides the guess."""


class DataError(ValueError):
    """The user's data cannot be used: missing file, malformed CSV, unknown column, NaN..."""


@dataclass
class Dataset:
    """X: (n, d) float64 features; y: (n,) target (numbers, or label strings);
    feature_names: d names; target_name: the target's name; source: where it came from."""

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target_name: str
    source: str


# --------------------------------------------------------------------------- loading


def load_data(source: str, target: str | int | None = None) -> Dataset:
    """A bundled dataset by name, or a .csv / .npz file (see the module docstring)."""
    if source in BUNDLED and not os.path.exists(source):
        if target is not None:
            raise DataError(f"--target applies to CSV and NPZ files, not to the bundled "
                            f"dataset {source!r}")
        return load_bundled(source)
    if not os.path.exists(source):
        raise DataError(f"no such file: {source} (bundled datasets: {', '.join(BUNDLED)})")
    if os.path.isdir(source):
        raise DataError(f"cannot read {source}: it is a directory, expected a .csv or .npz "
                        "file")
    if source.lower().endswith(".npz"):
        return load_npz(source, target)
    return load_csv(source, target)


def load_bundled(name: str) -> Dataset:
    """One of BUNDLED, from scikit-learn's bundled copies (no download)."""
    if name not in BUNDLED:
        raise DataError(f"unknown dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise DataError(f"the bundled dataset {name!r} comes from scikit-learn, which is not "
                        "installed: pip install 'fastgrad[train]'") from None
    bunch = getattr(skd, BUNDLED[name])()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    names = getattr(bunch, "feature_names", None)
    names = [str(n) for n in names] if names is not None else [f"x{i}" for i in
                                                                range(X.shape[1])]
    target_names = getattr(bunch, "target_names", None)
    if target_names is not None and name != "digits":
        # iris's 0, 1, 2 read better as setosa, versicolor, virginica
        y = np.asarray(target_names)[y].astype(str)
    return Dataset(X, y, names, "target", name)


def _column_index(header: list[str], target: str | int | None, path: str) -> int:
    if target is None:
        return len(header) - 1
    key = str(target)
    if key in header:
        return header.index(key)
    try:
        i = int(key)
    except ValueError:
        raise DataError(f"{path}: unknown column {key!r}; columns: "
                        f"{', '.join(header)}") from None
    if not -len(header) <= i < len(header):
        raise DataError(f"{path}: column index {i} is out of range; the file has "
                        f"{len(header)} columns (0 to {len(header) - 1})")
    return i % len(header)


def _to_float(cells: list[str], lines: list[int], path: str, column: str) -> np.ndarray:
    """A column of strings as float64; DataError at the first cell that is not a finite
    number, naming its line."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        for cell, line in zip(cells, lines):
            try:
                float(cell)
            except ValueError:
                what = "an empty cell" if not cell.strip() else f"{cell.strip()!r}"
                raise DataError(f"{path} line {line}, column {column!r}: {what} is not a "
                                "number") from None
        raise  # numpy refused something float() accepts: not expected
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path} line {lines[i]}, column {column!r}: {cells[i].strip()} "
                        "(NaN and infinite values are not supported; drop or impute them)")
    return values


def load_csv(path: str, target: str | int | None = None) -> Dataset:
    """A CSV file with a header row; every column but the target must be numeric. The
    target (name or index, default the last column) may hold numbers or label strings."""
    header, columns, lines = _read_table(path)
    if len(header) < 2:
        raise DataError(f"{path}: the header has {len(header)} column; expected at least "
                        "one feature column and a target column (is it comma-separated?)")
    t = _column_index(header, target, path)
    features = [i for i in range(len(header)) if i != t]
    X = np.column_stack([_to_float(columns[i], lines, path, header[i]) for i in features])
    y = _target_values([c.strip() for c in columns[t]], lines, path, header[t])
    return Dataset(X, y, [header[i] for i in features], header[t], path)


def _target_values(cells: list[str], lines: list[int], path: str, name: str) -> np.ndarray:
    """Numbers when every cell is a number (then NaN is refused), else label strings."""
    try:
        np.array(cells, dtype=np.float64)
    except ValueError:
        empty = [line for cell, line in zip(cells, lines) if not cell]
        if empty:
            raise DataError(f"{path} line {empty[0]}, column {name!r}: the target is "
                            "empty") from None
        return np.array(cells, dtype=str)
    return _to_float(cells, lines, path, name)


def load_npz(path: str, target: str | None = None) -> Dataset:
    """An .npz file with a 2-D array ``X`` and a 1-D target ``y`` (or the array named by
    `target`). Pickled (object) arrays are refused."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: not an .npz file ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile and kin: a damaged or foreign file
        raise DataError(f"cannot read {path}: not an .npz file ({exc})") from None
    key = "y" if target is None else str(target)
    for needed in ("X", key):
        if needed not in arrays:
            raise DataError(f"{path}: no array named {needed!r}; arrays: "
                            f"{', '.join(arrays) or 'none'} (expected X and y, or "
                            "--target NAME)")
    X, y = arrays["X"], arrays[key]
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (samples, features), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{path}: {key} must be 1-D with one value per row of X "
                        f"({len(X)}), got shape {y.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    _check_finite(X, path, "X")
    if y.dtype.kind in "biuf":
        y = y.astype(np.float64) if y.dtype.kind == "f" else y
        _check_finite(y.astype(np.float64), path, key)
    elif y.dtype.kind in "US":
        y = y.astype(str)
    else:
        raise DataError(f"{path}: {key} must hold numbers or label strings, got dtype "
                        f"{y.dtype}")
    return Dataset(X, y, [f"x{i}" for i in range(X.shape[1])], key, path)


def _check_finite(a: np.ndarray, path: str, name: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise DataError(f"{path}: {name} has {int(bad.sum())} NaN or infinite value(s), the "
                        f"first at index {tuple(int(i) for i in where)}; drop or impute them")


def load_features(path: str, feature_names: list[str] | None = None,
                  n_features: int | None = None) -> np.ndarray:
    """Features to predict on: a CSV (with the model's feature columns selected by name
    when the header has them all, any target column ignored; else every column, which must
    number `n_features`) or an .npz with ``X``."""
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if path.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise DataError(f"{path}: no array named 'X'; arrays: "
                                    f"{', '.join(z.files) or 'none'}")
                X = z["X"]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read {path}: not an .npz file ({exc})") from None
        if X.ndim != 2 or X.dtype.kind not in "biuf":
            raise DataError(f"{path}: X must be a 2-D numeric array, got {X.dtype} "
                            f"{X.shape}")
        X = X.astype(np.float64)
        _check_finite(X, path, "X")
        return X
    data = _read_table(path)
    header, columns, lines = data
    if feature_names and all(n in header for n in feature_names):
        wanted = [header.index(n) for n in feature_names]
    else:
        if n_features is not None and len(header) != n_features:
            names = f" ({', '.join(feature_names)})" if feature_names else ""
            raise DataError(f"{path} has {len(header)} columns; the model takes "
                            f"{n_features} features{names}")
        wanted = list(range(len(header)))
    return np.column_stack([_to_float(columns[i], lines, path, header[i]) for i in wanted])


def _read_table(path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, columns of cells, line numbers) of a CSV with any number of columns >= 1."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows, lines = [], []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: expected "
                                    f"{len(header)} fields (as in the header), found "
                                    f"{len(row)}")
                rows.append(row)
                lines.append(reader.line_num)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not a UTF-8 text file ({exc.reason} at byte "
                        f"{exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if header is None:
        raise DataError(f"{path} is empty; expected a header row and data rows")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) in the header: {', '.join(dupes)}")
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return header, [list(c) for c in zip(*rows)], lines


# --------------------------------------------------------------------------- task, split


def detect_task(y: np.ndarray) -> str:
    """"binary" or "multiclass" for label strings, or integer-valued numbers with at most
    MAX_CLASSES distinct values (and fewer than half as many as rows); else "regression".
    A target with a single value is refused."""
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"the target has a single value ({classes[0] if len(classes) else 'none'}"
                        "); nothing to learn")
    if y.dtype.kind in "USO":
        return "binary" if len(classes) == 2 else "multiclass"
    if y.dtype.kind == "b" or len(classes) == 2:
        return "binary"
    integral = bool(np.all(classes == np.round(classes)))
    if integral and len(classes) <= MAX_CLASSES and len(classes) < 0.5 * len(y):
        return "multiclass"
    return "regression"


def check_task(task: str, y: np.ndarray) -> None:
    """DataError when an explicitly chosen task cannot fit the target."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "regression" and np.asarray(y).dtype.kind in "USO":
        raise DataError("task 'regression' needs a numeric target; this one holds labels "
                        f"such as {np.asarray(y)[0]!r}")
    n = len(np.unique(y))
    if task == "binary" and n != 2:
        raise DataError(f"task 'binary' needs exactly 2 classes; the target has {n}")


def train_test_split(X: np.ndarray, y: np.ndarray, test_size: float = 0.2,
                     seed: int | None = 0, stratify: bool = False):
    """(X_train, X_test, y_train, y_test): a seeded random split holding out `test_size` of
    the rows; with stratify=True each class keeps its share (at least one test row per
    class that has two or more)."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    n = len(y)
    if stratify:
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            k = int(round(test_size * len(idx)))
            k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
            test.append(idx[:k])
        test_idx = np.sort(np.concatenate(test))
    else:
        test_idx = np.sort(rng.permutation(n)[:max(1, int(round(test_size * n)))])
    mask = np.zeros(n, bool)
    mask[test_idx] = True
    if mask.all() or not mask.any():
        raise DataError(f"{n} rows are too few to hold out a test set")
    return X[~mask], X[mask], y[~mask], y[mask]


@dataclass
class Standardizer:
    """x -> (x - mean) / scale per column; scale is the standard deviation, 1 for
    constant columns (which then become 0, not NaN)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """Mean and standard deviation of each column of X (n, d): the training rows."""
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        return cls(mean, scale)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) / scale, X (n, d) with d = len(mean)."""
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise DataError(f"the data has {X.shape[1] if X.ndim == 2 else X.shape} "
                            f"feature columns; the model expects {len(self.mean)}")
        return (X - self.mean) / self.scale
