"""fit on the numba and cython backends: each fused epoch runner (one compiled call per
epoch) against the layer-by-layer runner, from the same seed. Both must train the same:
History, final weights, optimizer state, clipping, early stopping and the NonFiniteError
path."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
from conftest import spinning

import fastgrad as fg
from fastgrad import optim, train
from fastgrad.activations import ACTIVATIONS
from fastgrad.backends import cython as cython_backend
from fastgrad.backends import numba_cpu

# The backends with a fused epoch runner, and their modules.
FUSED = {"numba": numba_cpu, "cython": cython_backend}

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-6}, "float64": {"rtol": 1e-9, "atol": 1e-12}}

OPTIMIZERS = {
    "sgd": ("sgd", {"lr": 0.05}),  # plain: the fused update's one-pass branch
    "sgd-momentum": ("sgd", {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov-wd": ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True,
                                "weight_decay": 0.01}),
    "adam-wd": ("adam", {"lr": 0.01, "weight_decay": 0.01}),
    "adamw": ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
    "rmsprop-momentum": ("rmsprop", {"lr": 0.005, "momentum": 0.5, "weight_decay": 0.01}),
    # scikit-learn's L2: weights only, divided by the batch's rows (the last batch of 37
    # rows at batch_size 8 has 5), its penalty in the loss
    "sgd-nesterov-sklearn-l2": ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                        "weight_decay": 0.3, "decay": "sklearn"}),
    "adam-sklearn-l2": ("adam", {"lr": 0.01, "weight_decay": 0.3, "decay": "sklearn"}),
}


def problem(rng, loss, n=37, d=4):
    """(X, y, output width, output activation) for each task; n=37 leaves a short last
    batch at batch_size 8."""
    X = rng.standard_normal((n, d))
    if loss == "mse":
        return X, np.stack([X[:, 0] - X[:, 1], X[:, 2] * 0.5], axis=1), 2, "identity"
    if loss == "binary_cross_entropy":
        return X, (X[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(int), 1, "sigmoid"
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    y[:3] = [0, 1, 2]  # every class present whatever the draw (class 2 is ~15% of rows)
    return X, y, 3, "softmax"


def run(X, y, d_out, output, dtype, fused, seed=7, activation="tanh", backend="numba",
        **fit_kw):
    """A fresh model fit with the given runner; returns (model, history, optimizer)."""
    model = fg.MLP([X.shape[1], 6, 5, d_out], activation, output=output, dtype=dtype,
                   backend=backend, seed=seed)
    name, params = fit_kw.pop("opt", ("sgd", {"lr": 0.05}))
    opt = optim.make_optimizer(name, **params)
    history = model.fit(X, y, optimizer=opt, verbose=0, fused=fused, **fit_kw)
    assert history.runner == ("fused" if fused else "layers")
    return model, history, opt


def assert_close(got, want, dtype, what):
    """rtol elementwise, plus an absolute floor of rtol times the array's largest value:
    float32 elements that are sums of cancelling terms (velocities, gradients near 0)
    differ by rounding relative to the terms, not to themselves."""
    want = np.asarray(want, np.float64)
    tol = TOL[dtype]
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=tol["rtol"],
                               atol=max(tol["atol"], tol["rtol"] * scale), err_msg=what)


def assert_same_training(a, b, dtype):
    (ma, ha, oa), (mb, hb, ob) = a, b
    tol = TOL[dtype]
    assert ha.epoch == hb.epoch
    assert (ha.stopped_early, ha.best_epoch) == (hb.stopped_early, hb.best_epoch)
    for key in ("loss", "val_loss", "accuracy", "lr"):
        if key in hb.history:
            np.testing.assert_allclose(ha[key], hb[key], err_msg=key, **tol)
    if "r2" in hb.history:
        # r2 = 1 - SS_res / SS_tot: SS_res / SS_tot carries the loss's relative rounding,
        # r2 itself none near 0 (0.02341 against 0.02342 is 2.5e-4 relative)
        np.testing.assert_allclose(1 - np.asarray(ha["r2"]), 1 - np.asarray(hb["r2"]),
                                   err_msg="r2", **tol)
    np.testing.assert_allclose(ha["grad_norm"], hb["grad_norm"], err_msg="grad_norm", **tol)
    assert_close(ma.params, mb.params, dtype, "final weights")
    assert oa.steps == ob.steps
    for name in ("velocity", "m", "v", "square_avg", "momentum_buf"):
        if hasattr(ob, name):
            assert_close(getattr(oa, name), getattr(ob, name), dtype, name)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=list(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "cross_entropy"])
def test_fused_fit_equals_layer_by_layer(rng, loss, opt, dtype, backend):
    X, y, d_out, output = problem(rng, loss)
    kw = {"epochs": 4, "batch_size": 8, "opt": OPTIMIZERS[opt], "validation_split": 0.2,
          "backend": backend}
    fused = run(X, y, d_out, output, dtype, True, **kw)
    kw["opt"] = OPTIMIZERS[opt]
    layers = run(X, y, d_out, output, dtype, False, **kw)
    assert_same_training(fused, layers, dtype)
    assert not np.allclose(fused[0].params, fg.MLP([4, 6, 5, d_out], "tanh", output=output,
                                                   dtype=dtype, seed=7).params)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip", [{"clip_norm": 0.05}, {"clip_value": 0.01},
                                  {"clip_value": 0.02, "clip_norm": 0.03}],
                         ids=["norm", "value", "both"])
def test_clipping_is_the_same(rng, clip, dtype, backend):
    X, y, d_out, output = problem(rng, "cross_entropy")
    runs = [run(X, y, d_out, output, dtype, fused, epochs=3, batch_size=8,
                opt=("adam", {"lr": 0.05}), backend=backend, **clip)
            for fused in (True, False)]
    assert_same_training(*runs, dtype)
    # clipping engaged (else the comparison above proves nothing about it)
    free = run(X, y, d_out, output, dtype, True, epochs=3, batch_size=8,
               opt=("adam", {"lr": 0.05}), backend=backend)
    assert not np.allclose(free[0].params, runs[0][0].params, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, k, m", [(200, 64, 100), (201, 63, 101), (100, 64, 100)])
def test_numba_runner_products_just_past_blas_small_size(rng, rows, k, m, dtype):
    """numba's fused runner splits a product of rows just past OpenBLAS's small-matrix
    size into two halves of the rows (numba_train._dot_rows): odd and even halves, a
    transposed right operand, and a product below the size (not split), as np.dot."""
    from fastgrad.backends import numba_train
    a = rng.standard_normal((rows, k)).astype(dtype)
    b = rng.standard_normal((k, m)).astype(dtype)
    for right in (b, np.ascontiguousarray(b.T).T):
        out = np.full((rows, m), np.nan, dtype)  # a row left unwritten stays NaN
        numba_train._dot_rows(a, right, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ right.astype(np.float64),
                                   rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("backend", FUSED)
def test_float32_gradient_norms_past_float32_range_stay_finite(rng, backend):
    # Gradients ~1e21 are finite in float32, their squares (and a 256-element block's sum
    # of them) are not: the fused runners sum squares in float32 for speed and must redo
    # such a sum in float64, where the layer-by-layer trainer computes it.
    X = (rng.standard_normal((32, 20)) * 1e21).astype(np.float32)
    y = rng.integers(0, 3, 32)
    norms = []
    for fused in (True, False):
        model = fg.MLP([20, 300, 3], activation="relu", dtype="float32", seed=0,
                       backend=backend)
        h = model.fit(X, y, epochs=1, batch_size=32, optimizer="sgd", lr=1e-30,
                      shuffle=False, verbose=0, health=False, fused=fused)
        assert h.runner == ("fused" if fused else "layers")
        norms.append(np.asarray(h["grad_norm"]))
    assert np.all(norms[1] > 1e20) and np.all(np.isfinite(norms[1]))
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_early_stopping_and_schedules_are_the_same(rng, dtype, backend):
    X, y, d_out, output = problem(rng, "cross_entropy")
    kw = dict(epochs=40, batch_size=8, validation_split=0.3,
              early_stopping={"patience": 2}, lr_schedule=optim.CosineLR(40),
              opt=("sgd", {"lr": 0.2, "momentum": 0.9}), backend=backend)
    runs = [run(X, y, d_out, output, dtype, fused, **dict(kw)) for fused in (True, False)]
    assert runs[0][1].stopped_early, "the test needs early stopping to engage"
    assert_same_training(*runs, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lr", [1e6, 1e30], ids=["blows-up-later", "blows-up-at-once"])
# Some draws pass an epoch end with huge but finite gradients first: the health check's
# warning is right there, and beside the point here.
@pytest.mark.filterwarnings("ignore::fastgrad.GradientHealthWarning")
def test_non_finite_error_is_the_same(rng, dtype, lr, backend):
    X = rng.standard_normal((32, 3))
    y = 1e3 * rng.standard_normal(32)
    errors, params = [], []
    for fused in (True, False):
        m = fg.MLP([3, 16, 16, 1], seed=0, dtype=dtype, backend=backend)
        with pytest.raises(fg.NonFiniteError) as info:
            m.fit(X, y, epochs=50, batch_size=4, optimizer="sgd", lr=lr, verbose=0,
                  fused=fused)
        assert m.history_.runner == ("fused" if fused else "layers")
        e = info.value
        errors.append((e.epoch, e.batch, e.layer, e.what, str(e)))
        params.append(m.params.copy())
    assert errors[0] == errors[1]
    assert np.all(np.isfinite(params[0])), "the model keeps its last finite weights"
    np.testing.assert_allclose(params[0], params[1], **TOL[dtype])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype, x0, w0, lr", [("float32", 1e25, 1e-12, 1e5),
                                               ("float64", 1e200, 1e-100, 1e10)])
def test_an_update_that_breaks_the_weights_is_rolled_back_the_same(rng, dtype, x0, w0, lr,
                                                                   backend):
    """Batch 1 holds one row whose gradient is finite but whose update (lr * g) overflows:
    batch 2 then meets non-finite weights; both runners report epoch 0, batch 2 and leave
    the model with the weights from before batch 1's update (the fused runner replays the
    epoch to get them)."""
    X = rng.standard_normal((12, 3))
    X[:, 0] = 0
    X[4] = (x0, 0, 0)  # batch 1 (batch_size 4, no shuffle)
    y = rng.standard_normal(12)
    results = []
    for fused in (True, False):
        m = fg.MLP([3, 1], dtype=dtype, backend=backend, seed=0)
        m.layers[0].W[0, 0] = w0  # keeps batch 1's output (and loss) finite
        with pytest.raises(fg.NonFiniteError) as info:
            m.fit(X, y, epochs=1, batch_size=4, shuffle=False, optimizer="sgd", lr=lr,
                  verbose=0, fused=fused)
        e = info.value
        results.append(((e.epoch, e.batch, e.layer, e.what), m.params.copy()))
        assert np.all(np.isfinite(m.params))
        assert m.history_.runner == ("fused" if fused else "layers")
    assert results[0][0] == results[1][0] and results[0][0][:2] == (0, 2)
    assert_close(results[0][1], results[1][1], dtype, "last finite weights")
    assert results[0][1][0] == np.asarray(w0, dtype), "W[0, 0] before batch 1's update"


def test_hyper_parameters_outside_the_dtype_fall_back(rng):
    X, y = rng.standard_normal((16, 3)), np.arange(16) % 2
    m = fg.MLP([3, 4, 2], backend="numba", seed=0)
    assert m.fit(X, y, epochs=1, optimizer="adam", eps=1e-50, verbose=0).runner == "layers"
    with pytest.raises(ValueError, match="eps=1e-50 is not representable in float32"):
        m.fit(X, y, epochs=1, optimizer="adam", eps=1e-50, verbose=0, fused=True)
    m64 = fg.MLP([3, 4, 2], backend="numba", seed=0, dtype="float64")
    assert m64.fit(X, y, epochs=1, optimizer="adam", eps=1e-50, verbose=0).runner == "fused"


@pytest.mark.parametrize("backend", FUSED)
def test_nan_weights_name_the_same_layer(rng, backend):
    X, y, d_out, output = problem(rng, "cross_entropy")
    reports = []
    for fused in (True, False):
        m = fg.MLP([4, 8, 8, d_out], seed=0, backend=backend)
        m.fit(X, y, epochs=1, verbose=0, fused=fused)
        m.layers[1].W[0, 0] = np.nan
        with pytest.raises(fg.NonFiniteError) as info:
            m.fit(X, y, epochs=1, verbose=0, fused=fused)
        e = info.value
        reports.append((e.epoch, e.batch, e.layer, e.what))
    assert reports[0] == reports[1] == (0, 0, 1, "loss")


@pytest.mark.parametrize("backend", FUSED)
def test_switching_runners_continues_the_same_optimizer_state(rng, backend):
    """2 fused epochs, then 2 layer-by-layer ones with the same Adam (its moments and step
    count carry over), equal 4 epochs of either runner alone."""
    X, y, d_out, output = problem(rng, "cross_entropy")
    results = []
    for plan in ((True, False), (False, True), (True, True), (False, False)):
        m = fg.MLP([4, 6, d_out], "relu", dtype="float64", backend=backend, seed=3)
        opt = optim.Adam(lr=0.02)
        for fused in plan:
            m.fit(X, y, epochs=2, batch_size=8, optimizer=opt, verbose=0, fused=fused)
        results.append((m.params.copy(), opt.m.copy(), opt.v.copy(), opt.steps))
    for got in results[1:]:
        for a, b in zip(got[:3], results[0][:3]):
            np.testing.assert_allclose(a, b, **TOL["float64"])
        assert got[3] == results[0][3] == 4 * 5


@pytest.mark.parametrize("backend", FUSED)
def test_fit_uses_the_fused_runner(rng, monkeypatch, backend):
    """A spy on the backend's runner: the fast path cannot silently fall off."""
    calls = []
    module = FUSED[backend]
    real = module.train_epoch

    def spy(plan, *args, **kwargs):
        calls.append(plan.n_batches)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(module, "train_epoch", spy)
    X, y = rng.standard_normal((40, 5)), np.arange(40) % 3
    for optimizer in ("sgd", "adam", "adamw", "rmsprop"):
        calls.clear()
        m = fg.MLP([5, 8, 3], backend=backend, seed=0)
        h = m.fit(X, y, epochs=3, batch_size=16, optimizer=optimizer, verbose=0)
        assert calls == [3, 3, 3] and h.runner == "fused", optimizer
    m = fg.MLP([5, 8, 1], "leaky_relu", backend=backend, seed=0, dtype="float64")
    assert m.fit(X, X[:, 0], epochs=1, verbose=0).runner == "fused"


