"""What the figures were measured on: machine, CPU, versions, BLAS and its kernel, threads.

Everything is read at run time (nothing hard-coded) so RESULTS.md says what actually ran.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PACKAGES = ("numpy", "numba", "scipy", "threadpoolctl", "torch", "jax", "jaxlib", "sklearn",
            "matplotlib", "fastgrad")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD extensions the kernels can use (AVX2 / AVX-512 decide libmvec's variant)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")
                return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512"
    except OSError:
        pass
    return "unknown"


def cores() -> tuple[int, int]:
    """(logical CPUs, CPUs this process may run on)."""
    total = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = total
    return total, usable


def versions() -> dict[str, str]:
    """Version of each package, or 'not installed' (never imports one that is absent)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # absent or broken: say which
            out[name] = f"not installed ({type(exc).__name__})"
    return out


def blas_info() -> list[dict[str, object]]:
    """threadpoolctl's view of every BLAS / OpenMP runtime loaded in this process."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"internal_api": "threadpoolctl not installed"}]
    return threadpool_info()


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True,
                               timeout=10).stdout.strip()
        return f"{rev}{' (with uncommitted changes)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe(extra: dict[str, str] | None = None) -> list[str]:
    """Markdown bullet lines describing the machine and software of this run."""
    total, usable = cores()
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        pass
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {platform.node()}, {platform.system()} {platform.release()}, "
        f"{platform.machine()}{mem}",
        f"- CPU: {cpu_model()}; {total} logical CPUs, {usable} usable by this process; "
        f"SIMD: {cpu_flags()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "- " + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in OPENBLAS_VARS),
        f"- fastgrad checkout: {git_revision()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    for lib in blas_info():
        desc = ", ".join(f"{k}={lib[k]}" for k in ("internal_api", "version", "architecture",
                                                     "threading_layer", "num_threads")
                         if lib.get(k) is not None)
        where = Path(str(lib.get("filepath", "?")))
        lines.append(f"- threadpool: {desc}, {where.parent.name}/{where.name}")
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return lines
