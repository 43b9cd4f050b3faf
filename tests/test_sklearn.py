"""fastgrad.sklearn: the drop-in MLPClassifier / MLPRegressor.

scikit-learn's full `check_estimator` suite on both (no expected failures), parity with
scikit-learn's own MLP (same initial weights, batches and loss to float precision), the
acceptance scores on scikit-learn's bundled datasets, and the scikit-learn behaviours
users rely on: string labels, pickling, partial_fit, warm_start, convergence, errors.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6",
                              reason="scikit-learn >= 1.6 (the test extra) not installed")

from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastgrad.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These networks are small: a second BLAS thread only adds wake-up latency, which on
    a loaded 2-core CI machine costs milliseconds per product. Results do not change."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _split(loader):
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


# --- scikit-learn's own estimator checks, all of them ----------------------------------

@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_sklearn_check_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# --- parity with scikit-learn's MLP ----------------------------------------------------

@pytest.mark.parametrize("params, rtol", [
    ({"alpha": 1.0}, 1e-5),  # Adam: epsilon sits in a different place (tiny difference)
    ({"activation": "logistic", "batch_size": 40, "alpha": 0.5}, 1e-5),
    ({"activation": "tanh", "hidden_layer_sizes": (8, 7), "shuffle": False}, 1e-5),
    ({"solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.1,
      "alpha": 0.1}, 1e-9),
    ({"solver": "sgd", "learning_rate": "adaptive", "learning_rate_init": 0.1,
      "n_iter_no_change": 2, "tol": 1e-2}, 1e-9),
    ({"solver": "sgd", "nesterovs_momentum": False, "batch_size": 32,
      "early_stopping": True, "validation_fraction": 0.2}, 1e-9),
])
@pytest.mark.parametrize("backend, runner", [(None, "fused"), ("numpy", "layers")])
def test_float64_training_matches_sklearn(iris, params, rtol, backend, runner):
    """Same random_state: same initial weights, shuffles and validation split, and the
    same loss (L2 penalty on the weights only, divided by the batch size), so in float64
    the loss curves agree to rounding: the conventions are scikit-learn's exactly. Every
    configuration trains on fit's fused runner (numba) where the backend has one, layer by
    layer elsewhere (the numpy backend): both reproduce scikit-learn."""
    X, y = iris
    params = {"hidden_layer_sizes": (10,), "max_iter": 40, "random_state": 1, **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(dtype="float64", backend=backend, **params).fit(X, y)
        ref = SkMLPClassifier(**params).fit(X, y)
    assert ours._model.history_.runner == runner
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=rtol)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=100 * rtol, atol=100 * rtol)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("y", [
    np.array([3, 1, 2, 1], np.int8), np.array([7, 0, 7], np.uint8),
    np.array([5, -2, 5, 9]), np.array([True, False, True]), np.array([2.0, 0.0, 1.0, 2.0]),
    np.array(["b", "a", "c", "a"]), np.array(["b", "a"], dtype=object),
], ids=lambda y: str(y.dtype))
def test_classes_are_unique_labels(y):
    """The classes the classifier finds (np.unique for numbers) are unique_labels' own:
    the same values, sorted, in the same dtype."""
    from sklearn.utils.multiclass import unique_labels

    from fastgrad.sklearn import _labels_of
    got, want = _labels_of(y), unique_labels(y)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_epoch_order_is_sklearns_shuffle():
    """The estimators draw each epoch's order without sklearn.utils.shuffle's argument
    checks; the draw must be the same one (scikit-learn's seeds reproduce)."""
    from sklearn.utils import check_random_state
    from sklearn.utils import shuffle as sk_shuffle
    ours, theirs = check_random_state(3), check_random_state(3)
    a = b = np.arange(17)
    for _ in range(4):
        perm = np.arange(17)
        ours.shuffle(perm)
        a = a[perm]
        b = sk_shuffle(b, random_state=theirs)
        np.testing.assert_array_equal(a, b)


def test_one_fit_call_per_fit(iris, monkeypatch):
    """All epochs run in one MLP.fit call (scikit-learn's per-epoch logic is its
    callback), on the fused runner for every solver and learning-rate schedule."""
    import fastgrad.nn
    X, y = iris
    calls = []
    real = fastgrad.nn.MLP.fit
    monkeypatch.setattr(fastgrad.nn.MLP, "fit",
                        lambda self, *a, **k: calls.append(k["epochs"]) or real(self, *a, **k))
    for extra in ({}, {"solver": "sgd", "learning_rate": "adaptive"},
                  {"solver": "sgd", "learning_rate": "invscaling"}):
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(max_iter=7, random_state=0, **extra).fit(X, y)
        assert calls == [7] and clf.n_iter_ == 7
        assert clf._model.history_.runner == "fused"
    calls.clear()
    reg = MLPRegressor(max_iter=3, random_state=0, early_stopping=True, solver="sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, X[:, 0] - X[:, 1])
    assert calls == [3] and reg._model.history_.runner == "fused"
    binary = MLPClassifier(max_iter=1, random_state=0).partial_fit(X, y > 0, classes=[False, True])
    assert calls == [3, 1] and binary._model.history_.runner == "fused"


@pytest.mark.parametrize("extra, blocks", [
    ({}, True),  # adam, all 30 epochs
    ({"tol": 1e9, "n_iter_no_change": 3}, True),  # improves only on the first: stops at 5
    ({"solver": "sgd", "learning_rate": "adaptive", "tol": 1.0, "n_iter_no_change": 2},
     True),  # the rate cut by 5 between blocks, every 3 epochs, until it stops
    ({"solver": "sgd", "learning_rate": "invscaling"}, False),  # a new rate every epoch
    ({"early_stopping": True}, False),  # scores the weights every epoch
])
def test_quiet_epochs_run_in_blocks_exactly_as_epoch_by_epoch(iris, monkeypatch, extra, blocks):
    """Between the epochs where scikit-learn's end-of-iteration logic can act, fit runs
    the epochs in blocks (one compiled call each): the same model, loss curve, iteration
    count and stopping, bit for bit, as epoch by epoch."""
    import fastgrad.train
    X, y = iris
    longest = []
    real = fastgrad.train._fit_block
    monkeypatch.setattr(fastgrad.train, "_fit_block", lambda *a: (
        longest.append(len(a[-1])) or real(*a)))
    fits = []
    for blocked in (True, False):
        if not blocked:  # no callback promises anything: epoch by epoch
            monkeypatch.setattr(fastgrad.train, "_block_length", lambda *a: 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(MLPClassifier(hidden_layer_sizes=(12,), max_iter=30, random_state=0,
                                      batch_size=32, **extra).fit(X, y))
    a, b = fits
    assert (max(longest, default=0) > 1) == blocks
    assert a.n_iter_ == b.n_iter_ and a.loss_curve_ == b.loss_curve_
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(wa, wb)
    if "n_iter_no_change" in extra and "solver" not in extra:
        assert a.n_iter_ == 5
    if extra.get("learning_rate") == "adaptive":  # cut to <= 1e-6, then stopped
        assert a._optimizer.lr <= 1e-6 and a.n_iter_ < 30


# --- acceptance on scikit-learn's bundled datasets --------------------------------------

@pytest.mark.parametrize("loader, floor, seeds", [
    (load_digits, 0.97, (0, 1, 2)),  # single seeds vary: scikit-learn scores 0.969 at seed 0
    (load_breast_cancer, 0.95, (0,)),
])
def test_classifier_accuracy_within_a_point_of_sklearn(loader, floor, seeds):
    """Default parameters on the 80/20 split (random_state=0), standardized features:
    within one point of scikit-learn's MLPClassifier for every seed, and at least the
    acceptance floor on average over the seeds."""
    X_train, X_test, y_train, y_test = _split(loader)
    ours = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            acc = MLPClassifier(random_state=seed).fit(X_train, y_train).score(X_test, y_test)
            ref = SkMLPClassifier(random_state=seed).fit(X_train, y_train).score(X_test,
                                                                                   y_test)
        assert abs(acc - ref) <= 0.01, (seed, acc, ref)
        ours.append(acc)
    assert np.mean(ours) >= floor, ours


def test_regressor_diabetes_r2():
    X_train, X_test, y_train, y_test = _split(load_diabetes)
    model = MLPRegressor(learning_rate_init=0.01, early_stopping=True, max_iter=1000,
                         random_state=0).fit(X_train, y_train)
    assert model.score(X_test, y_test) >= 0.30
    assert model.n_iter_ < 1000  # stopped by the validation score
    assert model.predict(X_test).dtype == np.float64


# --- labels, attributes, outputs ----------------------------------------------------------

@pytest.mark.parametrize("names", [["no", "yes"], ["cat", "dog", "emu"]])
def test_string_labels(iris, names):
    X, y = iris
    labels = np.array(names, dtype=object)[y % len(names)]
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, tol=1e-3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, labels)
    assert list(model.classes_) == sorted(names)
    pred = model.predict(X)
    assert set(pred) <= set(names) and pred.shape == (len(X),)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), len(names)) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], pred)
    assert model.score(X, labels) > 0.7
    assert model.n_outputs_ == (1 if len(names) == 2 else len(names))
    assert model.out_activation_ == ("logistic" if len(names) == 2 else "softmax")
    with pytest.raises(ValueError, match="not seen during fit|not in"):
        model.partial_fit(X[:5], np.array(["zebra"] * 5, dtype=object))


