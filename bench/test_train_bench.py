"""The MLP training step: fastgrad's trainer when it exists, and the kernel-level step."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark (the bench extra) is needed")

from . import mlp  # noqa: E402
from .conftest import CPU_BACKENDS, require_backend  # noqa: E402
from .peers import NotAvailable  # noqa: E402

CONFIGS = {"-".join(map(str, s)) + f"_b{b}": (s, b) for s, b in mlp.CONFIGS}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_kernel_step(benchmark, config, backend):
    """One step composed from the public kernels (one call per layer)."""
    require_backend(backend)
    sizes, batch = CONFIGS[config]
    step = mlp.fastgrad_kernel_step(sizes, batch, backend)
    counter = iter(range(1 << 62))
    benchmark.group = f"train step {config}"
    benchmark.extra_info.update(matmul_flops=mlp.step_flops(sizes, batch))
    benchmark(lambda: step(next(counter)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_trainer_epoch(benchmark, config, backend):
    """fastgrad.MLP(...).fit for one epoch of mlp.BATCHES steps (compiled before timing)."""
    require_backend(backend)
    sizes, batch = CONFIGS[config]
    try:
        fit = mlp.fastgrad_trainer(sizes, batch, backend)
    except NotAvailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"train epoch of {mlp.BATCHES} steps {config}"
    benchmark.extra_info.update(steps_per_call=mlp.BATCHES,
                                matmul_flops_per_step=mlp.step_flops(sizes, batch))
    benchmark(fit, 1)
