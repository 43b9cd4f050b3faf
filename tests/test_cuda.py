"""The cuda backend from the normal test run: the simulator suite in a subprocess, the
real compilation of every kernel for sm_90, and the import-time promises.

numba's CUDA simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is
first imported, so the table-driven kernel tests (test_activations.py, test_linear.py,
selected with -k cuda), docs/cuda.md's example and tests/cuda_sim/ run in one child
pytest with the simulator on and FASTGRAD_TEST_CUDA=1, which adds "cuda" to
conftest.BACKENDS.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "FASTGRAD_TEST_CUDA")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_kernel_tests_pass_on_the_cuda_simulator():
    start = time.perf_counter()
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_activations.py",
                 "tests/test_linear.py", "tests/test_readme.py", "tests/cuda_sim", "-k",
                 "cuda"],
                _env(NUMBA_ENABLE_CUDASIM="1", FASTGRAD_TEST_CUDA="1"), timeout=900)
    elapsed = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    print(output[-3000:])
    print(f"simulator suite: {elapsed:.0f} s")
    assert proc.returncode == 0, f"simulator suite failed (rc {proc.returncode}):\n{output}"
    assert " passed" in output and " skipped" not in output, output[-3000:]


def test_every_kernel_compiles_for_sm_90(tmp_path):
    """compile_ptx (NVVM) + ptxas for every kernel and both dtypes; skips only where no
    CUDA toolkit is installed (the script says which part is missing)."""
    table = tmp_path / "ptx.md"
    proc = _run(["bench/cuda_ptx.py", "--output", str(table)], _env(), timeout=900)
    output = proc.stdout + proc.stderr
    if proc.returncode == 2:
        pytest.skip(output.strip().splitlines()[-1])
    assert proc.returncode == 0, output
    print(table.read_text())
    text = table.read_text()
    assert "0 failed" in text and "| matmul x^T g [float32] |" in text


def test_import_is_silent_and_does_not_touch_the_driver():
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import fastgrad\n"
        "assert 'numba.cuda' not in sys.modules, 'import fastgrad imported numba.cuda'\n"
        "info = fastgrad.backend_info()['cuda']\n"
        "from numba import cuda\n"
        "assert info['available'] == cuda.is_available(), info\n"
        "assert ('cuda' in fastgrad.available_backends()) == info['available']\n"
        "assert info['available'] or ('GPU' in info['reason'] and '\\n' not in info['reason'])\n"
        "sys.stderr.write(repr(info))\n"
    )
    proc = _run(["-c", code], _env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "", f"backend_info() printed: {proc.stdout!r}"
    assert proc.stderr.startswith("{'available'"), f"unexpected output: {proc.stderr!r}"