def test_attributes_and_shapes(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(7, 5), activation="gelu", max_iter=5,
                          random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        model.fit(X, y)
    assert [c.shape for c in model.coefs_] == [(4, 7), (7, 5), (5, 3)]
    assert [b.shape for b in model.intercepts_] == [(7,), (5,), (3,)]
    assert model.n_layers_ == 4 and model.n_outputs_ == 3 and model.n_features_in_ == 4
    assert model.n_iter_ == 5 and model.t_ == 5 * len(X)
    assert len(model.loss_curve_) == 5 and model.loss_ == model.loss_curve_[-1]
    assert model.best_loss_ == min(model.loss_curve_)
    assert model.coefs_[0].dtype == np.float32
    # coefs_ are the live weights: changing them changes predictions
    before = model.predict_proba(X)
    model.coefs_[-1][...] = 0
    model.intercepts_[-1][...] = 0
    np.testing.assert_allclose(model.predict_proba(X), np.full_like(before, 1 / 3))


def test_converges_before_max_iter(iris):
    X, y = iris
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=500, tol=1e-2,
                              n_iter_no_change=3, random_state=0).fit(X, y)
    assert model.n_iter_ < 500
    assert len(model.loss_curve_) == model.n_iter_


def test_early_stopping_attributes(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, max_iter=300,
                          n_iter_no_change=5, random_state=0).fit(X, y)
    assert model.best_loss_ is None
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        model.partial_fit(X, y)


