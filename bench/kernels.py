"""Sections 2 and 3: activations at bandwidth, and linear_backward against sgemm.

Section 2 times every activation forward and backward, float32, at 2^20 and 2^24
elements (row-wise ones as rows of 1024), for each fastgrad compiled backend and each
peer, in two modes: into a preallocated output and allocating a fresh one per call.
Bytes moved = arrays read + array written (forward: x and y; backward: grad_out, the
saved x or y where the formula needs one, and grad_x), each n * 4 bytes; GB/s = bytes /
median time. Every implementation's output is checked against fastgrad's float64
reference on a small input first, so a fast wrong row is flagged, not celebrated. The
implementations of one activation are timed in rounds (timing.measure_interleaved), so
that ratios between them hold when the host's bandwidth moves during the run.

Section 3 times (grad_x, grad_W, grad_b) of a dense layer y = x W + b without activation:
FLOPs = 4 B D_in D_out (the two gemms; the bias sum is B D_out adds, left out).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from . import peer_activations as pa
from .peers import NotAvailable, all_threads, fastgrad_backends, require, thread_limit
from .timing import Budget, Stats, measure, measure_interleaved

SIZES = (2**20, 2**24)
LINEAR_SHAPES = ((32, 64, 64), (256, 784, 512), (1024, 1024, 1024))
PEERS = ("numpy", "torch", "jax")


@dataclass
class Cell:
    """One measurement, or why there is none."""

    stats: Stats | None = None
    rate: float | None = None       # GB/s or GFLOP/s
    note: str = ""                  # n/a reason, or a correctness flag

    def text(self) -> str:
        if self.stats is None:
            return f"n/a (not available: {self.note})" if self.note else "n/a"
        flag = f" {self.note}" if self.note else ""
        return f"{fmt_rate(self.rate)} (±{self.stats.spread * 50:.0f}%){flag}"


def fmt_rate(value: float) -> str:
    """3 significant digits, thousands separated: 0.0123, 4.56, 78.9, 1,234."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass
class ActivationResults:
    impls: list[str]
    threads: dict[str, str]
    cells: dict[tuple[str, str, int, str, str], Cell] = field(default_factory=dict)
    """(activation, 'forward'|'backward', n, 'into'|'alloc', impl) -> Cell"""


def _bytes(spec, direction: str, n: int) -> int:
    arrays = 2 if direction == "forward" else (2 if spec.needs is None else 3)
    return arrays * n * 4


def _fastgrad_pair(fg, spec, backend: str):
    name = spec.name

    def saved(x, y):
        return {"x": {"x": x}, "y": {"y": y}}.get(spec.needs, {})

    fwd = pa.Pair(lambda x: fg.forward(name, x, backend=backend),
                  lambda x, o: fg.forward(name, x, out=o, backend=backend))
    bwd = pa.Pair(lambda g, x, y: fg.backward(name, g, backend=backend, **saved(x, y)),
                  lambda g, x, y, o: fg.backward(name, g, out=o, backend=backend,
                                                 **saved(x, y)))
    return fwd, bwd


def _tables(fg, backends: list[str]) -> tuple[dict, dict[str, str]]:
    """impl -> {activation: (fwd Pair, bwd Pair)}; impl -> reason it is missing."""
    tables, missing = {}, {}
    for b in backends:
        tables[f"fastgrad-{b}"] = {s.name: _fastgrad_pair(fg, s, b)
                                   for s in fg.ACTIVATIONS.values()}
    for peer in PEERS:
        try:
            tables[peer] = pa.peer_table(peer)
        except NotAvailable as exc:
            missing[peer] = str(exc)
    return tables, missing


