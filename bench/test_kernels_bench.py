"""Every activation forward/backward and the dense layer, per backend, dtype and size."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark (the bench extra) is needed")

import fastgrad as fg  # noqa: E402

from .conftest import CPU_BACKENDS, DTYPES, SIZES, base_arrays, require_backend, shaped  # noqa: E402

LINEAR_SHAPES = {"32x64-64": (32, 64, 64), "256x784-512": (256, 784, 512),
                 "1024x1024-1024": (1024, 1024, 1024)}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("name", list(fg.ACTIVATIONS))
def test_activation(benchmark, name, direction, backend, dtype, size):
    require_backend(backend)
    spec = fg.ACTIVATIONS[name]
    n = SIZES[size]
    x, g = (shaped(spec, a) for a in base_arrays(n, dtype))
    out = np.empty_like(x)
    benchmark.group = f"{name} {direction} {dtype} {size}"
    benchmark.extra_info.update(elements=n, bytes_moved=(2 if direction == "forward" or
                                                         spec.needs is None else 3)
                                * x.nbytes)
    if direction == "forward":
        benchmark(fg.forward, name, x, out=out, backend=backend)
        return
    saved = {"x": {"x": x}, "y": {"y": fg.forward(name, x, backend=backend)}}
    benchmark(fg.backward, name, g, out=out, backend=backend, **saved.get(spec.needs, {}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
@pytest.mark.parametrize("which", ["linear_forward", "linear_backward"])
def test_linear(benchmark, which, shape, backend, dtype):
    require_backend(backend)
    B, din, dout = LINEAR_SHAPES[shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, din)).astype(dtype)
    W = (rng.standard_normal((din, dout)) / np.sqrt(din)).astype(dtype)
    b = np.zeros(dout, dtype)
    benchmark.group = f"{which} {shape} {dtype}"
    flops = 2 * B * din * dout * (1 if which == "linear_forward" else 2)
    benchmark.extra_info.update(flops=flops)
    if which == "linear_forward":
        benchmark(fg.linear_forward, x, W, b, backend=backend)
    else:
        g = rng.standard_normal((B, dout)).astype(dtype)
        benchmark(fg.linear_backward, g, x, W, backend=backend)
