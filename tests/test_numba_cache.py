"""Numba's disk cache across processes: every signature compiles once (issues #2, #7).

Each test runs fresh interpreters with their own NUMBA_CACHE_DIR. The first process
compiles and writes the cache; the next must load every kernel it calls from it (no cache
miss, per the dispatchers' own ``stats``) without writing anything, and compute the same
numbers.

The kernels called are a subset, one of each way a numba kernel is built: the elementwise
activations (relu, sigmoid) and the dense layer (tanh) are copies of the same module-level
templates (`fastgrad.backends._specialize.specialize`) for every activation and dtype, so
what holds for these holds for the rest of the table; softmax's row kernels and the loss
kernels are module-level functions (`njit_tagged`); the fused epoch specializes its own
templates through the same helper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parent.parent

# Prints, as one JSON line: per dispatcher reached, its cache hits and misses; and a
# checksum of every result. Small shapes: only compilation costs time here.
_REPORT = r"""
import json
import fastgrad
from fastgrad.backends import numba_cpu

stats = numba_cpu.cache_report()
print("REPORT " + json.dumps({"stats": stats, "results": RESULTS,
                              "file": fastgrad.__file__}))
"""

_WORKLOAD = r"""
import numpy as np
import fastgrad as fg
from fastgrad.backends import numba_cpu, numba_train

RESULTS = {}
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):  # an elementwise kernel in both dtypes
    x = rng.standard_normal(64).astype(dtype)
    y = fg.relu_forward(x, backend="numba")
    g = fg.relu_backward(np.ones_like(x), x=x, backend="numba")
    RESULTS[f"relu_{np.dtype(dtype).name}"] = float(y.sum() + g.sum())
# sigmoid float32: the parallel forward (prange) at the threshold, a serial backward
xs = rng.standard_normal(numba_cpu.PARALLEL_THRESHOLD).astype(np.float32)
ys = fg.sigmoid_forward(xs, backend="numba")
gs = fg.sigmoid_backward(np.ones(8, np.float32), y=ys[:8], backend="numba")
RESULTS["sigmoid"] = float(ys.sum() + gs.sum())
# softmax float32: the row kernels
z = rng.standard_normal((4, 5)).astype(np.float32)
p = fg.softmax_forward(z, backend="numba")
RESULTS["softmax"] = float(fg.softmax_backward(np.ones_like(z), y=p, backend="numba")[0, 0]
                           + p.sum())
