"""The MLP trainer: model construction, gradients, fit, diagnostics, bad input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from conftest import BACKENDS

import fastgrad as fg
from fastgrad import train


def blobs(rng, n=60, d=4, classes=3, labels=None, spread=3.0):
    """Gaussian blobs (unit variance) around centers at `spread` on distinct axes
    (classes <= d): X (n, d) float64, y class labels. With spread=3 the centers are 4.2
    apart and ~2% of points fall past a midpoint."""
    centers = np.eye(classes, d) * spread
    idx = np.arange(n) % classes
    X = centers[idx] + rng.standard_normal((n, d))
    y = idx if labels is None else np.asarray(labels)[idx]
    return X, y


# --- construction --------------------------------------------------------------------

@pytest.mark.parametrize("activation, scheme", [("relu", "he"), ("gelu", "he"),
                                                ("tanh", "glorot"), ("sigmoid", "glorot"),
                                                ("selu", "lecun")])
def test_init_by_activation(activation, scheme):
    assert fg.nn.init_scheme(activation) == scheme
    m = fg.MLP([400, 300, 1], activation, dtype="float64", seed=1)
    W = m.layers[0].W
    if scheme == "glorot":
        limit = np.sqrt(6 / 700)
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit
    else:
        want = np.sqrt((2.0 if scheme == "he" else 1.0) / 400)
        assert W.std() == pytest.approx(want, rel=0.02)
    assert np.all(m.layers[0].b == 0)


def test_parameters_live_in_one_flat_buffer():
    m = fg.MLP([3, 5, 2], seed=0)
    assert m.params.size == 3 * 5 + 5 + 5 * 2 + 2 and m.params.dtype == np.float32
    m.layers[1].b[...] = 7
    assert np.all(m.params[m.layer_slices[1]][-2:] == 7)
    assert all(np.shares_memory(W, m.params) for W in m.weights)


def test_construction_errors():
    with pytest.raises(ValueError, match="layer 1 has d_in=4 but layer 0 has d_out=5"):
        fg.Sequential([fg.Dense(3, 5), fg.Dense(4, 2)])
    with pytest.raises(ValueError, match="output activation and must be one of"):
        fg.MLP([3, 2], output="relu")
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        fg.MLP([3, 4, 2], "relux")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        fg.MLP([3, 2], dtype="float16")
    with pytest.raises(ValueError, match="at least"):
        fg.MLP([3])
    with pytest.raises(TypeError, match="leaky_relu takes: alpha"):
        fg.Dense(3, 2, "leaky_relu", beta=1)


# --- gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output, make_y", [
    ("identity", lambda rng, n: rng.standard_normal((n, 2))),
    ("sigmoid", lambda rng, n: np.arange(n) % 2),
    ("softmax", lambda rng, n: np.arange(n) % 2),
])
def test_model_gradient_matches_central_differences(output, make_y, backend, rng):
    """The whole network's backward (the training path) against finite differences of
    its loss with respect to every parameter."""
    d_out = 2 if output in ("identity", "softmax") else 1
    model = fg.Sequential([fg.Dense(3, 4, "tanh"), fg.Dense(4, 3, "gelu"),
                           fg.Dense(3, d_out, output)], dtype="float64", backend=backend,
                          seed=int(rng.integers(1 << 31)))
    X = rng.standard_normal((5, 3))
    y = make_y(rng, 5)
    T, _ = train.prepare_targets(model, y, 5)
    _, grads = train.batch_gradient(model, X, y)
    base = model.params.copy()

    def f(p):
        model.params[...] = p
        return np.array(fg.loss(model.loss_spec, model.forward(X), T, backend="numpy"))

    assert fg.gradcheck(f, [base], lambda g, p: (g * grads,))
    model.params[...] = base


# --- task inference and targets -----------------------------------------------------------

@pytest.mark.parametrize("y, d_out, task, output", [
    (np.linspace(0, 1, 12), 1, "regression", "identity"),
    (np.arange(12.0), 1, "regression", "identity"),  # 12 integer values, one output
    (np.arange(12) % 2, 1, "binary", "sigmoid"),
    (np.arange(12) % 2, 2, "binary", "softmax"),
    (np.arange(12) % 3, 3, "multiclass", "softmax"),
    (np.arange(12.0) % 3, 3, "multiclass", "softmax"),
    (np.array(["b", "a", "c"] * 4), 3, "multiclass", "softmax"),
])
def test_task_inference(y, d_out, task, output, rng):
    X = rng.standard_normal((12, 2))
    m = fg.MLP([2, 4, d_out], seed=0)
    m.fit(X, y, epochs=1, verbose=0)
    assert (m.task, m.output) == (task, output)
    if task != "regression":
        assert m.classes_.tolist() == sorted(set(y.tolist()))
        assert set(m.predict(X).tolist()) <= set(y.tolist())


def test_output_width_must_fit_the_classes(rng):
    X = rng.standard_normal((12, 2))
    with pytest.raises(ValueError, match="y has 3 classes but the output layer has d_out=2"):
        fg.MLP([2, 2], seed=0).fit(X, np.arange(12) % 3, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="single class"):
        fg.MLP([2, 1], seed=0).fit(X, np.zeros(12, int), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y has 2 output"):
        fg.MLP([2, 1], output="identity").fit(X, np.zeros((12, 2)), epochs=1, verbose=0)


# --- fit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_fit_learns_and_is_reproducible(optimizer, backend, rng):
    # spread 4: centers 5.7 apart, so >= 90% accuracy does not hang on the random draw
    # (at spread 3 about one draw in a few hundred scored 0.87).
    X, y = blobs(rng, labels=["x", "y", "z"], spread=4.0)
    kw = {"epochs": 15, "batch_size": 8, "optimizer": optimizer, "verbose": 0,
          "lr": 0.05 if optimizer == "sgd" else 0.01}
    runs = []
    for _ in range(2):
        m = fg.MLP([4, 16, 3], seed=123, backend=backend)
        h = m.fit(X, y, validation_split=0.2, **kw)
        runs.append((m, h))
    (m1, h1), (m2, h2) = runs
    assert np.array_equal(m1.params, m2.params), "same seed must give bit-identical runs"
    assert h1.history["loss"] == h2.history["loss"]
    assert h1.history["loss"][-1] < h1.history["loss"][0]
    assert m1.score(X, y) >= 0.9
    for key in ("loss", "val_loss", "accuracy", "val_accuracy", "lr", "grad_norm",
                "dead_relu", "saturated"):
        assert len(h1.history[key]) == 15, key
    assert len(h1.history["grad_norm"][0]) == 2
    assert m1.history_ is h1
    other = fg.MLP([4, 16, 3], seed=124, backend=backend)
    other.fit(X, y, validation_split=0.2, **kw)
    assert not np.array_equal(other.params, m1.params)


def test_regression_fit_predict_and_score(rng):
    X = rng.standard_normal((80, 3))
    y = 100 + X @ np.array([3.0, -2.0, 1.0]) + 0.1 * rng.standard_normal(80)
    m = fg.MLP([3, 16, 1], dtype="float64", seed=0)
    h = m.fit(X, y, epochs=60, batch_size=16, lr=0.01, verbose=0)
    pred = m.predict(X)
    assert pred.shape == (80,) and m.score(X, y) > 0.95
    assert "r2" in h.history and h.history["r2"][-1] == pytest.approx(m.score(X, y), abs=1e-9)
    with pytest.raises(AttributeError, match="predict_proba is for classifiers"):
        m.predict_proba(X)
    Y2 = np.stack([y, -y], axis=1)
    m2 = fg.MLP([3, 8, 2], seed=0)
    m2.fit(X, Y2, epochs=2, verbose=0)
    assert m2.predict(X).shape == (80, 2)


def test_predict_proba(rng):
    X, y = blobs(rng, classes=2, labels=[False, True])
    m = fg.MLP([4, 8, 1], seed=0)
    m.fit(X, y, epochs=5, verbose=0)
    p = m.predict_proba(X)
    assert p.shape == (60, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-6)
    assert np.array_equal(m.predict(X), m.classes_[np.argmax(p, axis=1)])
    X3, y3 = blobs(rng)
    m3 = fg.MLP([4, 8, 3], seed=0)
    m3.fit(X3, y3, epochs=2, verbose=0)
    assert np.allclose(m3.predict_proba(X3).sum(axis=1), 1, atol=1e-6)


def test_early_stopping_restores_best_weights(rng):
    X, y = blobs(rng, n=90, spread=0.3)  # overlapping: validation loss turns up
    m = fg.MLP([4, 64, 3], seed=0)
    seen = {}

    def remember(epoch, logs):
        seen[epoch] = (logs["val_loss"], m.params.copy())

    h = m.fit(X, y, epochs=200, lr=0.05, batch_size=8, validation_split=0.3,
              early_stopping={"patience": 3}, callbacks=[remember], verbose=0)
    assert h.stopped_early and len(h.epoch) < 200
    best = int(np.argmin(h.history["val_loss"]))
    assert h.best_epoch == best
    assert np.array_equal(m.params, seen[best][1])


def test_callbacks_can_stop_and_schedules_apply(rng):
    X, y = blobs(rng)

    class Stopper:
        def on_epoch_end(self, epoch, logs):
            return epoch == 2

    h = fg.MLP([4, 3], seed=0).fit(X, y, epochs=10, callbacks=[Stopper()], verbose=0,
                                   lr=0.1, lr_schedule=fg.StepLR(1, 0.5))
    assert h.epoch == [0, 1, 2] and h.history["lr"] == [0.1, 0.05, 0.025]


def test_validation_data_and_continued_training(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 3], seed=0)
    opt = fg.SGD(lr=0.05, momentum=0.9)
    h = m.fit(X, y, epochs=2, batch_size=8, optimizer=opt,
              validation_data=(X[:10], y[:10]), verbose=0)
    assert len(h.history["val_accuracy"]) == 2
    m.fit(X, y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
    assert opt.steps == 3 * 8  # 60 rows / 8 per batch = 8 batches, state carried over
    with pytest.raises(ValueError, match="not both"):
        m.fit(X, y, validation_split=0.2, validation_data=(X, y), verbose=0)


def test_progress_output(rng, capsys):
    X, y = blobs(rng)
    fg.MLP([4, 3], seed=0).fit(X, y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "loss=" in out
    fg.MLP([4, 3], seed=0).fit(X, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


# --- gradient health -------------------------------------------------------------------

def test_dead_relu_and_vanishing_gradient_warning(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 8, 3], seed=0)
    m.layers[0].b[...] = -1000  # every first-layer unit is off on every input: dead
    with pytest.warns(fg.GradientHealthWarning) as caught:
        h = m.fit(X, y, epochs=4, verbose=0)
    messages = [str(w.message) for w in caught]
    assert any(msg.startswith("vanishing gradients in layer 0 (Dense(4, 8") for msg in messages)
    assert h.history["dead_relu"][-1][0] == 1.0
    assert h.history["dead_relu"][-1][2] is None  # the output layer
    assert h.history["grad_norm"][-1][0] == 0.0


def test_saturation_and_exploding_warning(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 16, 3], "tanh", seed=0)
    m.layers[0].W[...] *= 1000
    with pytest.warns(fg.GradientHealthWarning) as caught:
        h = m.fit(X, y, epochs=1, verbose=0, health=fg.GradientHealth(explode=1e-3))
    assert any("exploding gradients in layer 1" in str(w.message) for w in caught)
    assert h.history["saturated"][0][0] > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fg.MLP([4, 16, 3], seed=0).fit(X, y, epochs=3, verbose=0)


def test_clipping(rng):
    g = np.array([3.0, -4.0, 0.5])
    train.clip_gradients(g, 1.0, None)
    assert g.tolist() == [1.0, -1.0, 0.5]
    g = np.array([3.0, -4.0])
    train.clip_gradients(g, None, 1.0)
    np.testing.assert_allclose(g, [0.6, -0.8])
    X = rng.standard_normal((16, 3))
    y = 1000 * rng.standard_normal(16)
    m = fg.MLP([3, 4, 1], seed=0, dtype="float64")
    m.fit(X, y, epochs=1, verbose=0)  # the first fit also sets the output bias to mean(y)
    before = m.params.copy()
    m.fit(X, y, epochs=1, batch_size=16, optimizer="sgd", lr=1.0, clip_norm=0.01, verbose=0)
    assert np.linalg.norm(m.params - before) <= 0.01 * (1 + 1e-9)


def test_non_finite_loss_stops_training_with_finite_weights(rng):
    X = rng.standard_normal((32, 3))
    y = 1e3 * rng.standard_normal(32)
    m = fg.MLP([3, 16, 16, 1], seed=0)
    with pytest.raises(fg.NonFiniteError, match=r"epoch \d+, batch \d+") as info:
        m.fit(X, y, epochs=50, batch_size=4, optimizer="sgd", lr=1e6, verbose=0)
    err = info.value
    assert err.what in ("loss", "gradient") and err.epoch >= 0 and err.batch >= 0
    assert np.all(np.isfinite(m.params)), "the model keeps its last finite weights"


def test_nan_weights_name_the_layer(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 8, 3], seed=0)
    m.fit(X, y, epochs=1, verbose=0)
    m.layers[1].W[0, 0] = np.nan
    with pytest.raises(fg.NonFiniteError, match=r"epoch 0, batch 0 .*layer 1") as info:
        m.fit(X, y, epochs=1, verbose=0)
    assert info.value.layer == 1 and info.value.what == "loss"


# --- bad input -------------------------------------------------------------------------------

def test_bad_input(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 3], seed=0)
    Xbad = X.copy()
    Xbad[[3, 17], 1] = [np.nan, np.inf]
    with pytest.raises(ValueError, match=r"X contains NaN or infinity in 2 row\(s\): 3, 17"):
        m.fit(Xbad, y, verbose=0)
    yr = rng.standard_normal(60)
    yr[5] = np.inf
    with pytest.raises(ValueError, match=r"y contains NaN or infinity in 1 row\(s\): 5"):
        fg.MLP([4, 1], seed=0).fit(X, yr, verbose=0)
    with pytest.raises(ValueError, match="X is empty"):
        m.fit(X[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match="X must be 2-D"):
        m.fit(X[:, 0], y, verbose=0)
    with pytest.raises(RuntimeError, match="has not been fit"):
        m.predict(X)
    m.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="X has 3 features, but the model expects 4"):
        m.predict(X[:, :3])
    with pytest.raises(ValueError, match=r"labels not seen during fit: \[7\]"):
        m.score(X, np.where(np.arange(60) == 0, 7, y))
    with pytest.raises(ValueError, match=r"y has shape \(59,\), expected \(60,\)"):
        m.fit(X, y[:-1], verbose=0)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        m.fit(X, y, epochs=0, verbose=0)


def test_integer_X_is_converted(rng):
    X, y = blobs(rng)
    Xi = np.round(X * 10).astype(np.int64)
    m = fg.MLP([4, 8, 3], seed=0)
    m.fit(Xi, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(m.predict(Xi), m.predict(Xi.astype(np.float64)))
    assert m.forward(Xi).dtype == np.float32


# --- the fused-epoch hook ------------------------------------------------------------------

def test_fit_takes_a_backends_fused_epoch_when_it_supports_the_plan(rng, monkeypatch):
    backend = fg.get_backend("numba")
    calls = []

    def fused(plan):
        calls.append(plan.n_batches)
        return train.train_epoch_layers(plan)

    X, y = blobs(rng)
    monkeypatch.setattr(backend, "train_epoch", fused, raising=False)
    monkeypatch.setattr(backend, "supports_train_epoch", lambda plan: True, raising=False)
    fg.MLP([4, 3], backend="numba", seed=0).fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert calls == [4, 4]
    monkeypatch.setattr(backend, "supports_train_epoch", lambda plan: False)
    fg.MLP([4, 3], backend="numba", seed=0).fit(X, y, epochs=2, verbose=0)
    assert calls == [4, 4]


_INTERFACE = ("activation_forward", "activation_backward", "linear_forward", "linear_backward",
              "loss_forward", "loss_backward", "sgd_update", "adam_update", "rmsprop_update",
              "train_epoch")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("task, optimizer, params", [
    ("multiclass", "adam", {}),
    ("binary", "sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("regression", "rmsprop", {"momentum": 0.5, "weight_decay": 1e-3}),
    ("multiclass", "adamw", {"weight_decay": 0.05}),
])
@pytest.mark.parametrize("fused", [None, False], ids=["fused", "layers"])
def test_cython_fit_uses_only_cython_kernels_and_matches_numpy(task, optimizer, params,
                                                                dtype, rtol, fused, monkeypatch):
    """MLP(backend="cython").fit, with its fused epoch runner (the default) or layer by
    layer, runs on the compiled kernels alone (every other backend's kernels raise while it
    runs) and lands where the numpy reference's fit from the same seed does: each of the
    three losses and four optimizers in the loop, float64 to ~1e-12 and float32 to a few
    float32 ulps after 40 steps."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((60, 4))
    y = {"multiclass": (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5),
         "binary": (X[:, 0] - X[:, 3] > 0).astype(int),
         "regression": X @ np.array([1.0, -2.0, 0.5, 0.0]) + 3}[task]
    kw = {"epochs": 5, "batch_size": 8, "optimizer": optimizer, "lr": 0.01, "verbose": 0,
          "validation_split": 0.2, **params}
    d_out = 3 if task == "multiclass" else 1

    def fit(backend):
        m = fg.MLP([4, 8, 8, d_out], activation="tanh", dtype=dtype, seed=7,
                   backend=backend)
        return m, m.fit(X, y, **kw, fused=fused if backend == "cython" else None)

    want, want_h = fit("numpy")

    def forbidden(*args, **kwargs):
        raise AssertionError("a cython fit called another backend's kernel")

    for other in ("numpy", "numba"):
        module = fg.get_backend(other)
        for name in _INTERFACE:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)
    got, got_h = fit("cython")
    monkeypatch.undo()
    assert got_h.runner == ("layers" if fused is False else "fused")
    assert got.params.dtype == dtype
    np.testing.assert_allclose(got.params, want.params, rtol=rtol,
                               atol=rtol * np.abs(want.params).max())
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(got_h.history[key], want_h.history[key], rtol=rtol,
                                   err_msg=key)
    assert got_h.history["loss"][-1] < got_h.history["loss"][0]