def test_default_backend_trains_with_the_fused_runner(rng):
    """backend=None: the default backend (cython, fastest for single kernels) trains with
    its fused epoch; an explicit backend is kept as given (numpy has no fused runner)."""
    X, y = rng.standard_normal((40, 5)), np.arange(40) % 3
    model = fg.MLP([5, 8, 3], seed=0)
    assert model.fit(X, y, epochs=1, verbose=0).runner == "fused"
    assert "cython.train_epoch" in model._runner_cache
    explicit = fg.MLP([5, 8, 3], backend="cython", seed=0).fit(X, y, epochs=1, verbose=0)
    assert explicit.runner == "fused"
    numpy = fg.MLP([5, 8, 3], backend="numpy", seed=0).fit(X, y, epochs=1, verbose=0)
    assert numpy.runner == "layers"


@pytest.mark.parametrize("backend", FUSED)
def test_the_adapter_is_built_once_per_model(rng, monkeypatch, backend):
    built = []
    adapter = FUSED[backend]._FitAdapter
    real = adapter.__init__

    def counting(self, *args):
        built.append(1)
        real(self, *args)

    monkeypatch.setattr(adapter, "__init__", counting)
    X, y = rng.standard_normal((40, 5)), np.arange(40) % 3
    m = fg.MLP([5, 8, 3], backend=backend, seed=0)
    opt = optim.SGD(lr=0.1, momentum=0.9)
    m.fit(X, y, epochs=3, batch_size=16, optimizer=opt, verbose=0)
    m.fit(X, y, epochs=2, batch_size=16, optimizer=opt, verbose=0)
    assert len(built) == 1
    m.fit(X, y, epochs=1, batch_size=8, optimizer=opt, verbose=0)  # another batch size
    assert len(built) == 2
    clone = pickle.loads(pickle.dumps(m))  # the cache (views) is not pickled
    assert "_runner_cache" not in clone.__dict__
    clone.fit(X, y, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(clone.layers[0].W, clone.params[:40].reshape(5, 8))


def test_plans_the_fused_runner_declines(rng):
    X, y = rng.standard_normal((24, 3)), np.arange(24) % 2

    class MySGD(optim.SGD):
        pass

    cases = [
        (fg.Sequential([fg.Dense(3, 4, "relu"), fg.Dense(4, 4, "tanh"), fg.Dense(4, 2)],
                       backend="numba"), "sgd", "mixed hidden activations"),
        (fg.Sequential([fg.Dense(3, 4, "softmax"), fg.Dense(4, 2)], backend="numba"), "sgd",
         "not elementwise"),
        (fg.Sequential([fg.Dense(3, 4, "leaky_relu", alpha=0.1),
                        fg.Dense(4, 4, "leaky_relu", alpha=0.2), fg.Dense(4, 2)],
                       backend="numba"), "sgd", "mixed hidden activations"),
        (fg.MLP([3, 4, 2], backend="numba", seed=0), MySGD(lr=0.1), "MySGD has no fused"),
    ]
    for model, opt, why in cases:
        h = model.fit(X, y, epochs=1, optimizer=opt, verbose=0)
        assert h.runner == "layers", why
        with pytest.raises(ValueError, match=f"fused=True but .*{why}"):
            model.fit(X, y, epochs=1, optimizer=opt, verbose=0, fused=True)
    with pytest.raises(ValueError, match="backend 'numpy' has no fused epoch runner"):
        fg.MLP([3, 2], backend="numpy").fit(X, y, epochs=1, verbose=0, fused=True)


# --- the cython backend's fused runner: every plan of the layer-by-layer kernels ----------

def _hidden_pairs():
    """Pairs of hidden activations covering every activation of the table once at least,
    row-wise ones (softmax, log_softmax) included, each pair mixed."""
    names = [n for n in ACTIVATIONS if n != "identity"]
    return [(names[i], names[(i + 5) % len(names)]) for i in range(len(names))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pair", _hidden_pairs(), ids="-".join)
def test_cython_fused_trains_mixed_and_rowwise_activations_as_layer_by_layer(rng, pair, dtype):
    """Where numba's runner takes one elementwise hidden activation, cython's runs each
    layer's own kernel: any activations, mixed, row-wise, with their own parameters."""
    X, y, d_out, output = problem(rng, "cross_entropy")
    runs = []
    for fused in (True, False):
        model = fg.Sequential([fg.Dense(4, 6, pair[0]), fg.Dense(6, 5, pair[1]),
                               fg.Dense(5, d_out)], backend="cython", dtype=dtype, seed=0)
        model.params[...] = np.random.default_rng(3).uniform(-0.7, 0.7, model.params.size)
        opt = optim.SGD(lr=0.1, momentum=0.9)
        # (health=False: binary_step's zero gradients would warn)
        h = model.fit(X, y, epochs=3, batch_size=8, optimizer=opt, verbose=0, fused=fused,
                      health=False)
        assert h.runner == ("fused" if fused else "layers")
        runs.append((model, h, opt))
    assert_same_training(*runs, dtype)


def test_cython_fused_takes_what_numba_declines(rng):
    """Mixed activations (or parameters) and hyper-parameters outside float32: the cython
    runner computes the updates in double, as its layer-by-layer kernels do."""
    X, y = rng.standard_normal((24, 3)), np.arange(24) % 2
    leaky = fg.Sequential([fg.Dense(3, 4, "leaky_relu", alpha=0.1),
                           fg.Dense(4, 4, "leaky_relu", alpha=0.2), fg.Dense(4, 2)],
                          backend="cython")
    assert leaky.fit(X, y, epochs=1, optimizer="sgd", verbose=0).runner == "fused"
    runs = []
    for fused in (True, False):
        m = fg.MLP([3, 4, 2], backend="cython", seed=0)
        opt = optim.Adam(lr=0.01, eps=1e-50)
        h = m.fit(X, y, epochs=2, batch_size=8, optimizer=opt, verbose=0, fused=fused)
        assert h.runner == ("fused" if fused else "layers")
        runs.append((m, h, opt))
    assert_same_training(*runs, "float32")


@pytest.mark.parametrize("lr, update", [(0.05, "sgd_dtype"), (1e-50, "sgd")])
def test_cython_float32_sgd_updates_in_float32_where_its_hyper_parameters_fit(rng, lr, update):
    """float32 SGD runs in float32 arithmetic (PyTorch's update, as numba's runner), unless
    a hyper-parameter is not a normal float32 (it would flush or overflow): then through
    double, as the layer-by-layer kernel; both within rounding of the layer runner."""
    from fastgrad import _kernels
    X, y, d_out, output = problem(rng, "cross_entropy")
    opt = ("sgd", {"lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01})
    runs = [run(X, y, d_out, output, "float32", fused, opt=opt, epochs=3, batch_size=8,
                backend="cython") for fused in (True, False)]
    assert_same_training(*runs, "float32")
    adapter = runs[0][0]._runner_cache["cython.train_epoch"]
    assert _kernels.TRAIN_OPTIMIZERS[adapter.switches[1]] == update


@pytest.mark.parametrize("name, eps, update", [("adam", 1e-8, "adam_dtype"),
                                               ("adamw", 1e-8, "adamw_dtype"),
                                               ("adam", 1e-50, "adam")])
def test_cython_float32_adam_updates_in_float32_where_its_hyper_parameters_fit(rng, name, eps,
                                                                              update):
    """float32 Adam / AdamW run in float32 arithmetic as SGD does (above): eps = 1e-50 is
    not a float32 number, so that run goes through double."""
    from fastgrad import _kernels
    X, y, d_out, output = problem(rng, "cross_entropy")
    opt = (name, {"lr": 0.01, "eps": eps, "weight_decay": 0.01})
    runs = [run(X, y, d_out, output, "float32", fused, opt=opt, epochs=3, batch_size=8,
                backend="cython") for fused in (True, False)]
    assert_same_training(*runs, "float32")
    adapter = runs[0][0]._runner_cache["cython.train_epoch"]
    assert _kernels.TRAIN_OPTIMIZERS[adapter.switches[1]] == update


def test_plans_the_cython_fused_runner_declines(rng):
    X, y = rng.standard_normal((24, 3)), np.arange(24) % 2

    class MySGD(optim.SGD):
        pass

    model = fg.MLP([3, 4, 2], backend="cython", seed=0)
    assert model.fit(X, y, epochs=1, optimizer=MySGD(lr=0.1), verbose=0).runner == "layers"
    with pytest.raises(ValueError, match="fused=True but .*MySGD has no fused"):
        model.fit(X, y, epochs=1, optimizer=MySGD(lr=0.1), verbose=0, fused=True)
    # a plan whose parameters are not the trainer's flat layout (the compiled runner
    # addresses every layer through it)
    opt = optim.SGD(lr=0.1)
    opt.bind(model.params)
    layers = train._plan_layers(model)
    T = np.eye(2, dtype=np.float32)[y]
    plan = train.EpochPlan(layers, model.params, model.grads, model.layer_slices[::-1],
                           X.astype(np.float32), T, 8, model.loss_spec, opt, 0.1, None, None,
                           "cython")
    assert "flat buffer" in cython_backend.train_epoch_reason(plan)
    plan.layer_slices = model.layer_slices
    assert cython_backend.train_epoch_reason(plan) is None
    plan.X = np.asfortranarray(plan.X)
    assert "C-contiguous" in cython_backend.train_epoch_reason(plan)


# --- BLAS threads -------------------------------------------------------------------------

def _blas_threads():
    from threadpoolctl import threadpool_info
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                  if i["user_api"] == "blas")


def test_blas_limited_to_one_thread_for_small_batches_and_restored(monkeypatch):
    pytest.importorskip("threadpoolctl", reason="threadpoolctl is an optional dependency")
    import scipy.linalg  # noqa: F401  (so SciPy's OpenBLAS, numba's, is listed)
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 8)), np.arange(64) % 3
    seen = []
    monkeypatch.setattr(train, "machine_busy", lambda: False)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and max(n for _, n in before) == 2, before
        m = fg.MLP([8, 16, 3], backend="numba", seed=0)
        m.fit(X, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[lambda epoch, logs: seen.append(_blas_threads())])
        assert all(n == 1 for threads in seen for _, n in threads) and len(seen) == 2
        assert _blas_threads() == before, "fit restores the previous BLAS limits"
        # above the threshold fit leaves BLAS alone
        big = [np.zeros((256, 256)), np.zeros((256, 10))]
        assert train.batch_matmul_flops([(W,) for W in big], 128) >= \
            train.BLAS_SINGLE_THREAD_FLOPS
        seen.clear()
        Xb = rng.standard_normal((128, 256))
        fg.MLP([256, 256, 3], backend="numba", seed=0).fit(
            Xb, np.arange(128) % 3, epochs=1, batch_size=128, verbose=0,
            callbacks=[lambda epoch, logs: seen.append(_blas_threads())])
        assert seen == [before]
        # ... unless the machine is busy
        monkeypatch.setattr(train, "machine_busy", lambda: True)
        seen.clear()
        fg.MLP([256, 256, 3], backend="numba", seed=0).fit(
            Xb, np.arange(128) % 3, epochs=1, batch_size=128, verbose=0,
            callbacks=[lambda epoch, logs: seen.append(_blas_threads())])
        assert all(n == 1 for _, n in seen[0]) and _blas_threads() == before
    assert train.batch_matmul_flops([(np.zeros((8, 16)),), (np.zeros((16, 3)),)], 16) == \
        6 * 16 * (8 * 16 + 16 * 3)


def test_machine_busy_counts_other_processes_runnable_threads(monkeypatch):
    import os
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(train, "other_runnable_threads", lambda: 1)
    assert train.machine_busy()
    monkeypatch.setattr(train, "other_runnable_threads", lambda: 0)
    # this process's own load (a benchmark that just ran two threads) does not count
    monkeypatch.setattr(os, "getloadavg", lambda: (1.8, 0.0, 0.0))
    assert not train.machine_busy()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(train, "other_runnable_threads", lambda: 6)
    assert not train.machine_busy()
    monkeypatch.setattr(train, "other_runnable_threads", lambda: 7)
    assert train.machine_busy()


def test_machine_busy_falls_back_to_the_load_average(monkeypatch):
    import os
    monkeypatch.setattr(train, "other_runnable_threads", lambda: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.8, 0.0, 0.0))
    assert train.machine_busy()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.0, 0.0))
    assert not train.machine_busy()

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert not train.machine_busy()


