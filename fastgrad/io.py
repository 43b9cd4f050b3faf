"""Saving and loading models: an npz archive of plain arrays plus JSON metadata.

Files are read with ``allow_pickle=False``, so loading one can never execute code. The
archive holds each layer's ``layer<k>.W`` / ``layer<k>.b``, ``classes`` for classifiers,
``__fastgrad__`` (the metadata: format tag and version, fastgrad version, model class,
architecture, activations and their parameters, dtype, task) as UTF-8 JSON bytes, and
``__checksum__``, a SHA-256 over the metadata and every array (name, dtype, shape,
bytes), so a truncated, tampered or foreign file raises `ModelFileError` instead of
loading wrong weights. Writes are atomic: a temporary file in the target's directory,
flushed and fsynced, then renamed over the target with os.replace, so an interrupted
save leaves the previous file (or none), never a corrupt one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .nn import MLP, Dense, Sequential

FORMAT = "fastgrad.model"
FORMAT_VERSION = 1
_META, _CHECKSUM = "__fastgrad__", "__checksum__"


class ModelFileError(ValueError):
    """A file that is not a readable fastgrad model: truncated, tampered with, foreign,
    or of a newer format version."""


def _digest(arrays: dict[str, np.ndarray]) -> np.ndarray:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


def _metadata(model: Sequential) -> dict[str, Any]:
    from . import __version__
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fastgrad_version": __version__,
        "class": type(model).__name__, "dtype": model.dtype.name, "task": model.task,
        "y_ndim": model._y_ndim,
        "layers": [{"d_in": layer.d_in, "d_out": layer.d_out,
                    "activation": layer.activation, "params": layer.params}
                   for layer in model.layers],
    }
    if isinstance(model, MLP):
        meta["mlp"] = {"layer_sizes": model.layer_sizes, "activation": model.activation}
    return meta


def save(model: Sequential, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (the name is used as given, no suffix added)."""
    arrays: dict[str, np.ndarray] = {}
    for k, layer in enumerate(model.layers):
        arrays[f"layer{k}.W"] = np.ascontiguousarray(layer.W)
        arrays[f"layer{k}.b"] = np.ascontiguousarray(layer.b)
    if model.classes_ is not None:
        classes = np.asarray(model.classes_)
        if classes.dtype.kind not in "biufU":
            raise TypeError(f"cannot save classes_ of dtype {classes.dtype} without pickle;"
                            " use numbers or strings as labels")
        arrays["classes"] = classes
    try:
        meta = json.dumps(_metadata(model), sort_keys=True).encode()
    except TypeError as exc:
        raise TypeError(f"the model's metadata is not JSON-serializable: {exc}") from None
    arrays[_META] = np.frombuffer(meta, np.uint8).copy()
    arrays[_CHECKSUM] = _digest(arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastgrad-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable where the platform allows it
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path!r} is not a fastgrad model file (a bare .npy "
                                 "array, not an npz archive)")
        with npz:
            return {name: npz[name] for name in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ModelFileError(f"{path!r} is not a readable fastgrad model file (truncated "
                             f"or not an npz archive): {exc}") from None


def load(path: str | os.PathLike, *, backend: str | None = None) -> Sequential:
    """The model saved at `path` (an MLP or Sequential, weights, classes_ and task as
    saved). Raises ModelFileError for truncated, tampered, foreign or newer files."""
    path = os.fspath(path)
    arrays = _read(path)
    if _META not in arrays or _CHECKSUM not in arrays:
        raise ModelFileError(f"{path!r} is not a fastgrad model file (no fastgrad "
                             "metadata in the archive)")
    checksum = arrays.pop(_CHECKSUM)
    if not np.array_equal(checksum, _digest(arrays)):
        raise ModelFileError(f"{path!r} fails its checksum: the file was modified or "
                             "damaged after it was saved")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path!r} has unreadable metadata: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not a fastgrad model file (format "
                             f"{meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {meta['format_version']}; this "
                             f"fastgrad reads up to {FORMAT_VERSION}: upgrade fastgrad")
    try:
        if meta["class"] == "MLP":
            mlp = meta["mlp"]
            model: Sequential = MLP(mlp["layer_sizes"], mlp["activation"],
                                    meta["layers"][-1]["activation"], dtype=meta["dtype"],
                                    backend=backend)
        else:
            model = Sequential([Dense(L["d_in"], L["d_out"], L["activation"], **L["params"])
                                for L in meta["layers"]], dtype=meta["dtype"],
                               backend=backend)
        for k, layer in enumerate(model.layers):
            for name in ("W", "b"):
                arr = arrays[f"layer{k}.{name}"]
                target = getattr(layer, name)
                if arr.shape != target.shape or arr.dtype != target.dtype:
                    raise ModelFileError(f"{path!r}: layer{k}.{name} has shape {arr.shape} "
                                         f"and dtype {arr.dtype}, expected {target.shape} "
                                         f"{target.dtype}")
                target[...] = arr
        model.task = meta["task"]
        model._y_ndim = meta["y_ndim"]
        model.classes_ = arrays.get("classes")
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path!r} has inconsistent metadata: {exc!r}") from None
    return model
