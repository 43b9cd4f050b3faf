"""The backend registry: listing, choosing, and the compiled backends' presence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REQUIRED_BACKENDS

import fastgrad as fg


def test_required_backends_are_available():
    """A compiled backend missing here is a failure, never a skip: CI builds from source."""
    info = fg.backend_info()
    for name in REQUIRED_BACKENDS:
        assert info[name]["available"], f"{name}: {info[name]['reason']}"


def test_backend_info_explains_every_backend():
    info = fg.backend_info()
    assert set(info) >= {"numpy", "numba", "cython", "cuda"}
    for name, entry in info.items():
        assert entry["available"] == (name in fg.available_backends())
        if not entry["available"]:
            assert entry["reason"] and "\n" not in entry["reason"], name
    assert fg.available_backends()[-1] == "numpy"


def test_set_and_use_backend():
    assert fg.get_backend().NAME != "numpy"
    with fg.use_backend("numpy") as module:
        assert module.NAME == "numpy" and fg.get_backend().NAME == "numpy"
        with fg.use_backend("numba"):
            assert fg.get_backend().NAME == "numba"
        assert fg.get_backend().NAME == "numpy"
    fg.set_backend("numpy")
    try:
        assert fg.get_backend().NAME == "numpy"
        assert fg.relu_forward(np.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
    finally:
        fg.set_backend(None)
    assert fg.get_backend().NAME != "numpy"


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        fg.relu_forward(np.ones(2), backend="tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        fg.set_backend("tpu")
    missing = [n for n, e in fg.backend_info().items() if not e["available"]]
    for name in missing:
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
            fg.relu_forward(np.ones(2), backend=name)