def test_running_count_parsing():
    assert train.running_from_loadavg("0.52 0.58 0.59 3/219 4242\n") == 3
    assert train.running_from_loadavg("12.00 9.10 8.00 17/1024 1") == 17


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux's /proc")
def test_own_threads_are_not_counted_as_other_processes():
    """This process's running threads are subtracted, another process's are not. Spinners
    that stay runnable the whole time: a compiled loop without the GIL in a thread of
    ours, a busy Python loop in a child process."""
    import subprocess
    import sys
    import threading

    from numba import njit

    @njit(nogil=True)
    def spin(seconds):  # ~seconds of arithmetic, never blocking
        acc = 0.0
        for i in range(int(seconds * 3e8)):
            acc += i * 1e-9
        return acc

    spin(0.0)  # compile before timing anything
    before = train.other_runnable_threads()
    worker = threading.Thread(target=spin, args=(0.5,), daemon=True)
    worker.start()
    try:
        own = train._own_running_threads()  # this thread and the spinner: both runnable
        during = train.other_runnable_threads(samples=5)
    finally:
        worker.join()
    assert before is not None and before >= 0
    assert own >= 2
    assert during is not None and during <= max(before, 0) + 1  # + 1: another process may wake

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                              "while time.time() - t < 5: pass"])
    try:
        deadline = time.monotonic() + 4
        seen = 0
        while not seen and time.monotonic() < deadline:  # until the child is running
            seen = train.other_runnable_threads()
    finally:
        child.kill()
        child.wait()
    assert seen >= 1