def test_pickle_keeps_layers_as_views_of_the_flat_buffer(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 3], seed=0)
    m.fit(X, y, epochs=2, verbose=0)
    clone = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(clone.predict(X), m.predict(X))
    assert all(np.shares_memory(W, clone.params) for W in clone.weights)
    clone.fit(X, y, epochs=1, verbose=0)  # training moves the layers' weights
    assert not np.array_equal(clone.layers[0].W, m.layers[0].W)
    assert np.array_equal(clone.params, np.concatenate(
        [np.concatenate([L.W.ravel(), L.b]) for L in clone.layers]))


def test_tqdm_progress_bar(rng, capsys):
    pytest.importorskip("tqdm", reason="tqdm is optional (the train extra)")
    X, y = blobs(rng)
    fg.MLP([4, 3], seed=0).fit(X, y, epochs=3, verbose=1)
    captured = capsys.readouterr()
    assert "3/3" in captured.err and captured.out == ""


def test_get_kernel_falls_back_for_backends_without_trainer_kernels(monkeypatch):
    backend = fg.get_backend("numba")
    monkeypatch.delattr(backend, "loss_forward")
    kernel = fg.backends.get_kernel("loss_forward", "numba")
    # Served by the fastest available backend that has it: cython (compiled loss kernels).
    assert kernel is fg.get_backend("cython").loss_forward
    with pytest.raises(AttributeError, match="provides the kernel 'no_such_kernel'"):
        fg.backends.get_kernel("no_such_kernel")