# ... and the threaded row kernel, from PARALLEL_THRESHOLD elements
zb = rng.standard_normal((numba_cpu.PARALLEL_THRESHOLD // 256, 256)).astype(np.float32)
RESULTS["softmax_rows"] = float(fg.softmax_forward(zb, backend="numba").sum())
# the dense layer with a fused tanh, float64
x2 = rng.standard_normal((3, 4))
W = rng.standard_normal((4, 5))
b = rng.standard_normal(5)
out = fg.linear_forward(x2, W, b, activation="tanh", backend="numba")
gx, gW, gb = fg.linear_backward(np.ones_like(out), x2, W, activation="tanh", y=out,
                                backend="numba")
RESULTS["linear_tanh"] = float(out.sum() + gx.sum() + gW.sum() + gb.sum())
# a loss kernel
RESULTS["cross_entropy"] = fg.loss("cross_entropy", z, np.array([0, 1, 2, 3]),
                                   backend="numba")
# one fused epoch, float32, relu, 8-6-3
sizes = (8, 6, 3)
Xe = rng.standard_normal((10, 8)).astype(np.float32)
Ye = rng.integers(0, 3, 10).astype(np.int64)
Ws = [rng.standard_normal((a, c)).astype(np.float32) * 0.3 for a, c in zip(sizes, sizes[1:])]
bs = [np.zeros(c, np.float32) for c in sizes[1:]]
cfg = numba_train.FusedConfig(loss="cross_entropy", batch_size=4, activation="relu")
st = numba_train.train_epoch(Xe, Ye, None, Ws, bs,
                             numba_train.make_state(Ws, bs, "sgd"), cfg)
RESULTS["epoch"] = float(st.loss + sum(w.sum() for w in Ws))
"""

# Entry points the workload calls directly (top-level dispatchers: each must be served by
# the cache in the second process). Qualname prefixes: the full names carry the source tag.
_ENTRY_POINTS = (
    "numba_cpu._t_forward_serial__relu_float32__",
    "numba_cpu._t_forward_serial__relu_float64__",
    "numba_cpu._t_backward_serial__relu_float32__",
    "numba_cpu._t_backward_serial__relu_float64__",
    "numba_cpu._t_forward_parallel__sigmoid_float32__",
    "numba_cpu._t_backward_serial__sigmoid_float32__",
    "numba_cpu._t_softmax_forward_rows__serial__",
    "numba_cpu._t_softmax_backward_rows__serial__",
    "numba_cpu._t_softmax_forward_rows__parallel__",
    "numba_cpu._t_linear_forward__tanh_float64__",
    "numba_cpu._t_linear_backward__tanh_float64__",
    "numba_cpu.cross_entropy_forward__",
    "numba_train._t_epoch__relu_float32__",
)


def _run(script: str, cwd: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(cwd)}
    env.pop("NUMBA_DISABLE_JIT", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def _snapshot(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """Every cache file: (size, mtime_ns)."""
    return {str(p.relative_to(cache_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(cache_dir.rglob("*")) if p.is_file()}


def _find(stats: dict, prefix: str) -> dict:
    names = [n for n in stats if n.startswith("fastgrad.backends." + prefix)]
    assert len(names) == 1, f"{prefix}: expected one dispatcher, found {names}"
    return stats[names[0]]


@pytest.mark.slow
def test_second_process_loads_every_kernel_from_the_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    first = _run(_WORKLOAD + _REPORT, ROOT, cache)
    for prefix in _ENTRY_POINTS:  # compiled, and saved
        assert _find(first["stats"], prefix)["misses"] >= 1, prefix
    files = _snapshot(cache)
    assert any(name.endswith(".nbc") for name in files)

    second = _run(_WORKLOAD + _REPORT, ROOT, cache)
    compiled = {n: s for n, s in second["stats"].items() if s["misses"]}
    assert not compiled, f"compiled again in a new process: {compiled}"
    for prefix in _ENTRY_POINTS:
        assert _find(second["stats"], prefix)["hits"] >= 1, prefix
    assert _snapshot(cache) == files, "the cache directory changed on a warm run"
    assert second["results"] == first["results"]


_RELU = r"""
import numpy as np
import fastgrad as fg
RESULTS = fg.relu_forward(np.array([-1.0, 2.0]), backend="numba").tolist()
"""
_RELU_KERNEL = "numba_cpu._t_forward_serial__relu_float64__"


def test_editing_an_inlined_formula_invalidates_the_cached_kernel(tmp_path):
    # A copy of the package, so that its scalar_math.py can be edited: Numba itself only
    # checks the kernel template's file (numba_cpu.py), which does not change here.
    shutil.copytree(ROOT / "fastgrad", tmp_path / "fastgrad",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    cache = tmp_path / "numba-cache"
    before = _run(_RELU + _REPORT, tmp_path, cache)
    assert Path(before["file"]).is_relative_to(tmp_path)
    assert before["results"] == [0.0, 2.0]
    assert _find(before["stats"], _RELU_KERNEL)["misses"] == 1
    again = _run(_RELU + _REPORT, tmp_path, cache)  # control: the copy's cache works
    assert _find(again["stats"], _RELU_KERNEL) == {"hits": 1, "misses": 0}

    formulas = tmp_path / "fastgrad" / "scalar_math.py"
    source = formulas.read_text()
    old = "def relu_forward(x, a, b):\n    return 0.0 if x < 0 else x\n"
    assert old in source
    formulas.write_text(source.replace(old, old.replace("else x\n", "else x + 1.0\n")))

    after = _run(_RELU + _REPORT, tmp_path, cache)
    assert after["results"] == [0.0, 3.0], "the stale cached kernel was loaded"
    assert _find(after["stats"], _RELU_KERNEL) == {"hits": 0, "misses": 1}


def test_source_tag_follows_the_inlined_files(tmp_path):
    from fastgrad.backends._specialize import INLINED_SOURCES, SOURCE_TAG, source_tag

    package = ROOT / "fastgrad"
    assert source_tag(package) == SOURCE_TAG
    for rel in INLINED_SOURCES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(package / rel, tmp_path / rel)
    assert source_tag(tmp_path) == SOURCE_TAG
    with open(tmp_path / "backends" / "numba_math.py", "a") as f:
        f.write("\n# edited\n")
    assert source_tag(tmp_path) != SOURCE_TAG


def _template(x):
    return x + _OFFSET  # noqa: F821  (bound by the namespace given to specialize)


def test_specialize_binds_globals_and_names_the_copy():
    from fastgrad.backends._specialize import SOURCE_TAG, specialize

    namespace = {"__name__": __name__, "_OFFSET": 2.0}
    kernel = specialize(_template, namespace, "two", cache=False)
    assert kernel.py_func.__qualname__ == f"_template__two__{SOURCE_TAG}"
    assert kernel(1.0) == 3.0


def test_specialize_refuses_what_would_not_cache():
    from fastgrad.backends._specialize import specialize

    offset = 1.0

    def closure(x):
        return x + offset

    with pytest.raises(TypeError, match="closure"):
        specialize(closure, {"__name__": __name__}, "t")
    with pytest.raises(ValueError, match="tag"):
        specialize(_template, {"__name__": __name__}, "a-b")
    with pytest.raises(ValueError, match="__name__"):
        specialize(_template, {"__name__": "not_a_module_anywhere"}, "t")