def test_blas_policy_without_threadpoolctl(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    layers = [(np.zeros((4, 4)),)]
    with train.blas_thread_limit(layers, 8):
        pass
    rng = np.random.default_rng(0)
    h = fg.MLP([4, 3], backend="numba", seed=0).fit(
        rng.standard_normal((16, 4)), np.arange(16) % 3, epochs=1, verbose=0)
    assert h.runner == "fused"


# --- batches in parts on the cython runner's threads ---------------------------------------

def _record_launches(monkeypatch) -> list[tuple[int, int]]:
    """(parts, nthreads) of every call the cython runner makes, recorded."""
    from fastgrad import _kernels
    seen = []
    real = _kernels.train_epochs

    def recording(*args):
        seen.append(args[-2:])
        return real(*args)

    monkeypatch.setattr(cython_backend._kernels, "train_epochs", recording)
    return seen


def test_data_parallel_parts_follow_the_size_and_the_threads():
    from fastgrad.backends import _fit_adapter as fa

    def plan(sizes, batch):
        layers = [(np.zeros((a, b)),) for a, b in zip(sizes, sizes[1:])]
        return train.EpochPlan(layers, None, None, [], None, None, batch, None, None, 0.0,
                               None, None, "cython")

    small, digits = plan((64, 64, 10), 32), plan((64, 100, 10), 200)
    assert 6 * 32 * (64 * 64 + 64 * 10) < fa.DATA_PARALLEL_MIN_FLOPS
    assert fa.data_parallel_parts(small, 2) == 1
    assert fa.data_parallel_parts(digits, 2) == 2 and fa.data_parallel_parts(digits, 8) == 8
    assert fa.data_parallel_parts(digits, 1) == 1
    # at least DATA_PARALLEL_MIN_ROWS rows a part
    few = plan((784, 256, 10), 2 * fa.DATA_PARALLEL_MIN_ROWS + 1)
    assert fa.data_parallel_parts(few, 8) == 2


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_cython_fit_in_parts_gives_the_same_model_whatever_the_load(rng, monkeypatch):
    """A net above DATA_PARALLEL_MIN_FLOPS a batch trains in parts of its batches: on two
    threads when the cores are free, on one while another thread runs, of this process
    or of another (the parts' barriers would wait for a core; seen by the real look at
    /proc): the same model, bit for bit, every time."""
    import subprocess
    import sys

    from fastgrad import _kernels
    if _kernels.max_threads() < 2 or (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the runner never splits batches")
    X = rng.standard_normal((300, 64)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    seen = _record_launches(monkeypatch)

    def fitted():
        time.sleep(2 * _kernels._FREE_MAX_AGE)  # the runner looks afresh
        m = fg.MLP([64, 100, 10], backend="cython", dtype="float32", seed=3)
        # (SGD: Adam's m / sqrt(v) would magnify the rounding of near-zero gradients)
        m.fit(X, y, epochs=3, batch_size=100, optimizer="sgd", lr=0.05, momentum=0.9,
              verbose=0, health=False, shuffle=False)
        return m.params.copy()

    # the cores free: forced, since on a shared machine (CI's) something may run at any
    # moment (test_train_threads_free_knows_its_pool_and_sees_other_threads tests the look)
    with monkeypatch.context() as free_cores:
        free_cores.setattr(_kernels, "train_threads_free", lambda nthreads: True)
        free = fitted()
    assert seen and all(parts == 2 and threads == 2 for parts, threads in seen), seen
    seen.clear()
    with spinning(2.0):
        spun = fitted()
    assert seen and all(parts == 2 and threads == 1 for parts, threads in seen), seen
    seen.clear()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                              "while time.time() - t < 20: pass"])
    try:
        deadline = time.monotonic() + 10
        while _kernels.train_threads_free(2) and time.monotonic() < deadline:
            time.sleep(2 * _kernels._FREE_MAX_AGE)
        other = fitted()
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert seen and all(parts == 2 and threads == 1 for parts, threads in seen), seen
    np.testing.assert_array_equal(spun, free)
    np.testing.assert_array_equal(other, free)
    # and trained as whole batches do, to rounding
    monkeypatch.setattr(cython_backend._fit_adapter, "DATA_PARALLEL_MIN_FLOPS", np.inf)
    whole = fitted()
    assert seen[-1] == (1, 1)
    np.testing.assert_allclose(whole, free, rtol=1e-4, atol=1e-6)


def test_fit_keeps_blas_on_one_thread_while_the_runner_splits_batches(rng, monkeypatch):
    """Batches in parts on the runner's threads: BLAS stays on one thread all through fit
    (the diagnostics' forward between epochs included: a multi-threaded call there leaves
    the pool spinning into the next epoch), and is restored after."""
    pytest.importorskip("threadpoolctl", reason="threadpoolctl is an optional dependency")
    from threadpoolctl import threadpool_limits

    from fastgrad import _kernels
    if _kernels.max_threads() < 2:
        pytest.skip("one OpenMP thread: the runner never splits batches")
    monkeypatch.setattr(train, "machine_busy", lambda: False)
    X = rng.standard_normal((256, 256)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        m = fg.MLP([256, 256, 3], backend="cython", dtype="float32", seed=0)
        assert train.batch_matmul_flops([(W,) for W, *_ in train._plan_layers(m)], 128) >= \
            train.BLAS_SINGLE_THREAD_FLOPS  # BLAS would keep two threads otherwise
        m.fit(X, y, epochs=2, batch_size=128, verbose=0,
              callbacks=[lambda epoch, logs: seen.append(_blas_threads())])
        assert len(seen) == 2 and all(n == 1 for threads in seen for _, n in threads), seen
        assert _blas_threads() == before


# --- decay="sklearn" and the end-of-epoch pass --------------------------------------------

@pytest.mark.parametrize("backend", FUSED)
def test_sklearn_decay_formula_in_both_runners(rng, backend):
    """One epoch of plain SGD, batches of 8, 8, 5 rows, in float64: the loss is the data
    loss plus 0.5 wd ||W||^2 / r per batch, and the update adds wd W / r to the weights'
    gradients only; both runners give what this step-by-step replay gives."""
    X, y, d_out, output = problem(rng, "cross_entropy", n=21)
    wd, lr = 0.7, 0.1
    for fused in (True, False):
        model = fg.MLP([X.shape[1], 6, d_out], "tanh", output=output, dtype="float64",
                       backend=backend, seed=3)
        replay = fg.MLP([X.shape[1], 6, d_out], "tanh", output=output, dtype="float64",
                        backend=backend, seed=3)
        replay.fit(X[:2], y[:2], epochs=1, optimizer="sgd", lr=1e-300, verbose=0,
                   classes=np.unique(y))
        replay.params[...] = model.params  # fixed output, same start
        opt = optim.SGD(lr=lr, weight_decay=wd, decay="sklearn")
        h = model.fit(X, y, epochs=1, batch_size=8, optimizer=opt, shuffle=False,
                      verbose=0, health=False, fused=fused)
        assert h.runner == ("fused" if fused else "layers")
        losses = []
        for lo in (0, 8, 16):
            xb, yb = X[lo:lo + 8], y[lo:lo + 8]
            r = len(xb)
            value, g = train.batch_gradient(replay, xb, yb)
            sq = sum(float(np.sum(layer.W ** 2)) for layer in replay.layers)
            losses.append(value + 0.5 * wd * sq / r)
            for s, layer in zip(replay.layer_slices, replay.layers):
                g[s.start:s.start + layer.W.size] += wd / r * layer.W.ravel()
            replay.params -= lr * g
        want = np.dot(losses, [8, 8, 5]) / 21
        np.testing.assert_allclose(h["loss"], [want], rtol=1e-12)
        np.testing.assert_allclose(model.params, replay.params, rtol=1e-12, atol=1e-14)


def test_decay_convention_is_checked():
    with pytest.raises(ValueError, match="decay must be one of"):
        optim.SGD(decay="keras")
    with pytest.raises(ValueError, match="decoupled"):
        optim.AdamW(decay="sklearn")
    from fastgrad.backends import numba_train
    with pytest.raises(ValueError, match="decay must be one of"):
        numba_train.FusedConfig(loss="mse", batch_size=4, decay="torch")
    with pytest.raises(ValueError, match="adamw"):
        numba_train.FusedConfig(loss="mse", batch_size=4, optimizer="adamw",
                                decay="sklearn")
    # decay="sklearn" leaves the decay to the runners: step alone applies none
    opt = optim.SGD(lr=0.1, weight_decay=0.5, decay="sklearn")
    p, g = np.ones(3), np.zeros(3)
    opt.bind(p)
    opt.step(p, g)
    np.testing.assert_array_equal(p, np.ones(3))


@pytest.mark.parametrize("fused", [True, False])
def test_health_false_skips_the_end_of_epoch_pass(rng, fused, monkeypatch):
    X, y, d_out, output = problem(rng, "cross_entropy")
    calls = []
    real = train._diagnose
    monkeypatch.setattr(train, "_diagnose", lambda *a: calls.append(1) or real(*a))
    _, h, _ = run(X, y, d_out, output, "float64", fused, epochs=2, batch_size=8,
                  health=False)
    assert not calls and {"accuracy", "dead_relu", "saturated"}.isdisjoint(h.history)
    assert len(h["loss"]) == 2 and len(h["grad_norm"]) == 2
    # ... unless early stopping monitors the training metric
    _, h, _ = run(X, y, d_out, output, "float64", fused, epochs=2, batch_size=8,
                  health=False, early_stopping={"monitor": "accuracy"})
    assert len(calls) == 2 and len(h["accuracy"]) == 2
    _, h, _ = run(X, y, d_out, output, "float64", fused, epochs=1, batch_size=8)
    assert {"accuracy", "dead_relu", "saturated"} <= set(h.history)


def test_shuffle_callable_gives_each_epoch_order(rng):
    X, y, d_out, output = problem(rng, "cross_entropy")
    orders = [rng.permutation(len(X)) for _ in range(3)]
    a = run(X, y, d_out, output, "float64", True, epochs=3, batch_size=8,
            shuffle=lambda epoch: orders[epoch])
    # the same epochs by hand: one unshuffled fit per epoch on the reordered rows
    model = fg.MLP([X.shape[1], 6, 5, d_out], "tanh", output=output, dtype="float64",
                   backend="numba", seed=7)
    opt = optim.SGD(lr=0.05)
    for order in orders:
        model.fit(X[order], y[order], epochs=1, batch_size=8, optimizer=opt,
                  shuffle=False, verbose=0, classes=np.unique(y))
    assert_close(a[0].params, model.params, "float64", "weights")
    with pytest.raises(ValueError, match="permutation of range"):
        run(X, y, d_out, output, "float64", True, epochs=1, shuffle=lambda e: orders[0][:5])


# --- blocks of epochs: fit with nothing between epochs runs them in one call each ---------

def _count_block_calls(monkeypatch, epochs_per_block, n, backend="numba"):
    """Make fit's blocks `epochs_per_block` epochs long (for n rows) and record the size of
    every block call."""
    calls = []
    runner = FUSED[backend].train_epoch
    real = runner.train_epochs

    def counting(plan, orders):
        calls.append(len(orders))
        return real(plan, orders)

    monkeypatch.setattr(runner, "train_epochs", counting)
    monkeypatch.setattr(train, "_BLOCK_ELEMENTS", epochs_per_block * n)
    return calls


def _optimizer_arrays(opt):
    return [a.copy() for a in numba_cpu._optimizer_state(opt)[1]]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("opt", ["adam-wd", "sgd-nesterov-sklearn-l2"])
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "cross_entropy"])
def test_blocks_of_epochs_train_exactly_as_epoch_by_epoch(rng, monkeypatch, loss, opt, shuffle,
                                                          dtype, backend):
    X, y, d_out, output = problem(rng, loss)
    calls = _count_block_calls(monkeypatch, 3, len(X), backend)
    runs = []
    for callbacks in (None, [lambda epoch, logs: None]):  # a callback: epoch by epoch
        model, history, o = run(X, y, d_out, output, dtype, True, epochs=9, batch_size=8,
                                shuffle=shuffle, health=False, callbacks=callbacks,
                                opt=OPTIMIZERS[opt], backend=backend)
        runs.append((model, history, o, _optimizer_arrays(o)))
    # the first epoch picks the runner; then blocks of 3, 3 and the 2 left; with a
    # callback, shuffled epochs after the first run as blocks of one (the runner gathers
    # the rows in the epoch's order), the others epoch by epoch
    assert calls == [3, 3, 2] + ([1] * 8 if shuffle else [])
    (ma, ha, oa, sa), (mb, hb, ob, sb) = runs
    assert ha.epoch == hb.epoch == list(range(9))
    assert ha.history == hb.history  # loss, lr, grad_norm: bit for bit
    np.testing.assert_array_equal(ma.params, mb.params)
    for a, b in zip(sa, sb):
        np.testing.assert_array_equal(a, b)
    assert oa.steps == ob.steps == 9 * 5
    # the model's random stream drew the same permutations
    assert ma._rng.bit_generator.state == mb._rng.bit_generator.state


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_block_that_meets_a_non_finite_batch_is_replayed_to_report_it(rng, monkeypatch,
                                                                         dtype, backend):
    X = rng.standard_normal((32, 3))
    y = 10 * rng.standard_normal(32)
    calls = _count_block_calls(monkeypatch, 4, len(X), backend)
    outcomes = []
    for callbacks in (None, [lambda epoch, logs: None]):
        m = fg.MLP([3, 16, 16, 1], "tanh", seed=0, dtype=dtype, backend=backend)
        with pytest.raises(fg.NonFiniteError) as info:
            m.fit(X, y, epochs=300, batch_size=4, optimizer="sgd", lr=1.0, verbose=0,
                  health=False, callbacks=callbacks)
        e = info.value
        outcomes.append(((e.epoch, e.batch, e.layer, e.what, str(e)), m.params.copy(),
                         m.history_.epoch, m.history_.history, m._rng.bit_generator.state))
    (err_a, params_a, epochs_a, hist_a, rng_a), (err_b, params_b, epochs_b, hist_b, rng_b) = \
        outcomes
    assert rng_a == rng_b, "the model's random stream drew as many orders as epoch by epoch"
    assert err_a[0] >= 1, "the test needs a failure after the first epoch"
    assert calls, "the test needs blocks to run"
    assert err_a == err_b
    assert np.all(np.isfinite(params_a)), "the model keeps its last finite weights"
    np.testing.assert_array_equal(params_a, params_b)
    assert epochs_a == epochs_b and hist_a == hist_b


