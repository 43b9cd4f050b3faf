"""Compile every CUDA kernel of the `cuda` backend for a real GPU, without one.

Each kernel (both dtypes, the default TILE and ROW_THREADS) goes through
numba.cuda.compile_ptx for sm_90 (Hopper; needs the CUDA toolkit's NVVM, not a GPU) and
its PTX through ``ptxas -arch=sm_90 -v``; the registers, spills, stack and shared memory
ptxas reports are printed as a table and written as Markdown.

    python bench/cuda_ptx.py [--output bench/RESULTS-cuda-ptx.md] [--cc 9.0]

Exit status: 0 all compiled, 1 a kernel failed to compile or assemble, 2 no toolkit here
(NVVM or ptxas missing; the reason is printed). Runs without the CUDA simulator: the
simulator's numba.cuda has no compile_ptx.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLKIT_MISSING = 2


def find_ptxas() -> str | None:
    for candidate in (shutil.which("ptxas"), os.path.join(os.environ.get("CUDA_HOME", ""),
                      "bin", "ptxas"), "/usr/local/cuda/bin/ptxas"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def f64_instructions(ptx: str) -> int:
    """Double-precision arithmetic instructions in the PTX (moves and loads aside): in a
    float32 kernel each one is float64 math forced by a Python float literal or a
    double-precision libdevice call."""
    return len(re.findall(r"^\s*(?:add|sub|mul|fma|div|rcp|sqrt|neg|abs|min|max|setp)"
                          r"[.\w]*\.f64\b", ptx, re.M))


def ptxas_report(ptxas: str, ptx: str, arch: str) -> dict[str, int]:
    """Assemble one PTX module; parse ptxas -v's resource lines (one entry per module)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp, "k.ptx")
        src.write_text(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", str(src), "-o",
                               str(pathlib.Path(tmp, "k.cubin"))],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {text.strip()}")

    def grab(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {"registers": grab(r"Used (\d+) registers"),
            "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"),
            "stack": grab(r"(\d+) bytes stack frame"),
            "smem": grab(r"(\d+) bytes smem")}


@contextlib.contextmanager
def target_device(cc: tuple[int, int]):
    """compile_ptx compiles the kernel for `cc`, but the device functions it calls are
    compiled by their dispatchers for "the current device", which needs a GPU (numba and
    numba-cuda alike). Stand in a device of compute capability `cc` while compiling."""
    from numba.cuda import dispatcher

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="Markdown file for the table (default: print only)")
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        print("unset NUMBA_ENABLE_CUDASIM: the simulator cannot compile PTX", file=sys.stderr)
        return TOOLKIT_MISSING
    major, minor = (int(p) for p in args.cc.split("."))
    arch = f"sm_{major}{minor}"
    ptxas = find_ptxas()
    if ptxas is None:
        print("no CUDA toolkit: ptxas not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return TOOLKIT_MISSING

    import numpy as np
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from numba import cuda

    from fastgrad.backends import cuda as backend

    try:  # NVVM present? (compile_ptx needs libNVVM and libdevice, not a GPU)
        cuda.compile_ptx(lambda x: None, (backend.nb_float32[::1],), cc=(major, minor))
    except Exception as exc:
        print(f"no CUDA toolkit: NVVM unusable ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:200]})")
        return TOOLKIT_MISSING

    rows, failures = [], []
    start = time.perf_counter()
    for dtype in (np.float32, np.float64):
        for label, kernel, argtypes in backend.compile_targets(dtype):
            name = f"{label} [{np.dtype(dtype).name}]"
            try:
                with warnings.catch_warnings(), target_device((major, minor)):
                    warnings.simplefilter("ignore")
                    ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(major, minor))
                report = ptxas_report(ptxas, ptx, arch)
                report["f64"] = f64_instructions(ptx) if dtype == np.float32 else "-"
                rows.append((name, report))
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    elapsed = time.perf_counter() - start

    header = ("| kernel | registers | spill stores (B) | spill loads (B) | stack (B) | "
              "smem (B) | f64 ops (float32 kernels) |\n|---|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {n} | {r['registers']} | {r['spill_stores']} | {r['spill_loads']} | "
             f"{r['stack']} | {r['smem']} | {r['f64']} |" for n, r in rows]
    table = "\n".join([header, *lines])
    print(table)
    spills = [n for n, r in rows if r["spill_stores"] or r["spill_loads"]]
    summary = (f"{len(rows)} kernels compiled for {arch} and assembled by ptxas, "
               f"{len(failures)} failed, {len(spills)} spill, in {elapsed:.0f} s")
    print(summary)
    if args.output is not None:
        import numba
        args.output.write_text(
            f"# CUDA kernels compiled for {arch} (no GPU needed)\n\n"
            f"Generated by `python bench/cuda_ptx.py --output {args.output}` on "
            f"{datetime.date.today().isoformat()}: numba {numba.__version__}, "
            f"numba.cuda.compile_ptx (NVVM) then `ptxas -arch={arch} -v` ({ptxas}); "
            f"TILE={backend.TILE}, ROW_THREADS={backend.ROW_THREADS}.\n\n"
            f"{summary}.\n\n{table}\n"
            + ("".join(f"\nFAILED: {f}\n" for f in failures)))
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
