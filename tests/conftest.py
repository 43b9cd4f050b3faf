"""Shared test harness: the backends under test, dtype tolerances and input makers.

Tests are written once over the activation table and this backend list: an activation
added to fastgrad.ACTIVATIONS, or a backend added to the registry, is tested everywhere
without a new test.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.activations import ACTIVATIONS

# The directory holding the fastgrad package this test run imported: the installed copy in
# CI (built from source), the source tree in a development checkout. Subprocess tests put
# it on PYTHONPATH and run outside the source tree, so they test the same package.
PACKAGE_PARENT = str(__import__("pathlib").Path(fg.__file__).resolve().parent.parent)


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ with PYTHONPATH = PACKAGE_PARENT, plus `extra`."""
    return {**os.environ, "PYTHONPATH": PACKAGE_PARENT, **extra}


# The compiled CPU backends must never be skipped: their absence fails test_backends.
REQUIRED_BACKENDS = ("numba", "cython")
# cuda runs under the simulator in its own pytest invocation (FASTGRAD_TEST_CUDA=1).
BACKENDS = [b for b in fg.available_backends() if b != "cuda" or os.environ.get(
    "FASTGRAD_TEST_CUDA")]
DTYPES = (np.float32, np.float64)

# tests/cuda_sim/ runs only in the simulator invocation (tests/test_cuda.py starts it).
collect_ignore = [] if os.environ.get("FASTGRAD_TEST_CUDA") else ["cuda_sim"]
if "cuda" in BACKENDS:
    # The simulator runs each GPU thread as a Python thread: small blocks and grids keep
    # it fast (and make the elementwise kernels' grid-stride loops go round), and 4x4
    # tiles put the tile edges inside the tests' small matrices.
    _cuda = fg.get_backend("cuda")
    _cuda.TILE, _cuda.ROW_THREADS, _cuda.THREADS, _cuda.MAX_BLOCKS = 4, 8, 32, 4
SPECS = list(ACTIVATIONS.values())
SPEC_IDS = [s.name for s in SPECS]

# |got - want| <= atol + rtol |want|, want = float64 reference rounded to the dtype.
ELEMENTWISE_TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)}
REDUCTION_TOL = {np.float32: (1e-4, 1e-5), np.float64: (1e-11, 1e-12)}

# Where the derivative jumps: finite differences must stay clear of these points.
KINKS = {"relu": 0.0, "leaky_relu": 0.0, "elu": 0.0, "selu": 0.0, "binary_step": 0.0}


def tol(dtype, reduction: bool = False) -> dict[str, float]:
    rtol, atol = (REDUCTION_TOL if reduction else ELEMENTWISE_TOL)[np.dtype(dtype).type]
    return {"rtol": rtol, "atol": atol}


def assert_close(got, want, dtype, reduction: bool = False, what: str = ""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               equal_nan=True, err_msg=what, **tol(dtype, reduction))


def random_input(rng: np.random.Generator, shape, dtype, spec=None, scale: float = 3.0):
    """Normal(0, scale) values; kept 0.05 away from the spec's kink when it has one."""
    x = rng.standard_normal(shape) * scale
    if spec is not None and spec.name in KINKS:
        k = KINKS[spec.name]
        x = np.where(np.abs(x - k) < 0.05, k + np.copysign(0.05, x - k) + (x - k), x)
    return x.astype(dtype)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Fresh random inputs on every run, the seed printed on failure for reproduction."""
    # FASTGRAD_TEST_SEED=<seed printed by a failure> reproduces that run.
    seed = int(os.environ.get("FASTGRAD_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


def reference_forward(spec, x, **params):
    return fg.forward(spec, x, backend="numpy", **params)


def saved_for(spec, x, dtype):
    """The (x=, y=) keyword the spec's backward takes, computed by the reference."""
    if spec.needs == "x":
        return {"x": x}
    if spec.needs == "y":
        return {"y": reference_forward(spec, x).astype(dtype)}
    return {}


def spinning(seconds: float):
    """A context manager: a thread of this process running (not waiting) for about
    `seconds`, as a BLAS pool spins after a multi-threaded call; the block must end within
    it (asserted)."""
    import contextlib
    import threading

    from numba import njit

    @njit(nogil=True, cache=False)
    def spin(count):  # arithmetic without the GIL, never blocking
        acc = 0.0
        for i in range(count):
            acc += i * 1e-9
        return acc

    @contextlib.contextmanager
    def running():
        spin(1)  # compiled before the thread starts
        worker = threading.Thread(target=spin, args=(int(seconds * 3e8),), daemon=True)
        worker.start()
        try:
            time.sleep(0.02)
            yield
            assert worker.is_alive(), "the spinner ended before the block did"
        finally:
            worker.join()

    return running()