@pytest.mark.parametrize("backend", FUSED)
def test_fit_uses_blocks_only_when_nothing_runs_between_epochs(rng, monkeypatch, backend):
    X, y, d_out, output = problem(rng, "cross_entropy")
    calls = _count_block_calls(monkeypatch, 2, len(X), backend)
    quiet = dict(epochs=3, batch_size=8, health=False, backend=backend)
    run(X, y, d_out, output, "float64", True, **quiet)
    assert calls == [2]
    for extra in ({"health": True}, {"callbacks": [lambda e, logs: None]},
                  {"validation_split": 0.25}, {"early_stopping": 5},
                  {"lr_schedule": lambda epoch, lr: lr}):
        calls.clear()
        run(X, y, d_out, output, "float64", True, **{**quiet, **extra})
        # (shuffled epochs run as blocks of one: the runner gathers the rows itself)
        assert all(count == 1 for count in calls), (extra, calls)
    calls.clear()  # a caller's own row orders: drawn a block ahead
    run(X, y, d_out, output, "float64", True, **quiet, shuffle=lambda e: np.arange(len(X)))
    assert calls == [2]


class QuietFor:
    """A callback promising `quiet` epochs at a time (a plain function promises none),
    recording what it is called with."""

    def __init__(self, quiet):
        self.quiet, self.seen, self.asked = quiet, [], []

    def quiet_epochs(self, epoch):
        self.asked.append(epoch)
        return self.quiet

    def on_epoch_end(self, epoch, logs):
        self.seen.append((epoch, logs))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("quiet", [0, 2, 4, np.inf])
