"""fastgrad beside its peers, in one process and one run: writes bench/RESULTS.md + a PNG.

    python bench/compare.py                       # everything (minutes: a quiet machine)
    python bench/compare.py --quick --sections 1  # a smoke run in seconds
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py

Sections (issue #7): 1 ceilings, 2 activations, 3 linear_backward, 4 MLP training step,
5 digits with the scikit-learn estimators, 6 cold start. Sections 2-4 are expressed as
fractions of section 1's ceilings, so section 1 is measured whenever any of them runs.
Peers (PyTorch, JAX, scikit-learn, matplotlib) are optional: a missing one, or a fastgrad
feature not in this checkout (the cython backend, the trainer), becomes a row reading
"n/a (not available: reason)".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: measure the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001 - lets the relative imports below resolve

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench import ceilings, coldstart, kernels, machine, mlp, report  # noqa: E402
from bench.peers import all_threads, load  # noqa: E402
from bench.timing import FULL, QUICK  # noqa: E402

QUICK_SIZES = (2**16, 2**18)
"""--quick measures section 2 at these sizes (the code path is the same; the figures are
not measurements anyway) so a smoke run of every section takes minutes, not many."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny repeats and short batches: proves the script runs; its figures "
                        "are not measurements")
    p.add_argument("--sections", default="1,2,3,4,5,6",
                   help="comma-separated section numbers to run (default: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md",
                   help="markdown file to write; the chart goes beside it as <stem>.png")
    p.add_argument("--backends", default=None,
                   help="fastgrad backends to measure (default: every compiled one available)")
    p.add_argument("--activations", default=None,
                   help="comma-separated activation names for section 2 (default: all)")
    args = p.parse_args(argv)
    try:
        args.sections = sorted({int(s) for s in args.sections.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sections must be numbers 1-6 separated by commas, got {args.sections!r}")
    bad = [s for s in args.sections if s not in report.SECTION_TITLES]
    if bad:
        p.error(f"--sections: no section {bad}; the sections are 1-6")
    args.backends = args.backends.split(",") if args.backends else None
    return args


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    args.out.parent.mkdir(parents=True, exist_ok=True)  # fail before minutes of measuring
    import fastgrad as fg

    load("threadpoolctl")
    nthreads = all_threads()
    threads = ceilings.thread_counts()
    names = (args.activations.split(",") if args.activations
             else list(fg.ACTIVATIONS))
    unknown = [n for n in names if n not in fg.ACTIVATIONS]
    if unknown:
        raise SystemExit(f"--activations: unknown {unknown}; known: {list(fg.ACTIVATIONS)}")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    body: dict[int, list[str]] = {}
    ceil = act = stp = None
    if any(s in args.sections for s in (1, 2, 3, 4)):
        _log("section 1: ceilings")
        ceil = (ceilings.measure_ceilings(budget, gemm_n=1024, cross_check=False)
                if args.quick else ceilings.measure_ceilings(budget))
        body[1] = ceilings.markdown(ceil)
        if 1 not in args.sections:
            body[1].insert(0, "(measured as the reference for the sections below)\n")
    if 2 in args.sections:
        _log("section 2: activations")
        sizes = QUICK_SIZES if args.quick else kernels.SIZES
        act, missing = kernels.run_activations(fg, budget, args.backends, sizes, names)
        body[2] = report.activations(act, ceil, missing, sizes, names)
    if 3 in args.sections:
        _log("section 3: linear_backward")
        lin, missing = kernels.run_linear(fg, budget, threads, args.backends)
        body[3] = report.linear(lin, ceil, missing, threads, kernels.LINEAR_SHAPES)
    if 4 in args.sections:
        _log("section 4: MLP step")
        sgemm = {t: ceil.sgemm(t) for t in threads if ceil.sgemm(t)}
        stp, missing = mlp.run_steps(budget, threads, sgemm, args.backends)
        body[4] = report.steps(stp, missing, threads)
    if 5 in args.sections:
        _log("section 5: digits")
        body[5] = report.digits(mlp.run_digits(budget, nthreads), nthreads)
    if 6 in args.sections:
        _log("section 6: cold start")
        body[6] = report.coldstart(coldstart.run_coldstart(1 if args.quick else 5))
    elapsed = time.perf_counter() - started

    png = args.out.with_suffix(".png")
    try:
        why_no_chart = report.chart(png, act, ceil, stp, threads,
                                    "QUICK SMOKE RUN: not measurements" if args.quick else "")
    except Exception as exc:  # a chart problem must not cost the measurements
        why_no_chart = f"chart failed: {type(exc).__name__}: {exc}"
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    extra = {"threads": f"{nthreads} usable; rows state their own setting",
             "numba threading layer": _threading_layer(),
             "load average at the end": " / ".join(f"{v:.2f}" for v in load_end or ()),
             "run time": f"{elapsed:.0f} s"}
    lines = ["# fastgrad benchmarks: ceilings and peers", ""]
    if args.quick:
        lines += ["> **QUICK SMOKE RUN** (`--quick`): tiny repeats on whatever else the machine "
                  "was doing, section 1's gemm at 1024 and section 2 at 2^16 and 2^18 "
                  "elements instead of 2^20 and 2^24. It proves the script runs; none of its "
                  "figures is a measurement.", ""]
    lines += ["## Machine and software", "", *machine.describe(extra), "",
              "## How to read this", "",
              "- Every figure is a median over repeated timed batches after warm-up calls; "
              "`(±s%)` is half the min–max range of the repeats relative to the median.",
              "- A difference smaller than the spread (or than the spread between two runs "
              "of this script) is noise. Timings with 2 threads jump between runs: repeat "
              "in separate processes before believing one.",
              "- Ratios are fastgrad's best backend ÷ the peer: above 1 fastgrad is faster.",
              f"- Load average at the start: "
              f"{' / '.join(f'{v:.2f}' for v in load_start or ())}; a load near or above the "
              f"core count ({nthreads}) means the figures are disturbed.", ""]
    for s, title in report.SECTION_TITLES.items():
        lines += [title, ""]
        lines += body.get(s, ["not run in this invocation (see --sections)"])
        lines.append("")
    lines += ["## Chart", "",
              f"![fastgrad vs peers]({png.name})" if not why_no_chart
              else f"no chart: {why_no_chart}", ""]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _log(f"wrote {args.out}" + ("" if why_no_chart else f" and {png}"))
    return 0


def _threading_layer() -> str:
    try:
        import numba
        return str(numba.threading_layer())
    except Exception as exc:  # raises before any parallel region ran
        return f"not started ({type(exc).__name__})"


if __name__ == "__main__":
    raise SystemExit(main())
