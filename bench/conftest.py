"""Shared inputs for the pytest-benchmark suite (`pytest bench/ --benchmark-only`).

The suite is kept out of the default test run (pyproject's testpaths is ["tests"]). Every
backend fastgrad knows on a CPU is a parameter; one that cannot run here is skipped with
the reason fastgrad.backend_info() gives, so the cython rows appear once it is built.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fastgrad as fg

CPU_BACKENDS = [b for b in fg.backend_info() if b != "cuda"]
SIZES = {"small": 2**10, "medium": 2**16, "large": 2**22}
DTYPES = ["float32", "float64"]


def require_backend(name: str) -> None:
    info = fg.backend_info()[name]
    if not info["available"]:
        pytest.skip(f"backend {name!r} not available: {info['reason']}")


@functools.lru_cache(maxsize=8)
def base_arrays(n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """x ~ 3 N(0, 1) and grad_out ~ N(0, 1), made once per (size, dtype)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    x.flags.writeable = g.flags.writeable = False
    return x, g


def shaped(spec, arr: np.ndarray) -> np.ndarray:
    """Row-wise activations get rows of 1024 (or one row when smaller)."""
    if not spec.rowwise:
        return arr
    width = min(1024, arr.size)
    return arr.reshape(arr.size // width, width)