def test_early_stopping_on_a_rising_metric_and_on_training_loss(rng):
    X, y = blobs(rng, n=90)
    m = fg.MLP([4, 16, 3], seed=0)
    h = m.fit(X, y, epochs=100, lr=0.05, validation_split=0.3, verbose=0,
              early_stopping=fg.EarlyStopping(patience=2, monitor="val_accuracy",
                                              restore_best_weights=False))
    best = h.best_epoch
    assert h.stopped_early and h.history["val_accuracy"][best] == max(h.history["val_accuracy"])
    assert len(h.epoch) == best + 3
    h2 = fg.MLP([4, 3], seed=0).fit(X, y, epochs=500, lr=1e-4, verbose=0,
                                    early_stopping={"patience": 2, "min_delta": 1.0})
    assert h2.stopped_early and len(h2.epoch) == 3  # nothing improves by 1.0
    with pytest.raises(ValueError, match="no validation data"):
        m.fit(X, y, early_stopping={"monitor": "val_loss"}, verbose=0)
    with pytest.raises(ValueError, match="does not log"):
        m.fit(X, y, early_stopping={"monitor": "r2"}, verbose=0)


def test_classes_given_up_front_and_no_shuffle(rng):
    X, y = blobs(rng)
    m = fg.MLP([4, 8, 4], seed=0)
    first = y < 2  # this batch holds only labels 0 and 1
    m.fit(X[first], y[first], epochs=1, classes=[0, 1, 2, 3], verbose=0)
    assert m.classes_.tolist() == [0, 1, 2, 3] and m.task == "multiclass"
    m.fit(X, y, epochs=1, verbose=0)  # the rest later, as partial_fit does
    with pytest.raises(ValueError, match=r"labels not seen during fit: \[9\]"):
        m.fit(X, np.full(60, 9), epochs=1, verbose=0)
    a = fg.MLP([4, 3], seed=5)
    b = fg.MLP([4, 3], seed=6)
    b.params[...] = a.params
    a.fit(X, y, epochs=2, shuffle=False, verbose=0)
    b.fit(X, y, epochs=2, shuffle=False, verbose=0)  # another seed: same without shuffling
    assert np.array_equal(a.params, b.params)
