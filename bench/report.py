"""Markdown tables and the PNG chart for compare.py's results.

Cells read `rate (±s%)`: the median over repeats, and s = half the min–max range of the
repeats relative to the median. Ratios are fastgrad's best / the peer (> 1: fastgrad is
faster). A difference smaller than the spread is noise.
"""

from __future__ import annotations

from pathlib import Path

from .ceilings import Ceilings
from .kernels import ActivationResults, LinearResults
from .mlp import CONFIGS, DIGITS_PARAMS, DigitsRow, StepResults
from .timing import fmt_time

SECTION_TITLES = {
    1: "## 1. Ceilings",
    2: "## 2. Activations: forward and backward, float32, at 2^20 and 2^24 elements",
    3: "## 3. linear_backward (grad_x, grad_W, grad_b), float32",
    4: "## 4. One MLP training step (SGD, softmax cross-entropy, float32)",
    5: "## 5. Digits, 20 epochs: fastgrad.sklearn.MLPClassifier vs scikit-learn",
    6: "## 6. Cold start: fresh process, import + model build + first training step",
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _missing(missing: dict[str, str]) -> list[str]:
    return [f"- {name}: n/a (not available: {why})" for name, why in missing.items()]


def _fastgrad(impls: list[str]) -> list[str]:
    return [i for i in impls if i.startswith("fastgrad")]


def _peers(impls: list[str]) -> list[str]:
    return [i for i in impls if not i.startswith("fastgrad")]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "–"


def _pct(a: float | None, b: float | None) -> str:
    return f"{100 * a / b:.0f}%" if a and b else "–"


def _best(cells, keys) -> float | None:
    rates = [cells[k].rate for k in keys if k in cells and cells[k].rate and
             not cells[k].note.startswith("✗")]
    return max(rates) if rates else None


def activations(res: ActivationResults, ceil: Ceilings, missing: dict[str, str],
                sizes: tuple[int, ...], names: list[str]) -> list[str]:
    one, alln = ceil.copy_bw(1), ceil.copy_bw(max(ceil.copy) if ceil.copy else 1)
    nall = max(ceil.copy) if ceil.copy else 1
    fg, peers = _fastgrad(res.impls), _peers(res.impls)
    lines = ["GB/s = (arrays read + array written) x n x 4 bytes / median time; forward moves "
             "2 arrays, backward 3 (grad_out, the saved x or y, grad_x; 2 for activations "
             "whose backward needs neither). Row-wise activations act on rows of 1024. "
             f"Fractions are of the copy bandwidth of section 1: {one or 0:.1f} GB/s with 1 "
             f"thread, {alln or 0:.1f} GB/s with {nall}. ✗ marks an output that differs from "
             "fastgrad's float64 reference (that row's speed means nothing). NumPy's out= forms "
             "are the in-place ufunc chains NumPy allows (some keep one temporary); PyTorch's "
             "backward rows call the aten backward ops its autograd uses; JAX's backward is "
             "jax.vjp of the jitted function from x.", "",
             "Threads per implementation: " + "; ".join(f"{k}: {v}"
                                                        for k, v in res.threads.items()), ""]
    lines += _missing(missing)
    for mode, title in (("into", "into a preallocated output (out=)"),
                        ("alloc", "allocating a fresh output every call")):
        for n in sizes:
            lines += ["", f"### {title}, n = 2^{n.bit_length() - 1}", ""]
            header = ["activation", "pass", *[f"{i} GB/s" for i in res.impls],
                      "best fastgrad % copy 1T", f"% copy {nall}T",
                      *[f"fastgrad ÷ {p}" for p in peers]]
            rows = []
            for name in names:
                for d in ("forward", "backward"):
                    cells = [res.cells.get((name, d, n, mode, i)) for i in res.impls]
                    best = _best(res.cells, [(name, d, n, mode, i) for i in fg])
                    row = [name, "fwd" if d == "forward" else "bwd",
                           *[c.text() if c else "–" for c in cells],
                           _pct(best, one), _pct(best, alln)]
                    for p in peers:
                        c = res.cells.get((name, d, n, mode, p))
                        row.append(_ratio(best, c.rate if c and not c.note.startswith("✗")
                                          else None))
                    rows.append(row)
            lines += _table(header, rows)
    return lines


def linear(res: LinearResults, ceil: Ceilings, missing: dict[str, str],
           threads: list[int], shapes) -> list[str]:
    fg, peers = _fastgrad(res.impls), _peers(res.impls)
    lines = ["GFLOP/s = 4 B D_in D_out / median time (grad_x = g W^T and grad_W = x^T g; "
             "the bias sum is left out). Fraction of the sgemm rate of section 1 at the same "
             "thread count (BLAS threads set with threadpoolctl, Numba and PyTorch threads to "
             "the same number; JAX's XLA pool is fixed at start-up).", ""]
    lines += _missing(missing)
    header = ["B, D_in -> D_out", "threads", *[f"{i} GFLOP/s" for i in res.impls],
              "sgemm GFLOP/s", "best fastgrad % sgemm", *[f"fastgrad ÷ {p}" for p in peers]]
    rows = []
    for shape in shapes:
        for t in threads:
            best = _best(res.cells, [(shape, t, i) for i in fg])
            sg = ceil.sgemm(t)
            row = [f"{shape[0]}, {shape[1]} -> {shape[2]}", str(t),
                   *[res.cells[(shape, t, i)].text() if (shape, t, i) in res.cells else "–"
                     for i in res.impls], f"{sg:.0f}" if sg else "–", _pct(best, sg)]
            row += [_ratio(best, res.cells[(shape, t, p)].rate
                           if (shape, t, p) in res.cells else None) for p in peers]
            rows.append(row)
    return lines + [""] + _table(header, rows)


def steps(res: StepResults, missing: dict[str, str], threads: list[int]) -> list[str]:
    fg, peers = _fastgrad(res.impls), _peers(res.impls)
    lines = ["steps/s = 1 / median step time. Floor = the step's matmul FLOPs (2 B D_in D_out "
             "per layer for the forward, as much for grad_W, and for grad_x except the first "
             "layer) / the sgemm rate of section 1 at that thread count: no step can beat "
             "it, small steps stay far from it (per-call overhead, not FLOPs).", ""]
    lines += [f"- {k}: {v}" for k, v in res.notes.items()]
    lines += _missing(missing)
    header = ["net, batch", "threads", *[f"{i} steps/s" for i in res.impls], "floor steps/s",
              "best fastgrad % floor", *[f"fastgrad ÷ {p}" for p in peers]]
    rows = []
    for c, (sizes, batch) in enumerate(CONFIGS):
        for t in threads:
            if not any((c, t, i) in res.cells for i in res.impls):
                continue
            best = _best(res.cells, [(c, t, i) for i in fg])
            floor = res.floors.get((c, t))
            row = ["-".join(map(str, sizes)) + f", {batch}", str(t),
                   *[res.cells[(c, t, i)].text() if (c, t, i) in res.cells else "–"
                     for i in res.impls],
                   f"{floor:,.0f}" if floor else "–", _pct(best, floor)]
            row += [_ratio(best, res.cells[(c, t, p)].rate if (c, t, p) in res.cells else None)
                    for p in peers]
            rows.append(row)
    return lines + [""] + _table(header, rows)


def digits(rows: list[DigitsRow], threads: int) -> list[str]:
    params = ", ".join(f"{k}={v!r}" for k, v in DIGITS_PARAMS.items())
    lines = [f"scikit-learn's digits, 80/20 split (random_state=0), standardized, float32 "
             f"input; both estimators with {params}; {threads} thread(s) for BLAS, Numba and "
             "OpenMP. Wall time of fit: the first fit (for fastgrad it includes compiling or "
             "loading its Numba cache) and the median of the warm fits after it.", ""]
    table = []
    base = next((r for r in rows if r.name.startswith("scikit") and r.stats), None)
    for r in rows:
        if r.stats is None:
            table.append([r.name, f"n/a (not available: {r.note})", "", "", "", ""])
            continue
        speed = _ratio(base.stats.median, r.stats.median) if base else "–"
        table.append([r.name, fmt_time(r.first), f"{fmt_time(r.stats.median)} "
                      f"(±{r.stats.spread * 50:.0f}%)", f"{r.accuracy:.4f}", str(r.n_iter),
                      speed])
    return lines + _table(["estimator", "first fit", "warm fit", "test accuracy", "n_iter_",
                           "speed vs scikit-learn"], table)


def coldstart(rows) -> list[str]:
    import statistics as st
    lines = ["Each run is a new `python -c` process. Inside: seconds from the script's first "
             "line (import, model build, first step). Outside: the process's whole wall "
             "time, interpreter start-up included. Medians over the runs. Children run with "
             "the libraries' default threads (all cores).", ""]
    table = []
    for r in rows:
        if not r.inside:
            table.append([r.name, f"n/a (not available: {r.note})", "", "", "", "", ""])
            continue
        med = {k: st.median(run[k] for run in r.inside)
               for k in ("import", "build", "step", "total")}
        table.append([r.name, *(f"{med[k]:.2f} s" for k in ("import", "build", "step",
                                                            "total")),
                      f"{st.median(r.outside):.2f} s ({len(r.outside)} runs)", r.how])
    return lines + _table(["what", "import", "build", "first step", "total inside",
                           "process wall", "what the step is"], table)


def chart(path: Path, act: ActivationResults | None, ceil: Ceilings | None,
          stp: StepResults | None, threads: list[int], title: str = "") -> str:
    """Write the PNG; returns '' or the reason it was not written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib not installed ({exc})"
    panels = []
    if act is not None and ceil is not None and ceil.copy:
        n = max(k[2] for k in act.cells) if act.cells else None
        if n is not None:
            panels += [("forward", n), ("backward", n)]
    if stp is not None:
        panels.append(("steps", None))
    if not panels:
        return "no section with a chart was run"
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for ax, (what, n) in zip(axes[:, 0], panels):
        if what in ("forward", "backward"):
            alln = ceil.copy[max(ceil.copy)]
            names = list(dict.fromkeys(k[0] for k in act.cells))
            width = 0.8 / max(1, len(act.impls))
            for j, impl in enumerate(act.impls):
                vals = []
                for name in names:
                    c = act.cells.get((name, what, n, "into", impl))
                    if c is None or c.rate is None:
                        c = act.cells.get((name, what, n, "alloc", impl))
                    vals.append(100 * c.rate / alln if c and c.rate else 0)
                ax.bar([i + j * width for i in range(len(names))], vals, width, label=impl)
            ax.axhline(100, color="k", lw=0.8, ls="--")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names,
                          rotation=30, ha="right")
            ax.set_ylabel(f"% of {max(ceil.copy)}-thread copy")
            ax.set_title(f"{what}, float32, n = 2^{n.bit_length() - 1}, into out= "
                         "(allocating where no out=)")
        else:
            t = max(threads)
            labels = ["-".join(map(str, s)) + f" b{b}" for s, b in CONFIGS]
            width = 0.8 / max(1, len(stp.impls))
            for j, impl in enumerate(stp.impls):
                vals = []
                for c in range(len(CONFIGS)):
                    cell, floor = stp.cells.get((c, t, impl)), stp.floors.get((c, t))
                    vals.append(100 * cell.rate / floor if cell and cell.rate and floor else 0)
                ax.bar([i + j * width for i in range(len(labels))], vals, width, label=impl)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
            ax.set_ylabel("% of the step's BLAS floor")
            ax.set_yscale("log")
            ax.set_title(f"MLP training step, {t} thread(s)")
        ax.legend(fontsize=7, ncol=3)
    if title:
        fig.suptitle(title, color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return ""