def test_multioutput_regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    Y = np.stack([X[:, 0] + X[:, 1], X[:, 2] - X[:, 0]], axis=1)
    model = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300,
                         random_state=0).fit(X, Y)
    assert model.predict(X).shape == (200, 2) and model.n_outputs_ == 2
    assert model.score(X, Y) > 0.9


# --- pickling, partial_fit, warm_start -------------------------------------------------

def test_pickle_and_joblib_round_trip(iris):
    joblib = pytest.importorskip("joblib")
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    joblib.dump(model, buf)
    buf.seek(0)
    third = joblib.load(buf)
    for other in (again, third):
        np.testing.assert_array_equal(other.predict_proba(X), model.predict_proba(X))
        assert other.get_params() == model.get_params()
    # the unpickled estimator keeps training where the original left off, and its coefs_
    # still show the live weights
    model.partial_fit(X, y)
    again.partial_fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    assert again.coefs_[0] is not None
    np.testing.assert_array_equal(again.coefs_[0], again._model.layers[0].W)
    assert np.shares_memory(again.coefs_[0], again._model.params)


def test_partial_fit_classifier(iris):
    X, y = iris
    model = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X, y)
    model.partial_fit(X[y != 2], y[y != 2], classes=[0, 1, 2])  # a batch lacking class 2
    assert list(model.classes_) == [0, 1, 2] and model.n_iter_ == 1
    for _ in range(30):
        model.partial_fit(X, y)
    assert model.t_ == (y != 2).sum() + 30 * len(X)
    assert len(model.loss_curve_) == 31 and model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.score(X, y) > 0.8
    with pytest.raises(ValueError, match="not the same as on the last call"):
        model.partial_fit(X, y, classes=[0, 1])


