"""Check and time the `cuda` backend on a real GPU (under 5 minutes).

    python bench/gpu_check.py [--record bench/RESULTS.md] [--seed N] [--no-peers]
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --tiny     # end to end, no GPU

1. Correctness, on fresh random inputs (the seed is printed): every activation forward
   and backward, every fused dense-layer forward (bias + activation) and backward
   (activation backward + grad_b, g W^T, x^T g), float32 and float64, against the float64
   NumPy reference. Every output buffer is poisoned with NaN before the kernel runs, so an
   element a kernel forgets to write fails; NaN never passes where the reference is not
   NaN. The relative error of each is printed.
2. Timing (skipped with --tiny): forward and backward kernels at large sizes with CUDA
   events (warm-up, then the median of many runs), beside CuPy and PyTorch where they are
   installed; a short table is printed last (and appended to --record with the date and
   the GPU).
3. The MLP training step on the device (fastgrad.train_device, what fit runs with
   backend="cuda"): one epoch checked against the numpy backend's layer-by-layer runner,
   then steps/s of a 784-256-128-10 ReLU net, batch 128, float32, SGD, cross-entropy
   (forward, loss, backward, gradient norms, update; weights and batch resident), timed
   with CUDA events, beside the same step in PyTorch (FP32, no TF32) when installed.

Exit status 0 when every check passed, 1 otherwise. Under the simulator (--tiny) sizes are
tiny: the kernels and the MLP step are checked, and the MLP step's timing code runs on a
5-4-3 net (its numbers are meaningless there and not recorded).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from numba import cuda

import fastgrad as fg  # noqa: E402
from fastgrad.backends import cuda as backend  # noqa: E402

# Pass bounds: elementwise max |got - want| / (atol + |want|) <= 1; matmuls and row
# reductions normwise, max |got - want| / max |want|.
ELEMENTWISE = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)}
NORMWISE = {np.float32: 1e-5, np.float64: 1e-12}


class Checks:
    def __init__(self):
        self.failed: list[str] = []
        self.count = 0

    def compare(self, what: str, got: np.ndarray, want: np.ndarray, dtype, normwise: bool):
        self.count += 1
        got = np.asarray(got, np.float64)
        want = np.asarray(want, np.float64)
        bad_nan = np.isnan(got) & ~np.isnan(want)  # includes never-written (poisoned) cells
        nan_mismatch = int(bad_nan.sum() + (~np.isnan(got) & np.isnan(want)).sum())
        finite = np.isfinite(want) & np.isfinite(got)
        diff = np.abs(got - want)[finite]
        if normwise:
            scale = np.abs(want[finite]).max() if diff.size else 1.0
            err = float(diff.max() / scale) if diff.size and scale else 0.0
            bound = NORMWISE[dtype]
        else:
            rtol, atol = ELEMENTWISE[dtype]
            # relative error with a floor: passes exactly when diff <= atol + rtol |want|
            floor = atol / rtol
            err = float((diff / (floor + np.abs(want[finite]))).max()) if diff.size else 0.0
            bound = rtol
        inf_mismatch = int((np.isinf(want) != np.isinf(got)).sum()
                           + (np.isinf(want) & np.isinf(got) & (want != got)).sum())
        ok = nan_mismatch == 0 and inf_mismatch == 0 and err <= bound
        status = "ok  " if ok else "FAIL"
        extra = f"  NaN mismatches {nan_mismatch}" if nan_mismatch else ""
        extra += f"  inf mismatches {inf_mismatch}" if inf_mismatch else ""
        print(f"  {status} {what:<46} rel err {err:9.2e} (bound {bound:.0e}){extra}")
        if not ok:
            self.failed.append(what)


def poisoned(shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype))


def check_all(rng, sizes, checks: Checks) -> None:
    n_elem, rows, cols, (n, d_in, d_out) = sizes
    ref = fg.get_backend("numpy")
    original_empty = backend.empty
    backend.empty = poisoned  # linear_backward's buffers start as NaN too
    try:
        for dtype in (np.float32, np.float64):
            print(f"{np.dtype(dtype).name}:")
            for spec in fg.ACTIVATIONS.values():
                shape = (rows, cols) if spec.rowwise else (n_elem,)
                x = (rng.standard_normal(shape) * 3).astype(dtype)
                g = rng.standard_normal(shape).astype(dtype)
                a, b = spec.encoded({})
                out = poisoned(shape, dtype)
                backend.activation_forward(spec, cuda.to_device(x), out, a, b)
                want = np.empty(shape, dtype)
                ref.activation_forward(spec, x, want, a, b)
                checks.compare(f"{spec.name} forward", out.copy_to_host(), want, dtype,
                               spec.rowwise)
                saved = {"x": x, "y": want, None: None}[spec.needs]
                out = poisoned(shape, dtype)
                backend.activation_backward(spec, cuda.to_device(g),
                                            None if saved is None else cuda.to_device(saved),
                                            out, a, b)
                want_g = np.empty(shape, dtype)
                ref.activation_backward(spec, g, saved, want_g, a, b)
                checks.compare(f"{spec.name} backward", out.copy_to_host(), want_g, dtype,
                               spec.rowwise)
            for spec in fg.ACTIVATIONS.values():
                x = rng.standard_normal((n, d_in)).astype(dtype)
                W = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(dtype)
                bias = rng.standard_normal(d_out).astype(dtype)
                a, b = spec.encoded({})
                y, pre = poisoned((n, d_out), dtype), poisoned((n, d_out), dtype)
                xd, Wd = cuda.to_device(x), cuda.to_device(W)
                backend.linear_forward(xd, Wd, cuda.to_device(bias), y, pre, spec, a, b)
                want_y, want_pre = np.empty((n, d_out), dtype), np.empty((n, d_out), dtype)
                ref.linear_forward(x, W, bias, want_y, want_pre, spec, a, b)
                label = f"linear {n}x{d_in}x{d_out} {spec.name}"
                checks.compare(f"{label} pre", pre.copy_to_host(), want_pre, dtype, True)
                checks.compare(f"{label} y", y.copy_to_host(), want_y, dtype, True)
                gy = rng.standard_normal((n, d_out)).astype(dtype)
                saved = {"x": want_pre, "y": want_y, None: None}[spec.needs]
                got = backend.linear_backward(cuda.to_device(gy), xd, Wd,
                                              None if saved is None else cuda.to_device(saved),
                                              spec, a, b, True)
                want = ref.linear_backward(gy, x, W, saved, spec, a, b, True)
                for name, gd, w in zip(("grad_x", "grad_W", "grad_b"), got, want):
                    checks.compare(f"{label} {name}", gd.copy_to_host(), w, dtype, True)
            check_losses_and_updates(rng, dtype, rows, cols, n_elem, checks)
    finally:
        backend.empty = original_empty


def check_losses_and_updates(rng, dtype, rows, cols, n_elem, checks: Checks) -> None:
    """Every loss (value and poisoned gradient) and optimizer update vs the reference."""
    from fastgrad.losses import LOSSES

    ref = fg.get_backend("numpy")
    for spec in LOSSES.values():
        pred = (rng.standard_normal((rows, cols)) * 3).astype(dtype)
        if spec.rowwise:
            target = np.eye(cols, dtype=dtype)[rng.integers(0, cols, rows)]
        else:
            target = rng.random((rows, cols)).astype(dtype)
        pd, td = cuda.to_device(pred), cuda.to_device(target)
        got = backend.loss_forward(spec, pd, td)
        want = ref.loss_forward(spec, pred, target)
        checks.compare(f"loss {spec.name}", np.array([got]), np.array([want]), np.float64,
                       True)
        out = poisoned((rows, cols), dtype)
        backend.loss_backward(spec, pd, td, out)
        want_g = np.empty_like(pred)
        ref.loss_backward(spec, pred, target, want_g)
        checks.compare(f"loss {spec.name} grad", out.copy_to_host(), want_g, dtype, True)
    cases = [("sgd_update", 1, (0.1, 0.9, 0.01, True)),
             ("adam_update", 2, (1e-3, 0.9, 0.999, 1e-8, 0.01, True, 7)),
             ("rmsprop_update", 2, (1e-3, 0.99, 1e-8, 0.01, 0.9))]
    for kernel, n_state, hyper in cases:
        arrays = [rng.standard_normal(n_elem).astype(dtype) for _ in range(2)]
        arrays += [np.abs(rng.standard_normal(n_elem)).astype(dtype) for _ in range(n_state)]
        want = [a.copy() for a in arrays]
        getattr(ref, kernel)(*want, *hyper)
        dev = [cuda.to_device(a) for a in arrays]
        getattr(backend, kernel)(*dev, *hyper)
        for i in [0, *range(2, len(arrays))]:
            checks.compare(f"{kernel} state {i}", dev[i].copy_to_host(), want[i], dtype,
                           False)


def time_ms(fn, repeats: int, budget_s: float = 2.0) -> float:
    """Median milliseconds of fn() between two CUDA events, after warm-up (under the
    simulator, which has no event timing, wall-clock milliseconds)."""
    for _ in range(3):
        fn()
    cuda.synchronize()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() < deadline):
        if backend.SIMULATOR:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end))
    return statistics.median(times)


def mlp_plan(sizes, batch: int, n_batches: int, seed: int, backend_name: str):
    """(model, EpochPlan) for one epoch of a ReLU MLP with a softmax output, float32,
    SGD (momentum 0.9), on random data, built the way fit builds it."""
    from fastgrad.train import EpochPlan, _plan_layers

    rng = np.random.default_rng(seed)
    model = fg.MLP(sizes, "relu", output="softmax", dtype="float32", backend=backend_name,
                   seed=seed)
    n = batch * n_batches
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    T = fg.one_hot(rng.integers(0, sizes[-1], n), sizes[-1], np.float32)
    opt = fg.SGD(lr=0.01, momentum=0.9)
    opt.bind(model.params, backend_name)
    plan = EpochPlan(_plan_layers(model), model.params, model.grads, model.layer_slices, X, T,
                     batch, model.loss_spec, opt, 0.01, None, None, backend_name)
    plan.batch_loss = np.zeros(plan.n_batches)
    plan.grad_sq = np.zeros((plan.n_batches, len(sizes) - 1))
    return model, plan


def check_mlp_epoch(seed: int, sizes, batch: int, n_batches: int, checks: Checks) -> None:
    """One epoch of the device runner against the numpy backend's layer-by-layer runner
    from the same weights and data: batch losses, gradient norms and final weights."""
    from fastgrad.train import train_epoch_layers
    from fastgrad.train_device import DeviceEpochRunner

    _, want = mlp_plan(sizes, batch, n_batches, seed, "numpy")
    _, got = mlp_plan(sizes, batch, n_batches, seed, "cuda")
    train_epoch_layers(want)
    DeviceEpochRunner("cuda")(got)
    label = f"MLP epoch {'-'.join(map(str, sizes))} batch {batch} f32"
    checks.compare(f"{label} losses", got.batch_loss, want.batch_loss, np.float32, True)
    checks.compare(f"{label} grad norms", np.sqrt(got.grad_sq), np.sqrt(want.grad_sq),
                   np.float32, True)
    checks.compare(f"{label} weights", got.params, want.params, np.float32, True)


def mlp_step_timings(sizes, batch: int, repeats: int, use_peers: bool):
    """(case, implementation, median ms, steps/s) rows of one training step."""
    from fastgrad.train_device import DeviceEpochRunner

    n_batches = 8
    _, plan = mlp_plan(sizes, batch, n_batches, 0, "cuda")
    runner = DeviceEpochRunner("cuda")
    runner(plan)  # allocates the device state, compiles every kernel
    step_no = [0]

    def step():
        i = step_no[0] = (step_no[0] + 1) % n_batches
        runner._forward_backward(plan, i)
        runner._update(plan, i)

    case = f"MLP step {'-'.join(map(str, sizes))} b{batch} f32 SGD CE"
    rows = []
    ms = time_ms(step, repeats)
    rows.append((case, "fastgrad", ms, f"{1e3 / ms:9.0f} steps/s"))
    # A whole epoch through the runner: adds the epoch's upload and the metrics download.
    ms = time_ms(lambda: runner(plan), max(3, repeats // n_batches)) / n_batches
    rows.append((case + " (epoch)", "fastgrad", ms, f"{1e3 / ms:9.0f} steps/s"))
    torch = peers().get("torch") if use_peers else None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 against FP32
        layers = []
        for k in range(len(sizes) - 1):
            layers.append(torch.nn.Linear(sizes[k], sizes[k + 1]))
            if k < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers).cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        xb = torch.randn(batch, sizes[0], device="cuda")
        yb = torch.randint(0, sizes[-1], (batch,), device="cuda")

        def torch_step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()

        ms = time_ms(torch_step, repeats)
        rows.append((case, "torch", ms, f"{1e3 / ms:9.0f} steps/s"))
    return rows


def peers():
    found = {}
    try:
        import cupy
        found["cupy"] = cupy
    except Exception:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            found["torch"] = torch
    except Exception:
        pass
    return found


def timings(repeats: int, use_peers: bool) -> list[tuple[str, str, float, str]]:
    """(case, implementation, median ms, throughput) rows."""
    rows = []
    rng = np.random.default_rng(0)
    f32 = np.float32
    n = 1 << 24
    x = cuda.to_device(rng.standard_normal(n).astype(f32))
    g = cuda.to_device(rng.standard_normal(n).astype(f32))
    out = cuda.device_array(n, f32)
    spec_of = fg.get_activation
    others = peers() if use_peers else {}
    cp, torch = others.get("cupy"), others.get("torch")
    if torch is not None:
        tx = torch.as_tensor(x, device="cuda")
        tg = torch.as_tensor(g, device="cuda")
    if cp is not None:
        cx = cp.asarray(x)

    def gbs(nbytes, ms):
        return f"{nbytes / ms / 1e6:7.1f} GB/s"

    for name in ("relu", "sigmoid", "tanh", "gelu"):
        spec = spec_of(name)
        a, b = spec.encoded({})
        ms = time_ms(lambda spec=spec, a=a, b=b: backend.activation_forward(spec, x, out, a, b),
                     repeats)
        rows.append((f"{name} fwd 2^24 f32", "fastgrad", ms, gbs(8 * n, ms)))
        saved = x if spec.needs == "x" else out
        ms = time_ms(lambda spec=spec, a=a, b=b, s=saved:
                     backend.activation_backward(spec, g, s, out, a, b), repeats)
        rows.append((f"{name} bwd 2^24 f32", "fastgrad", ms, gbs(12 * n, ms)))
        if torch is not None:
            tf = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                  "gelu": torch.nn.functional.gelu}[name]
            ms = time_ms(lambda tf=tf: tf(tx), repeats)
            rows.append((f"{name} fwd 2^24 f32", "torch", ms, gbs(8 * n, ms)))
            # the backward kernels autograd itself calls: (op, saved tensor)
            aten = torch.ops.aten
            op, saved_t = {"relu": (aten.threshold_backward, tx),
                           "sigmoid": (aten.sigmoid_backward, tf(tx)),
                           "tanh": (aten.tanh_backward, tf(tx)),
                           "gelu": (aten.gelu_backward, tx)}[name]
            extra = (0,) if name == "relu" else ()
            ms = time_ms(lambda op=op, s=saved_t, e=extra: op(tg, s, *e), repeats)
            rows.append((f"{name} bwd 2^24 f32", "torch", ms, gbs(12 * n, ms)))
        if cp is not None and name in ("relu", "sigmoid", "tanh"):
            cf = {"relu": lambda: cp.maximum(cx, 0), "sigmoid": lambda: 1 / (1 + cp.exp(-cx)),
                  "tanh": lambda: cp.tanh(cx)}[name]
            ms = time_ms(cf, repeats)
            rows.append((f"{name} fwd 2^24 f32", "cupy", ms, gbs(8 * n, ms)))

    r, c = 8192, 1024
    xs = cuda.to_device(rng.standard_normal((r, c)).astype(f32))
    ys = cuda.device_array((r, c), f32)
    gs = cuda.to_device(rng.standard_normal((r, c)).astype(f32))
    sm = spec_of("softmax")
    ms = time_ms(lambda: backend.activation_forward(sm, xs, ys, 0.0, 0.0), repeats)
    rows.append((f"softmax fwd {r}x{c} f32", "fastgrad", ms, gbs(8 * r * c, ms)))
    ms = time_ms(lambda: backend.activation_backward(sm, gs, ys, xs, 0.0, 0.0), repeats)
    rows.append((f"softmax bwd {r}x{c} f32", "fastgrad", ms, gbs(12 * r * c, ms)))
    if torch is not None:
        txs = torch.as_tensor(xs, device="cuda")
        ms = time_ms(lambda: torch.softmax(txs, dim=-1), repeats)
        rows.append((f"softmax fwd {r}x{c} f32", "torch", ms, gbs(8 * r * c, ms)))

    state = [cuda.to_device(np.abs(rng.standard_normal(n)).astype(f32)) for _ in range(2)]
    ms = time_ms(lambda: backend.adam_update(x, g, *state, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                             False, 10), repeats)
    rows.append(("adam update 2^24 f32", "fastgrad", ms, gbs(24 * n, ms)))

    N, D_in, D_out = 4096, 1024, 1024
    flops = 2.0 * N * D_in * D_out
    xl = cuda.to_device(rng.standard_normal((N, D_in)).astype(f32))
    Wl = cuda.to_device((rng.standard_normal((D_in, D_out)) / 32).astype(f32))
    bl = cuda.to_device(rng.standard_normal(D_out).astype(f32))
    yl = cuda.device_array((N, D_out), f32)
    pl = cuda.device_array((N, D_out), f32)
    gl = cuda.to_device(rng.standard_normal((N, D_out)).astype(f32))
    relu = spec_of("relu")

    def tflops(mult, ms):
        return f"{mult * flops / ms / 1e9:7.1f} TFLOP/s"

    ms = time_ms(lambda: backend.linear_forward(xl, Wl, bl, yl, pl, relu, 0.0, 0.0), repeats)
    rows.append((f"linear+relu fwd {N}x{D_in}x{D_out} f32", "fastgrad", ms, tflops(1, ms)))
    ms = time_ms(lambda: backend.linear_backward(gl, xl, Wl, pl, relu, 0.0, 0.0, True),
                 repeats)
    rows.append((f"linear+relu bwd {N}x{D_in}x{D_out} f32 (allocates)", "fastgrad", ms,
                 tflops(2, ms)))
    if torch is not None:
        txl, tWl, tbl, tgl = (torch.as_tensor(a, device="cuda") for a in (xl, Wl, bl, gl))
        torch.backends.cuda.matmul.allow_tf32 = False  # compare FP32 with FP32
        ms = time_ms(lambda: torch.relu(torch.addmm(tbl, txl, tWl)), repeats)
        rows.append((f"linear+relu fwd {N}x{D_in}x{D_out} f32", "torch", ms, tflops(1, ms)))
        ms = time_ms(lambda: (tgl @ tWl.T, txl.T @ tgl, tgl.sum(0)), repeats)
        rows.append((f"linear bwd (products) {N}x{D_in}x{D_out} f32", "torch", ms,
                     tflops(2, ms)))
    if cp is not None:
        cxl, cWl = cp.asarray(xl), cp.asarray(Wl)
        ms = time_ms(lambda: cp.matmul(cxl, cWl), repeats)
        rows.append((f"matmul {N}x{D_in}x{D_out} f32", "cupy", ms, tflops(1, ms)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, correctness only (for the CUDA simulator)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per case")
    parser.add_argument("--no-peers", action="store_true", help="skip CuPy and PyTorch")
    parser.add_argument("--record", type=pathlib.Path, default=None,
                        help="append the timing table, date and GPU to this Markdown file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = fg.backend_info()["cuda"]
    if not info["available"]:
        print(f"cuda backend not available: {info['reason']}")
        return 1
    if backend.SIMULATOR and not args.tiny:
        print("under the CUDA simulator: pass --tiny (correctness on tiny sizes only)")
        return 1
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    if backend.SIMULATOR:
        device = "CUDA simulator"
    else:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        device = f"{name} (cc {dev.compute_capability[0]}.{dev.compute_capability[1]})"
    print(f"device: {device}; seed {seed}; numba {__import__('numba').__version__}")
    if args.tiny:
        backend.TILE, backend.ROW_THREADS, backend.THREADS, backend.MAX_BLOCKS = 4, 8, 32, 4
        sizes = (37, 3, 21, (9, 13, 7))
    else:
        sizes = (1_000_003, 257, 1000, (1000, 517, 259))
    checks = Checks()
    check_all(rng, sizes, checks)
    mlp_sizes, mlp_batch = ([5, 4, 3], 4) if args.tiny else ([784, 256, 128, 10], 128)
    check_mlp_epoch(seed, mlp_sizes, mlp_batch, 2 if args.tiny else 8, checks)
    print(f"checks: {checks.count - len(checks.failed)}/{checks.count} passed"
          f" ({time.perf_counter() - started:.0f} s)")
    rows = []
    if args.tiny:  # runs the timing code; simulator times mean nothing
        for case, impl, ms, _rate in mlp_step_timings(mlp_sizes, mlp_batch, 2, False):
            print(f"  (simulator) {case} {impl}: {ms:.0f} ms")
    else:
        rows = timings(args.repeats, not args.no_peers)
        rows += mlp_step_timings(mlp_sizes, mlp_batch, args.repeats, not args.no_peers)
        width = max(len(r[0]) for r in rows)
        lines = [f"| {'case':<{width}} | impl     |   median ms | throughput       |",
                 f"|{'-' * (width + 2)}|----------|------------:|------------------|"]
        lines += [f"| {c:<{width}} | {i:<8} | {ms:11.4f} | {t:<16} |" for c, i, ms, t in rows]
        table = "\n".join(lines)
        print(f"\n{device}, {datetime.date.today().isoformat()}, CUDA events, median of "
              f"up to {args.repeats} runs after 3 warm-ups:")
        print(table)
        if args.record is not None:
            with args.record.open("a") as fh:
                fh.write(f"\n## bench/gpu_check.py, {datetime.date.today().isoformat()}, "
                         f"{device}\n\nChecks: {checks.count - len(checks.failed)}/"
                         f"{checks.count} passed (seed {seed}).\n\n{table}\n")
    print(f"total {time.perf_counter() - started:.0f} s")
    if checks.failed:
        print("FAILED: " + ", ".join(checks.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
