"""bench/compare.py never rots: a quick smoke run of section 1 writes every section header.

It runs the script in a subprocess exactly as a user would (`--quick --sections 1`), so an
import error, a renamed API or a broken report writer fails here, not on the day of the
real measurement. Its figures are not checked: a smoke run on a shared machine measures
nothing.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADERS = ["## Machine and software", "## 1. Ceilings", "## 2. Activations",
           "## 3. linear_backward", "## 4. One MLP training step", "## 5. Digits, 20 epochs",
           "## 6. Cold start"]


def test_compare_quick_section_1_writes_the_report(tmp_path):
    if importlib.util.find_spec("threadpoolctl") is None:
        pytest.skip("threadpoolctl (the test extra) is needed to set and report BLAS threads")
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--quick", "--sections", "1",
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    for header in HEADERS:
        assert header in text, f"{header!r} missing from the report"
    assert "QUICK SMOKE RUN" in text
    assert re.search(r"\| copy 64 MiB float32 \| 1 \| .* GB/s", text)
    assert re.search(r"\| sgemm \d+ \| 1 \| .* GFLOP/s", text)
    assert "OPENBLAS_CORETYPE=" in text and "threadpool: internal_api=" in text
    assert "not run in this invocation" in text  # sections 2-6 were not asked for


def test_compare_rejects_an_unknown_section(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--sections", "9",
         "--out", str(tmp_path / "x.md")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--sections" in proc.stderr and "1-6" in proc.stderr
    assert not (tmp_path / "x.md").exists()
