"""Accuracy beside speed: each float32 activation's largest error, fastgrad and its peers.

    python -m bench.peer_accuracy [--points 2097152] [--out FILE]

(from the repository root). The speed tables of compare.py set fastgrad beside PyTorch and
JAX; this says what each computes. Every implementation gets the same float32 inputs:
x on an even grid over [-30, 30] plus the edges (0, +-tiny, +-1e-30, +-88.7, +-1e4) and,
for the backward, g = 1 and y = the float32 forward (sigmoid and tanh take y, the others
x), so the backward error is the kernel's own and not y's rounding magnified. The
reference is fastgrad's numpy backend in float64 on those same float32 values. Error: the
largest |got - ref| in units of the float32 spacing at |ref| (at least the smallest
normal), and the x where it occurs. Row-wise activations act on rows of 1024 drawn from
the same grid; their error is in ulp of each row's largest |ref|. Two exceptions, where no
implementation can be close relative to its result: within 0.5 of a zero of the
derivative (swish' at x = -1.278, gelu' at -0.752: there the result is a difference of
terms near 0.3, so every rounding of those terms is unbounded relative to it) the error
is in ulp of max(|ref|, 1/16); selu's derivative at x = 0, a kink where the
implementations pick different sides, is left out. Three views: results in float32's
normal range; all results, the subnormal ones included (XLA flushes them to zero); and
the backward in ulp of max(|result|, |g|), the bound fastgrad's tests hold its backward
kernels to (an error relative to the gradient flowing in: a derivative's tail far below 1
then counts little, for every implementation).

Peers in their own forms (bench/peer_activations.py's allocating ones): PyTorch's ops and
aten backward ops, JAX's jax.nn functions (jit) and jax.vjp for the backward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: measure the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastgrad as fg  # noqa: E402
from bench.kernels import _fastgrad_pair, _peer  # noqa: E402
from bench.peer_activations import ROW, convert, peer_table, to_numpy  # noqa: E402
from bench.peers import NotAvailable  # noqa: E402

EDGES = (0.0, -0.0, 1e-30, -1e-30, 1.4e-45, -1.4e-45, 88.7, -88.7, 1e4, -1e4)
NAMES = ("sigmoid", "tanh", "elu", "selu", "swish", "gelu", "softplus", "softmax",
         "log_softmax")
TINY = float(np.finfo(np.float32).tiny)
DERIVATIVE_ZEROS = {"swish": -1.2785, "gelu": -0.7518}
"""x where the derivative (the backward with g = 1) crosses zero, to 4 digits."""


def inputs(points: int) -> np.ndarray:
    """The grid plus the edges, float32; a multiple of ROW long (row-wise activations)."""
    x = np.concatenate([np.linspace(-30, 30, points, dtype=np.float32),
                        np.array(EDGES, np.float32)])
    return np.resize(x, -(-x.size // ROW) * ROW)


def ulp_error(got: np.ndarray, ref: np.ndarray, rowwise: bool,
              floor: np.ndarray | float = 0.0) -> np.ndarray:
    """|got - ref| in float32 ulp of max(|ref|, floor) (of the row's largest |ref| if
    rowwise)."""
    scale = np.maximum(np.abs(ref), floor)
    if rowwise:
        scale = np.broadcast_to(scale.max(axis=-1, keepdims=True), ref.shape)
    spacing = np.spacing(np.maximum(scale, TINY).astype(np.float32)).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf, NaN: settled just below
        err = np.abs(got.astype(np.float64) - ref) / spacing
    both_nan = np.isnan(got) & np.isnan(ref)
    same_inf = np.isinf(ref) & (got.astype(np.float64) == ref)
    return np.where(both_nan | same_inf, 0.0, np.where(np.isnan(err), np.inf, err))


def implementations() -> dict[str, dict | str]:
    """{implementation: {activation: (forward Pair, backward Pair)}, or why it is missing}:
    fastgrad's backends as section 2 calls them, the peers' allocating forms."""
    impls: dict[str, dict | str] = {
        f"fastgrad-{b}": {s.name: _fastgrad_pair(fg, s, b) for s in fg.ACTIVATIONS.values()}
        for b in ("numba", "cython") if b in fg.available_backends()}
    for peer in ("torch", "jax"):
        try:
            impls[peer] = peer_table(peer)
        except NotAvailable as exc:
            impls[peer] = str(exc)
    return impls


def measure(points: int) -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """[(activation, pass, {implementation: (normal results' cell, all results' cell)})]."""
    x1 = inputs(points)
    rows = []
    impls = implementations()
    for name in NAMES:
        rowwise = fg.ACTIVATIONS[name].rowwise
        x = x1.reshape(-1, ROW) if rowwise else x1
        x64 = x.astype(np.float64)
        y = fg.forward(name, x, backend="numpy")  # float32 y, the backward's saved input
        g = np.ones_like(x)
        if rowwise:  # a row-wise backward needs a gradient that varies along the row
            g = np.resize(np.linspace(-1, 1, 7, dtype=np.float32), x.shape)
        ref_fwd = fg.forward(name, x64, backend="numpy")
        saved = {"y": y.astype(np.float64)} if fg.ACTIVATIONS[name].needs == "y" else {"x": x64}
        ref_bwd = fg.backward(name, g.astype(np.float64), **saved, backend="numpy")
        for pas, ref, args in (("fwd", ref_fwd, (x,)), ("bwd", ref_bwd, (g, x, y))):
            floor = 0.0
            if pas == "bwd" and name in DERIVATIVE_ZEROS:
                floor = np.where(np.abs(x64 - DERIVATIVE_ZEROS[name]) < 0.5, 1 / 16, 0.0)
            keep = ~((x == 0) & (name == "selu") & (pas == "bwd"))
            normal = keep & ~(np.abs(ref) < TINY)
            views = [(floor, normal), (floor, keep)]
            if pas == "bwd":
                views.append((np.abs(g.astype(np.float64)), keep))
            cells = {}
            for impl, table in impls.items():
                if isinstance(table, str):
                    cells[impl] = (f"n/a ({table})",) * len(views)
                    continue
                try:
                    pair = table[name][0 if pas == "fwd" else 1]
                    got = to_numpy(pair.alloc(*(convert(_peer(impl), a) for a in args)))
                    got = np.asarray(got, np.float32).reshape(ref.shape)
                except Exception as exc:  # a peer without this activation's form
                    cells[impl] = (f"n/a ({type(exc).__name__})",) * len(views)
                    continue
                cells[impl] = tuple(_worst(ulp_error(got, ref, rowwise, fl), x, where)
                                    for fl, where in views)
            rows.append((name, pas, cells))
    return rows


def _worst(err: np.ndarray, x: np.ndarray, where: np.ndarray) -> str:
    err = np.where(where, err, 0.0)
    i = int(np.argmax(err))
    return f"{err.flat[i]:.3g} (x = {float(x.flat[i]):.3g})"


def render(rows, points: int) -> str:
    impls = list(rows[0][2])
    lines = [f"Largest error in float32 ulp over {points:,} grid points in [-30, 30] plus the "
             f"edges (`python -m bench.peer_accuracy`), numpy {np.__version__}; each cell: "
             "the error and the x where it occurs.", ""]
    for k, title in enumerate(("ulp of the result, results in the normal range",
                               "ulp of the result, subnormal results included",
                               "backward, ulp of max(|result|, |g|) (the tests' bound)")):
        lines += [f"**{title}**", "",
                  "| activation | pass | " + " | ".join(impls) + " |",
                  "|---|---|" + "---|" * len(impls)]
        for name, pas, cells in rows:
            if k < len(cells[impls[0]]):
                lines.append(f"| {name} | {pas} | " + " | ".join(cells[i][k] for i in impls)
                             + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1 << 21)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = render(measure(args.points), args.points)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
