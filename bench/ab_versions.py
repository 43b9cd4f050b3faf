"""A/B of two versions of fastgrad's kernels in one process: this checkout ("new") against
an older copy of the package ("old"), both numba and cython, plus PyTorch, interleaved
(row kernels on rows of ROW elements).

    git worktree add /tmp/base BASE && (cd /tmp/base && python setup.py build_ext -i)
    mkdir /tmp/ab && cp -r /tmp/base/fastgrad /tmp/ab/fg_old
    flock /tmp/fg-bench.lock python -m bench.ab_versions --old /tmp/ab swish gelu softplus

The old copy is imported as the package `fg_old` (fastgrad imports itself relatively, and
a compiled extension's init function is named after its last component, so the renamed
copy loads). float32, 2^24 elements into a preallocated output, two threads
(numba.set_num_threads, OpenMP's default on a 2-core machine, torch.set_num_threads).
GB/s counts the bytes each pass must move: forward 8 per element, backward 12. Each
round times 3 calls of every implementation in turn; medians over --rounds, with the
spread (max/min - 1) so noise can be told from a difference.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import numpy as np

from fastgrad.scalar_math import SELU_ALPHA, SELU_SCALE

CASES = {  # name: (activation, params)
    "swish": ("swish", {"beta": 1.0}), "swish_beta": ("swish", {"beta": 1.7}),
    "gelu": ("gelu", {"approximate": "none"}), "gelu_tanh": ("gelu", {"approximate": "tanh"}),
    "softplus": ("softplus", {}), "sigmoid": ("sigmoid", {}), "tanh": ("tanh", {}),
    "elu": ("elu", {"alpha": 1.0}), "selu": ("selu", {}),
    "softmax": ("softmax", {}), "log_softmax": ("log_softmax", {}),
}
ROW = 1024
"""Row kernels (softmax, log_softmax) run on rows of this many elements, as compare.py's."""


def _torch_pair(name: str, params: dict):
    """(forward(x, out), backward(g, x, y, out) or None) with PyTorch's out= ops."""
    import torch
    aten = torch.ops.aten
    approx = params.get("approximate", "none")
    return {
        "swish": (lambda x, o: aten.silu.out(x, out=o),
                  lambda g, x, y, o: aten.silu_backward.grad_input(g, x, grad_input=o)),
        "gelu": (lambda x, o: aten.gelu.out(x, approximate=approx, out=o),
                 lambda g, x, y, o: aten.gelu_backward.grad_input(
                     g, x, approximate=approx, grad_input=o)),
        "softplus": (lambda x, o: aten.softplus.out(x, 1.0, 20.0, out=o),
                     lambda g, x, y, o: aten.softplus_backward.grad_input(
                         g, x, 1.0, 20.0, grad_input=o)),
        "sigmoid": (lambda x, o: torch.sigmoid(x, out=o),
                    lambda g, x, y, o: aten.sigmoid_backward.grad_input(g, y, grad_input=o)),
        "tanh": (lambda x, o: torch.tanh(x, out=o),
                 lambda g, x, y, o: aten.tanh_backward.grad_input(g, y, grad_input=o)),
        "elu": (lambda x, o: aten.elu.out(x, 1.0, 1.0, 1.0, out=o), None),
        "selu": (lambda x, o: aten.elu.out(x, SELU_ALPHA, SELU_SCALE, 1.0, out=o), None),
        "softmax": (lambda x, o: aten._softmax.out(x, -1, False, out=o),
                    lambda g, x, y, o: aten._softmax_backward_data.out(
                        g, y, -1, x.dtype, grad_input=o)),
        "log_softmax": (lambda x, o: aten._log_softmax.out(x, -1, False, out=o),
                        lambda g, x, y, o: aten._log_softmax_backward_data.out(
                            g, y, -1, x.dtype, out=o)),
    }[name]