def _inputs(fg, spec, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = pa.shape_for(spec.rowwise, n)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    y = fg.forward(spec.name, x)
    return x, g, y


def _inputs_all(fg, specs, n: int) -> dict[str, tuple[np.ndarray, ...]]:
    """x, grad_out and y for every activation at size n; x and grad_out are one buffer
    each, shared (row-wise activations see a (n/ROW, ROW) view of it)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    out = {}
    for spec in specs:
        shape = pa.shape_for(spec.rowwise, n)
        xs, gs = x.reshape(shape), g.reshape(shape)
        out[spec.name] = (xs, gs, fg.forward(spec.name, xs))
    return out


def _check(fg, spec, impl: str, pair: pa.Pair, direction: str) -> str:
    """'' when the implementation agrees with fastgrad's float64 reference on a small
    input, else a short flag for the report."""
    x, g, y = _inputs(fg, spec, 4 * pa.ROW, seed=1)
    peer = _peer(impl)
    if direction == "forward":
        ref = fg.forward(spec.name, x.astype(np.float64), backend="numpy")
        args = (pa.convert(peer, x),)
    else:
        saved = {"x": {"x": x.astype(np.float64)}, "y": {"y": y.astype(np.float64)}}
        ref = fg.backward(spec.name, g.astype(np.float64), backend="numpy",
                          **saved.get(spec.needs, {}))
        args = tuple(pa.convert(peer, a) for a in (g, x, y))
    try:
        got = pa.to_numpy(pair.alloc(*args))
        if pair.into is not None:
            out = np.full(x.shape, np.nan, np.float32)
            pair.into(*args, pa.convert(peer, out))
            if not np.allclose(out, ref, rtol=2e-3, atol=2e-5):
                return "✗ out= result differs from the reference"
    except Exception as exc:  # a peer op missing in this version: reported, not fatal
        return f"✗ {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=2e-3, atol=2e-5):
        return "✗ differs from the reference"
    return ""


def run_activations(fg, budget: Budget, backends: list[str] | None = None,
                    sizes: tuple[int, ...] = SIZES, names: list[str] | None = None
                    ) -> tuple[ActivationResults, dict[str, str]]:
    """Measure section 2; returns the results and {impl: reason} for missing ones."""
    ok, missing = fastgrad_backends(backends)
    missing = {f"fastgrad-{b}": r for b, r in missing.items()}
    tables, peer_missing = _tables(fg, ok)
    missing.update(peer_missing)
    nthreads = all_threads()
    threads = {impl: f"{nthreads} (numba.set_num_threads)" for impl in tables
               if impl.startswith("fastgrad")}
    threads.update({"numpy": "1 (ufuncs are single-threaded)",
                    "torch": f"{nthreads} (torch.set_num_threads)",
                    "jax": "XLA CPU pool (fixed at JAX start-up)"})
    res = ActivationResults(list(tables), {k: threads[k] for k in tables})
    specs = [s for s in fg.ACTIVATIONS.values() if names is None or s.name in names]
    with thread_limit(nthreads):
        flags = {(impl, spec.name, direction): _check(fg, spec, impl, table[spec.name][d],
                                                     direction)
                 for impl, table in tables.items() for spec in specs if spec.name in table
                 for d, direction in enumerate(("forward", "backward"))}
        for n in sizes:
            data = _inputs_all(fg, specs, n)
            outs = {impl: (pa.convert(_peer(impl), np.zeros(n, np.float32))
                           if _peer(impl) != "jax" else None) for impl in tables}
            for spec in specs:
                print(f"  section 2: {spec.name}, n = 2^{n.bit_length() - 1}",
                      file=sys.stderr, flush=True)
                calls = {}
                for impl, table in tables.items():
                    if spec.name not in table:
                        for key in _keys(spec.name, n, impl):
                            res.cells[key] = Cell(note=f"{impl} has no {spec.name} here")
                        continue
                    px, pg, py = (pa.convert(_peer(impl), a) for a in data[spec.name])
                    o = None if outs[impl] is None else outs[impl].reshape(px.shape)
                    for d, direction in enumerate(("forward", "backward")):
                        pair = table[spec.name][d]
                        args = (px,) if direction == "forward" else (pg, px, py)
                        for mode in ("into", "alloc"):
                            fn = pair.into if mode == "into" else pair.alloc
                            key = (spec.name, direction, n, mode, impl)
                            if fn is None:
                                res.cells[key] = Cell(note=pair.why_no_into or "no out=")
                                continue
                            calls[key] = ((lambda fn=fn, args=args, o=o: fn(*args, o))
                                          if mode == "into" else
                                          (lambda fn=fn, args=args: fn(*args)))
                # Every implementation of this activation in rounds, one batch each in
                # turn (measure_interleaved): the host's memory bandwidth moves by up to
                # 1.5x within minutes, and timed one implementation after another, a burst
                # had put torch's sigmoid backward at 62-67 GB/s, above the copy ceiling,
                # beside fastgrad's 34-37 (interleaved: 35.6 and 36.0-37.3).
                for key, stats in measure_interleaved(calls, budget).items():
                    name, direction, _, _, impl = key
                    flag = flags.get((impl, name, direction), "")
                    res.cells[key] = Cell(stats, _bytes(spec, direction, n) / stats.median
                                          / 1e9, flag)
                del calls
            del data, outs
    return res, missing


def _peer(impl: str) -> str:
    """The array library an implementation takes: the peer's own, NumPy for fastgrad."""
    return impl if impl in PEERS else "numpy"


def _keys(name: str, n: int, impl: str):
    for direction in ("forward", "backward"):
        for mode in ("into", "alloc"):
            yield (name, direction, n, mode, impl)


# ---------------------------------------------------------------- section 3
@dataclass
class LinearResults:
    impls: list[str]
    cells: dict[tuple[tuple[int, int, int], int, str], Cell] = field(default_factory=dict)
    """((B, D_in, D_out), threads, impl) -> Cell (rate in GFLOP/s)"""


def _linear_impls(fg, backends: list[str]):
    impls, missing = {}, {}
    for b in backends:
        impls[f"fastgrad-{b}"] = (
            lambda b=b: (lambda g, x, W: fg.linear_backward(g, x, W, backend=b)), "numpy")
    impls["numpy"] = (lambda: (lambda g, x, W: (g @ W.T, x.T @ g, g.sum(0))), "numpy")

    def torch_impl():
        torch = require("torch")
        return lambda g, x, W: (torch.mm(g, W.t()), torch.mm(x.t(), g), g.sum(0))

    def jax_impl():
        jax = require("jax")
        step = jax.jit(lambda g, x, W: (g @ W.T, x.T @ g, g.sum(0)))
        return lambda g, x, W: jax.block_until_ready(step(g, x, W))

    impls["torch"] = (torch_impl, "torch")
    impls["jax"] = (jax_impl, "jax")
    built = {}
    for name, (make, peer) in impls.items():
        try:
            built[name] = (make(), peer)
        except NotAvailable as exc:
            missing[name] = str(exc)
    return built, missing


def run_linear(fg, budget: Budget, thread_counts: list[int],
               backends: list[str] | None = None,
               shapes: tuple[tuple[int, int, int], ...] = LINEAR_SHAPES
               ) -> tuple[LinearResults, dict[str, str]]:
    ok, missing = fastgrad_backends(backends)
    missing = {f"fastgrad-{b}": r for b, r in missing.items()}
    impls, more = _linear_impls(fg, ok)
    missing.update(more)
    res = LinearResults(list(impls))
    rng = np.random.default_rng(0)
    for shape in shapes:
        B, din, dout = shape
        x = rng.standard_normal((B, din)).astype(np.float32)
        W = (rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32)
        g = rng.standard_normal((B, dout)).astype(np.float32)
        ref = (g.astype(np.float64) @ W.T.astype(np.float64),
               x.T.astype(np.float64) @ g.astype(np.float64), g.astype(np.float64).sum(0))
        flops = 4 * B * din * dout
        for impl, (fn, peer) in impls.items():
            args = tuple(pa.convert(peer, a) for a in (g, x, W))
            got = [pa.to_numpy(r) for r in fn(*args)]
            ok_ = all(np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(got, ref))
            flag = "" if ok_ else "✗ differs from the reference"
            for t in thread_counts:
                with thread_limit(t):
                    stats = measure(lambda fn=fn, args=args: fn(*args), budget)
                res.cells[(shape, t, impl)] = Cell(stats, flops / stats.median / 1e9, flag)
    return res, missing