def test_callbacks_promising_quiet_epochs_get_blocks_of_them(rng, monkeypatch, quiet,
                                                             backend):
    """fit runs as many epochs in one block as every callback promises quiet, then calls
    each callback once per epoch, in order, with the logs epoch-by-epoch training gives;
    the row orders of a callable shuffle are drawn in epoch order; the training is the
    same bit for bit."""
    X, y, d_out, output = problem(rng, "cross_entropy")
    calls = _count_block_calls(monkeypatch, 8, len(X), backend)
    runs = []
    promising = QuietFor(quiet)
    for cb in (promising, lambda epoch, logs: None):
        orders, drawn = np.random.default_rng(5), []

        def shuffle(epoch, orders=orders, drawn=drawn):
            drawn.append(epoch)
            return orders.permutation(len(X))

        calls.clear()
        recorder = QuietFor(np.inf)  # never limits the block, records the calls
        model, history, _ = run(X, y, d_out, output, "float32", True, epochs=9,
                                batch_size=8, health=False, shuffle=shuffle,
                                callbacks=[cb, recorder], backend=backend)
        runs.append((model.params.copy(), history.history, recorder.seen, list(calls)))
        assert drawn == list(range(9))
    (pa, ha, seen_a, calls_a), (pb, hb, seen_b, calls_b) = runs
    np.testing.assert_array_equal(pa, pb)
    assert ha == hb and seen_a == seen_b
    assert [e for e, _ in seen_a] == list(range(9))
    # after the runner-picking first epoch: blocks as long as promised (and 8 at most)
    want = {0: [1] * 8, 2: [2, 2, 2, 2], 4: [4, 4], np.inf: [8]}[quiet]
    assert calls_a == want and calls_b == [1] * 8
    # asked at the start of each block (the epochs after the first), never inside one
    assert promising.asked == list(np.cumsum([1] + want[:-1]))


