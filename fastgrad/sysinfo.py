"""What fastgrad runs on here, for ``fastgrad info`` and bug reports.

Everything is looked up without starting anything that could warn or take long: Numba's
threading layer is reported as configured and importable (the layer itself is chosen
at the first parallel kernel), the GPU through the cuda backend's own check or
``nvidia-smi -L``, the compiled module by its file without importing it.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import warnings


def _backends() -> list[tuple[str, str]]:
    from .backends import backend_info

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an optional backend's import must not be noisy
        info = backend_info()
    for name, entry in info.items():
        state = "available" if entry["available"] else f"not available ({entry['reason']})"
        rows.append((f"backend {name}", state))
    return rows


def _numba() -> list[tuple[str, str]]:
    try:
        import numba
    except ImportError:
        return [("numba", "not installed")]
    layers = []
    for layer, module in (("tbb", "tbbpool"), ("omp", "omppool"),
                          ("workqueue", "workqueue")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(f"numba.np.ufunc.{module}")
            layers.append(layer)
        except Exception:  # a layer whose library is missing (libtbb) is simply absent
            pass
    try:
        chosen = numba.threading_layer()  # only known once a parallel kernel has run
    except ValueError:
        chosen = None
    importable = ", ".join(layers) or "none"
    if chosen is None:
        # numba.get_num_threads() would launch the thread pool (choosing, and possibly
        # warning about, a layer): report the configuration instead.
        threads = f"{numba.config.NUMBA_NUM_THREADS} (started at the first parallel kernel)"
        layer = f"{numba.config.THREADING_LAYER} (chosen at the first parallel kernel)"
    else:
        threads = f"{numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"
        layer = chosen
    return [
        ("numba", numba.__version__),
        ("numba threads", threads),
        ("threading layer", f"{layer}; importable: {importable}"),
    ]


def _blas() -> list[tuple[str, str]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [("BLAS", "unknown (pip install threadpoolctl to see it)")]
    rows = []
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        version = f" {pool['version']}" if pool.get("version") else ""
        rows.append(("BLAS", f"{pool['internal_api']}{version}, {pool['num_threads']} "
                     f"threads ({pool['filepath']})"))
    return rows or [("BLAS", "none loaded")]


def _compiled() -> list[tuple[str, str]]:
    spec = importlib.util.find_spec("fastgrad._kernels")
    if spec is None or spec.origin is None or spec.origin.endswith(".pyx"):
        return [("compiled module", "fastgrad._kernels not built "
                 "(python setup.py build_ext --inplace)")]
    return [("compiled module", spec.origin)]


def _gpu(cuda_available: bool) -> list[tuple[str, str]]:
    if cuda_available:
        try:
            from numba import cuda

            name = cuda.get_current_device().name
            return [("GPU", name.decode() if isinstance(name, bytes) else str(name))]
        except Exception as exc:
            return [("GPU", f"cuda backend available but the device query failed: {exc}")]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [("GPU", "none found (no nvidia-smi)")]
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [("GPU", f"nvidia-smi failed: {exc}")]
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return [("GPU", g) for g in gpus] or [("GPU", "none found by nvidia-smi")]


def report() -> list[tuple[str, str]]:
    """(label, value) rows: version, Python, NumPy, each backend, Numba threads and
    threading layer, BLAS, the compiled module's path, GPU."""
    import numpy as np

    from . import __version__

    backends = _backends()
    cuda_ok = dict(backends).get("backend cuda") == "available"
    return [
        ("fastgrad", __version__),
        ("python", sys.version.split()[0]),
        ("numpy", np.__version__),
        *backends,
        *_numba(),
        *_blas(),
        *_compiled(),
        *_gpu(cuda_ok),
    ]