def test_partial_fit_regressor():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    model = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0)
    for _ in range(40):
        model.partial_fit(X, y)
    assert model.n_iter_ == 1 and len(model.loss_curve_) == 40
    assert model.loss_curve_[-1] < 0.5 * model.loss_curve_[0]
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :3], y)


def test_warm_start_continues(iris):
    X, y = iris
    params = {"hidden_layer_sizes": (8,), "max_iter": 10, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold = MLPClassifier(**params).fit(X, y)
        first_curve = list(cold.loss_curve_)
        cold.fit(X, y)  # warm_start=False: starts again from the same initial weights
        assert cold.loss_curve_ == first_curve
        warm = MLPClassifier(warm_start=True, **params).fit(X, y)
        warm.fit(X, y)  # continues: the curve grows and keeps falling
    assert len(warm.loss_curve_) == 20 and warm.t_ == 20 * len(X)
    assert warm.loss_curve_[10] < warm.loss_curve_[0]
    with pytest.raises(ValueError, match="same classes"):
        warm.fit(X[y != 2], y[y != 2])
    warm.set_params(hidden_layer_sizes=(9,))
    with pytest.raises(ValueError, match="layer_sizes changed"):
        warm.fit(X, y)


# --- errors and edges ---------------------------------------------------------------------

@pytest.mark.parametrize("params, match", [
    ({"solver": "lbfgs"}, "lbfgs' is not supported"),
    ({"solver": "newton"}, "solver must be one of"),
    ({"activation": "softplux"}, "softplux"),
    ({"learning_rate": "cyclic"}, "learning_rate must be one of"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
    ({"alpha": -1.0}, "alpha must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"dtype": "float16"}, "dtype must be"),
    ({"momentum": 1.5}, "momentum must be"),
])
def test_invalid_parameters_named_at_fit(iris, params, match):
    X, y = iris
    model = MLPClassifier(**params)  # __init__ never validates (scikit-learn's rule)
    with pytest.raises(ValueError, match=match):
        model.fit(X, y)


def test_unsupported_targets_and_losses(iris):
    X, y = iris
    with pytest.raises(ValueError, match="multilabel"):
        MLPClassifier(max_iter=2).fit(X, np.stack([y == 0, y == 1], axis=1).astype(int))
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="1 class"):
        MLPClassifier().fit(X, np.zeros(len(X)))
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)


def test_non_finite_training_is_a_value_error():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3))
    y = 1e6 * X[:, 0]
    model = MLPRegressor(solver="sgd", learning_rate_init=1e6, max_iter=5, random_state=0)
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(X, y)


def test_verbose_prints_each_iteration(iris, capsys):
    X, y = iris
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=True,
                      random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


def test_partial_fit_classes_alone_is_not_fitted(iris):
    X, y = iris
    model = MLPClassifier()
    with pytest.raises(ValueError):
        model.partial_fit(X[:, :0], y, classes=[0, 1, 2])  # no features: refused
    with pytest.raises(NotFittedError):
        model.predict(X)


def test_activation_names(iris):
    X, y = iris
    for name in ("identity", "logistic", "tanh", "relu", "elu"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier(hidden_layer_sizes=(6,), activation=name, max_iter=3,
                                  random_state=0).fit(X, y)
        assert model.predict(X).shape == (len(X),)


def test_backend_parameter(iris):
    X, y = iris
    params = {"hidden_layer_sizes": (6,), "max_iter": 3, "random_state": 0, "dtype": "float64"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = MLPClassifier(backend="numpy", **params).fit(X, y)
        default = MLPClassifier(**params).fit(X, y)
    np.testing.assert_allclose(ref.loss_curve_, default.loss_curve_, rtol=1e-10)
    with pytest.raises(ValueError, match="backend"):
        MLPClassifier(backend="no-such-backend").fit(X, y)


def test_feature_names_from_dataframe(iris):
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    X, y = iris
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(frame, y)
    assert list(model.feature_names_in_) == ["a", "b", "c", "d"]


def test_importing_fastgrad_does_not_import_sklearn():
    code = "import sys, fastgrad; assert 'sklearn' not in sys.modules; import fastgrad.sklearn"
    subprocess.run([sys.executable, "-c", code], check=True)