@pytest.mark.parametrize("promised", [None, True, "3", [2]])
def test_quiet_epochs_must_be_a_number(rng, promised):
    """A promise that is not a number of epochs is a TypeError naming the callback, not a
    comparison error from inside fit."""
    X, y, d_out, output = problem(rng, "cross_entropy")
    with pytest.raises(TypeError, match=r"QuietFor.quiet_epochs\(1\) must return a number"):
        run(X, y, d_out, output, "float64", True, epochs=3, batch_size=8, health=False,
            callbacks=[QuietFor(promised)])


@pytest.mark.parametrize("backend", FUSED)
def test_a_callback_stopping_inside_a_block_stops_fit_there(rng, monkeypatch, backend):
    """A broken promise (stopping inside its quiet epochs): fit stops logging and calling
    back at that epoch; the block's later epochs have trained."""
    X, y, d_out, output = problem(rng, "cross_entropy")
    _count_block_calls(monkeypatch, 8, len(X), backend)

    class StopAt3(QuietFor):
        def on_epoch_end(self, epoch, logs):
            super().on_epoch_end(epoch, logs)
            return epoch == 3

    cb = StopAt3(np.inf)
    _, history, opt = run(X, y, d_out, output, "float64", True, epochs=9, batch_size=8,
                          health=False, callbacks=[cb], backend=backend)
    assert history.epoch == [0, 1, 2, 3] and history.stopped_early
    assert [e for e, _ in cb.seen] == [0, 1, 2, 3]
    assert opt.steps == 9 * 5  # the block of epochs 1-8 ran whole


