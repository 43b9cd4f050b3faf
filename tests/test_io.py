"""Saving and loading: round trips, atomic writes, and files that must be refused."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import io


def fitted(rng, labels=("cat", "dog", "emu"), **kw):
    X = rng.standard_normal((30, 4))
    y = np.asarray(labels)[np.arange(30) % len(labels)]
    m = fg.MLP([4, 6, len(labels) if len(labels) > 2 else 1], seed=0, **kw)
    m.fit(X, y, epochs=2, verbose=0)
    return m, X, y


@pytest.mark.parametrize("labels", [("cat", "dog", "emu"), (3, 7), (0.0, 1.0, 2.0)])
def test_round_trip(labels, rng, tmp_path):
    m, X, y = fitted(rng, labels)
    path = tmp_path / "model.fg"
    m.save(path)
    assert os.listdir(tmp_path) == ["model.fg"], "no temporary file is left behind"
    loaded = fg.load(path)
    assert type(loaded) is fg.MLP and loaded.task == m.task and loaded.output == m.output
    assert loaded.classes_.tolist() == m.classes_.tolist()
    assert loaded.classes_.dtype == m.classes_.dtype
    np.testing.assert_array_equal(loaded.params, m.params)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    assert loaded.score(X, y) == m.score(X, y)


def test_round_trip_sequential_regression(rng, tmp_path):
    model = fg.Sequential([fg.Dense(3, 5, "leaky_relu", alpha=0.2), fg.Dense(5, 2)],
                          dtype="float64", seed=1)
    X = rng.standard_normal((20, 3))
    model.fit(X, rng.standard_normal((20, 2)), epochs=2, verbose=0)
    model.save(tmp_path / "seq.npz")
    loaded = fg.load(tmp_path / "seq.npz")
    assert type(loaded) is fg.Sequential and loaded.dtype == np.float64
    assert loaded.layers[0].params == {"alpha": 0.2} and loaded.task == "regression"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_save_replaces_atomically(rng, tmp_path, monkeypatch):
    m, X, _ = fitted(rng)
    path = tmp_path / "m.fg"
    m.save(path)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        m.save(path)
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["m.fg"]


def test_truncated_file(rng, tmp_path):
    m, *_ = fitted(rng)
    path = tmp_path / "m.fg"
    m.save(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(fg.ModelFileError, match="not a readable fastgrad model file"):
            fg.load(path)


def test_tampered_weights_fail_the_checksum(rng, tmp_path):
    m, *_ = fitted(rng)
    path = tmp_path / "m.fg"
    m.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["layer0.W"] = arrays["layer0.W"] + 1
    np.savez(path, **arrays)  # writes m.fg.npz: np.savez appends the suffix
    os.replace(str(path) + ".npz", path)
    with pytest.raises(fg.ModelFileError, match="fails its checksum"):
        fg.load(path)


def test_tampered_metadata_fails_the_checksum(rng, tmp_path):
    m, *_ = fitted(rng)
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__fastgrad__"].tobytes())
    meta["layers"][0]["activation"] = "tanh"
    arrays["__fastgrad__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(fg.ModelFileError, match="fails its checksum"):
        fg.load(path)


def test_foreign_files(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.ones(3))
    with pytest.raises(fg.ModelFileError, match="no fastgrad metadata"):
        fg.load(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(fg.ModelFileError, match="not a readable fastgrad model file"):
        fg.load(text)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(2))
    with pytest.raises(fg.ModelFileError, match="bare .npy"):
        fg.load(npy)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(fg.ModelFileError):
        fg.load(pickled)  # allow_pickle=False: never executes or unpickles anything
    other = tmp_path / "other.npz"
    arrays = {"__fastgrad__": np.frombuffer(b'{"format": "other"}', np.uint8)}
    arrays["__checksum__"] = io._digest(arrays)
    np.savez(other, **arrays)
    with pytest.raises(fg.ModelFileError, match="format 'other'"):
        fg.load(other)
    with pytest.raises(FileNotFoundError):
        fg.load(tmp_path / "missing.npz")


def test_newer_format_is_refused(rng, tmp_path, monkeypatch):
    m, *_ = fitted(rng)
    monkeypatch.setattr(io, "FORMAT_VERSION", 99)
    m.save(tmp_path / "new.npz")
    monkeypatch.setattr(io, "FORMAT_VERSION", 1)
    with pytest.raises(fg.ModelFileError, match="format version 99"):
        fg.load(tmp_path / "new.npz")


def test_archive_holds_only_plain_arrays(rng, tmp_path):
    m, *_ = fitted(rng)
    m.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        names = sorted(z.namelist())
    assert names == sorted(["layer0.W.npy", "layer0.b.npy", "layer1.W.npy", "layer1.b.npy",
                            "classes.npy", "__fastgrad__.npy", "__checksum__.npy"])
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