def _numba_pair(nc, spec, a, b):
    """(forward(x, out), backward(saved, g, out)) of a numba_cpu module, two threads."""
    if spec.rowwise:
        return (lambda x, o: nc._ROWS[spec.name][0][1](x, o),
                lambda s, g, o: nc._ROWS[spec.name][1][1](s, g, o))
    k = nc._make_elementwise(spec, np.float32)
    return (lambda x, o: k["forward"][1](x, o, a, b),
            lambda s, g, o: k["backward"][1](s, g, o, a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package fg_old")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("cases", nargs="*", default=["swish", "gelu", "softplus"],
                        choices=sorted(CASES))
    args = parser.parse_args()
    sys.path.insert(0, args.old)
    import numba
    from numba import njit, prange

    from fastgrad import _kernels as ck_new
    from fastgrad.backends import numba_cpu as nc_new
    fg_old = importlib.import_module("fg_old")
    ck_old = importlib.import_module("fg_old._kernels")
    nc_old = importlib.import_module("fg_old.backends.numba_cpu")
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    numba.set_num_threads(2)

    @njit(parallel=True, nogil=True)
    def pcopy(src, dst):
        for i in prange(src.size):
            dst[i] = src[i]

    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    flat_x = (rng.standard_normal(n) * 3).astype(np.float32)
    flat_g = rng.standard_normal(n).astype(np.float32)
    rows = []
    for case in args.cases:
        name, params = CASES[case]
        spec_new = nc_new.ACTIVATIONS[name]
        spec_old = fg_old.activations.ACTIVATIONS[name]
        shape = (n // ROW, ROW) if spec_new.rowwise else (n,)
        x, g = flat_x.reshape(shape), flat_g.reshape(shape)
        out = np.empty_like(x)
        fa, fb = spec_new.encoded(params)
        a, b = np.float32(fa), np.float32(fb)
        nf, nb = _numba_pair(nc_new, spec_new, a, b)
        of, ob = _numba_pair(nc_old, spec_old, a, b)
        kid = ck_new.KERNELS[name]
        y = np.empty_like(x)
        nf(x, y)
        saved = y if spec_new.needs == "y" else x
        # default arguments bind this case's objects (a closure would see the last case's)
        fwd = {"numba_old": lambda f=of, x=x, o=out: f(x, o),
               "numba_new": lambda f=nf, x=x, o=out: f(x, o),
               "cython_old": lambda k=kid, fa=fa, fb=fb, x=x, o=out: ck_old.activation_forward(
                   k, x, o, fa, fb),
               "cython_new": lambda k=kid, fa=fa, fb=fb, x=x, o=out: ck_new.activation_forward(
                   k, x, o, fa, fb)}
        bwd = {"numba_old": lambda f=ob, s=saved, g=g, o=out: f(s, g, o),
               "numba_new": lambda f=nb, s=saved, g=g, o=out: f(s, g, o),
               "cython_old": lambda k=kid, fa=fa, fb=fb, s=saved, g=g, o=out:
                   ck_old.activation_backward(k, g, s, o, fa, fb),
               "cython_new": lambda k=kid, fa=fa, fb=fb, s=saved, g=g, o=out:
                   ck_new.activation_backward(k, g, s, o, fa, fb)}
        if torch is not None and (name != "swish" or params["beta"] == 1.0):
            tf, tb = _torch_pair(name, params)
            tx, tg, to, ty = (torch.from_numpy(v) for v in (x, g, out, y))
            fwd["torch"] = lambda f=tf, tx=tx, to=to: f(tx, to)
            if tb is not None:
                bwd["torch"] = lambda f=tb, tx=tx, tg=tg, ty=ty, to=to: f(tg, tx, ty, to)
        rows += [(case, "fwd", 8, fwd), (case, "bwd", 12, bwd)]
    copy_out = np.empty_like(flat_x)
    rows.append(("copy", "2 threads", 8, {"copy": lambda: pcopy(flat_x, copy_out)}))
    for _, _, _, impls in rows:
        for f in impls.values():
            f()
    times: dict = {}
    for _ in range(args.rounds):
        for case, p, _, impls in rows:
            for impl, f in impls.items():
                t = time.perf_counter()
                for _ in range(3):
                    f()
                times.setdefault((case, p, impl), []).append((time.perf_counter() - t) / 3)
    gbs = {k: None for k in times}
    for (case, p, impl), ts in times.items():
        nbytes = next(r[2] for r in rows if r[0] == case and r[1] == p)
        gbs[(case, p, impl)] = (nbytes * n / np.median(ts) / 1e9, max(ts) / min(ts) - 1)
    copy = gbs[("copy", "2 threads", "copy")][0]
    print(f"two-thread copy {copy:.1f} GB/s (80%: {0.8 * copy:.1f}), n = 2^{args.log2n}")
    for case, p, _, impls in rows[:-1]:
        cells = " ".join(f"{i} {gbs[(case, p, i)][0]:.1f} ({gbs[(case, p, i)][1]:.0%})"
                         for i in impls)
        r = {i: gbs[(case, p, i)][0] for i in impls}
        extra = "".join(f", {k} new/torch {r[k + '_new'] / r['torch']:.2f}"
                        for k in ("numba", "cython") if "torch" in r)
        print(f"{case} {p}: {cells} | numba new/old {r['numba_new'] / r['numba_old']:.2f}, "
              f"cython new/old {r['cython_new'] / r['cython_old']:.2f}{extra}, best new "
              f"{max(r['numba_new'], r['cython_new']) / copy:.0%} of copy")


if __name__ == "__main__":
    main()