_HOSTILE_BLOCKS = r"""
import sys
import numpy as np
import fastgrad as fg
from fastgrad import optim, train
from fastgrad.backends import cython as cython_backend, numba_cpu

module = {"numba": numba_cpu, "cython": cython_backend}[sys.argv[1]]
rng = np.random.default_rng(0)
X = rng.standard_normal((20, 3))
y = rng.integers(0, 2, 20)
model = fg.MLP([3, 4, 2], "tanh", backend=sys.argv[1], seed=0)
opt = optim.make_optimizer("sgd", lr=0.1)
opt.bind(model.params, sys.argv[1])
Xc = model._check_X(X)
T, _ = train.prepare_targets(model, y, len(Xc))


def plan(records=5, cols=2, rows=20):
    p = train.EpochPlan(train._plan_layers(model), model.params, model.grads,
                        model.layer_slices, Xc, T[:rows], 4, model.loss_spec, opt, 0.1, None,
                        None, sys.argv[1], cache={})
    p.batch_loss, p.grad_sq = np.zeros(records), np.zeros((records, cols))
    return p


cases = [
    ("block: row indices out of range", lambda: module.train_epochs(
        plan(), np.full((1, 20), 10**12, np.int64))),
    ("block: orders of another length", lambda: module.train_epochs(
        plan(), np.zeros((1, 7), np.int64))),
    ("block: records for 1 epoch of 50", lambda: module.train_epochs(
        plan(), np.zeros((50, 0), np.int64))),
    ("block: grad_sq of 1 column", lambda: module.train_epochs(
        plan(cols=1), np.zeros((1, 0), np.int64))),
    ("block: T of 8 rows", lambda: module.train_epochs(plan(rows=8), np.zeros((1, 0), np.int64))),
    ("epoch: records for 1 batch of 5", lambda: module.train_epoch(plan(records=1))),
]
before = model.params.copy()
for what, call in cases:
    try:
        call()
        print(what, "-> ran")
    except ValueError:
        print(what, "-> ValueError")
assert np.array_equal(model.params, before)
"""


@pytest.mark.parametrize("backend", FUSED)
def test_block_and_epoch_runners_check_what_their_kernel_indexes(backend, tmp_path):
    """A block's row orders, the batch records and the targets' rows, given wrong to the
    runners directly, raise ValueError before training: numba's kernel indexes them without
    bounds checks (it read and wrote out of bounds: a crash, hence a subprocess)."""
    import subprocess
    import sys

    from conftest import subprocess_env
    # cwd away from the checkout, whose fastgrad/ would shadow the installed package
    run = subprocess.run([sys.executable, "-c", _HOSTILE_BLOCKS, backend], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr[-3000:])
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.endswith("-> ValueError") for line in lines), lines


@pytest.mark.parametrize("backend", FUSED)
def test_sklearn_penalty_of_huge_float32_weights_is_the_same(rng, backend):
    """float32 weights whose squares sum past float32's range (the forward stays finite:
    tanh saturates): the fused runners sum the penalty in double and train on; the layer
    runner summed it in float32, got inf and stopped with a NonFiniteError."""
    X = rng.standard_normal((8, 2))
    y = np.arange(8) % 2
    runs = []
    for fused in (True, False):
        model = fg.MLP([2, 3, 2], "tanh", dtype="float32", backend=backend, seed=0)
        model.layers[0].W[...] = 1e19  # sum of squares 6e38 > float32's max 3.4e38
        opt = optim.make_optimizer("sgd", lr=0.1, weight_decay=0.3, decay="sklearn")
        history = model.fit(X, y, epochs=2, batch_size=4, optimizer=opt, verbose=0,
                            health=False, fused=fused, classes=[0, 1])
        runs.append((model, history, opt))
    assert np.isfinite(runs[1][1]["loss"]).all() and runs[1][1]["loss"][0] > 1e37
    assert_same_training(runs[0], runs[1], "float32")


@pytest.mark.parametrize("dense", [False, True], ids=["labels", "one-hot"])
def test_numba_fused_float32_cross_entropy_keeps_the_small_gradients(rng, dense):
    # Confident rows: the max's exp(0) = 1 beside nine terms of ~e^-17, each under half a
    # float32 ulp of 1. Summed in float32, s rounded to 1 and the label's gradient
    # (1/s - 1)/r to 0, where it is -(the small terms)/(s r). Each element of g, the loss
    # and db must come out close to itself: within a few ulp, plus the float32 rounding of
    # z - m that exp magnifies by |z - m|. (In float64 every backend, like the reference
    # and PyTorch, forms softmax - t and keeps no terms under 2^-53 of s.)
    from fastgrad.backends import numba_train
    r, k = 5, 10
    z = rng.uniform(-0.5, 0.5, (r, k))
    y = rng.integers(0, k, r)
    z[np.arange(r), y] += 17.0
    z[0] = 0.0  # one unsure row besides, all classes equal
    z, bias = z.astype(np.float32), np.zeros(k, np.float32)
    z64 = z.astype(np.float64)
    d = z64 - z64.max(axis=1, keepdims=True)
    e = np.exp(d)
    s = e.sum(axis=1, keepdims=True)
    t = np.eye(k)[y]
    t[0] = 0.0
    t[0, y[0]] = 1.0
    small = np.where(t == 1, 0.0, e).sum(axis=1, keepdims=True)  # s - 1, no rounding
    g_ref = np.where(t == 1, -small / s, e / s) / r
    g_ref[0] = (e[0] / s[0] - t[0]) / r
    loss_ref = (np.log1p(small[1:, 0]).sum() + np.log(k)) / r
    g = np.empty((r, k), np.float32)
    db = np.empty(k, np.float32)
    labels, targets = ((np.zeros(0, np.int64), t.astype(np.float32)) if dense
                       else (y.astype(np.int64), np.zeros((0, 0), np.float32)))
    loss = numba_train._output_layer(z, bias, g, db, 2, labels, targets,
                                     np.arange(r, dtype=np.int64), False, 0)
    eps = float(np.finfo(np.float32).eps)
    rows_worst = (4 + np.abs(d).max(axis=1, keepdims=True)) * eps
    assert np.all(np.abs(g - g_ref) <= rows_worst * np.abs(g_ref)), np.abs(g / g_ref - 1)
    np.testing.assert_allclose(loss, loss_ref, rtol=4 * eps, atol=0)
    # db sums the rows in float32: the unsure row's terms dominate each column's rounding
    assert np.all(np.abs(db - g_ref.sum(axis=0)) <= 32 * eps * np.abs(g_ref).sum(axis=0))
