"""bench/numba_blas.py (the matmul-split prototype of issue #7): BLAS products on strided
views from compiled code, and their row split over Numba's threads, against NumPy in
float64."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from numba import njit

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it lives beside the package
    sys.path.insert(0, str(ROOT))

from bench.numba_blas import gemm, gemm_split, gemm_split_rows  # noqa: E402

TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


@njit(cache=True)
def _column_block(a, b, out, j0, j1, beta):
    # views made inside compiled code: a block of b's and out's columns ('A' layout)
    gemm(a, b[:, j0:j1], out[:, j0:j1], beta)


def views(rng, dtype):
    """(name, a, b): operands as the fused epoch passes them: C arrays, transposes, blocks."""
    x = rng.standard_normal((13, 7)).astype(dtype)
    W = rng.standard_normal((7, 11)).astype(dtype)
    g = rng.standard_normal((13, 11)).astype(dtype)
    return [("x @ W", x, W), ("x.T @ g", x.T, g), ("g @ W.T", g, W.T),
            ("x[:, 2:6] @ W[2:6]", x[:, 2:6], W[2:6]), ("x.T[1:5] @ g[:, 3:]", x.T[1:5], g[:, 3:])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_on_views(rng, dtype):
    for name, a, b in views(rng, dtype):
        want = a.astype(np.float64) @ b.astype(np.float64)
        out = np.full(want.shape, 2.0, dtype)
        gemm(a, b, out, 0.0)
        np.testing.assert_allclose(out, want, err_msg=name, **TOL[dtype])
        out[:] = 2.0
        gemm(a, b, out, 0.5)  # beta: out = a @ b + 0.5 * out
        np.testing.assert_allclose(out, want + 1.0, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_splits_equal_one_product(rng, dtype):
    for name, a, b in views(rng, dtype):
        want = a.astype(np.float64) @ b.astype(np.float64)
        for parts in (1, 2, 3):
            out = np.zeros(want.shape, dtype)
            gemm_split_rows(a, b, out, 0.0, parts)
            np.testing.assert_allclose(out, want, err_msg=f"{name}, {parts} parts",
                                       **TOL[dtype])
        out = np.zeros(want.shape, dtype)
        gemm_split(a, b, out, 0.0)
        np.testing.assert_allclose(out, want, err_msg=f"{name}, columns", **TOL[dtype])


def test_column_blocks_made_in_compiled_code(rng):
    a = rng.standard_normal((6, 5))
    b = rng.standard_normal((5, 9))
    out = np.zeros((6, 9))
    _column_block(a, b, out, 3, 8, 0.0)
    want = np.zeros((6, 9))
    want[:, 3:8] = a @ b[:, 3:8]
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_empty_inner_dimension_scales_out():
    out = np.ones((3, 4))
    gemm(np.zeros((3, 0)), np.zeros((0, 4)), out, 0.5)
    np.testing.assert_array_equal(out, 0.5)
    gemm(np.zeros((3, 0)), np.zeros((0, 4)), out, 0.0)
    np.testing.assert_array_equal(out, 0.0)


def test_unsupported_layout_raises(rng):
    a = rng.standard_normal((6, 8))[::2, ::2]  # neither rows nor columns contiguous
    with pytest.raises(ValueError, match="contiguous rows or columns"):
        gemm(a, np.ones((4, 3)), np.zeros((3, 3)), 0.0)
