"""fastgrad.datasets, the standardization folding and the activation curves, in-process
(the command line around them is tested as a subprocess in test_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.activations import ACTIVATIONS
from fastgrad.datasets import (
    DataError,
    Standardizer,
    check_task,
    detect_task,
    load_csv,
    load_data,
    load_features,
    load_npz,
    train_test_split,
)
from fastgrad.model_file import fold_standardization
from fastgrad.plots import activation_curves


@pytest.mark.parametrize("y, task", [
    (np.array(["a", "b", "a"]), "binary"),
    (np.array(["a", "b", "c", "a"]), "multiclass"),
    (np.array([0.0, 1.0, 1.0, 0.0]), "binary"),
    (np.array([3, 7, 3, 7]), "binary"),
    (np.repeat(np.arange(10), 5), "multiclass"),
    (np.repeat(np.arange(10.0), 5), "multiclass"),
    (np.linspace(0, 1, 50), "regression"),
    (np.arange(100), "regression"),             # every value distinct: a quantity
    (np.repeat(np.arange(40), 3), "regression"),  # more than MAX_CLASSES values
])
def test_detect_task(y, task):
    assert detect_task(y) == task


def test_detect_task_refuses_a_constant_target():
    with pytest.raises(DataError, match="single value"):
        detect_task(np.ones(5))


def test_check_task():
    check_task("multiclass", np.array([1.5, 2.5, 3.5]))
    with pytest.raises(DataError, match="needs a numeric target"):
        check_task("regression", np.array(["a", "b"]))
    with pytest.raises(DataError, match="exactly 2 classes"):
        check_task("binary", np.array([0, 1, 2]))
    with pytest.raises(DataError, match="unknown task"):
        check_task("ranking", np.array([0, 1]))


def test_csv_quirks(tmp_path):
    """BOM, quoted fields, spaces around numbers, blank lines, a negative target index."""
    path = tmp_path / "q.csv"
    path.write_bytes('\ufeff"first, col",b,label\n 1.5 ,"2",yes\n\n3,4e1,no\n'
                     .encode("utf-8"))
    data = load_csv(str(path), target=-1)
    assert data.feature_names == ["first, col", "b"]
    np.testing.assert_array_equal(data.X, [[1.5, 2.0], [3.0, 40.0]])
    assert list(data.y) == ["yes", "no"] and data.target_name == "label"
    with pytest.raises(DataError, match="line 2, column 'label': 'yes' is not a number"):
        load_csv(str(path), target="b")  # then the label column would be a feature
    path.write_text("a,b,c\n1,2,3\n4,5,6\n")
    data = load_csv(str(path), target="b")  # a numeric target by name
    np.testing.assert_array_equal(data.y, [2.0, 5.0])
    assert data.feature_names == ["a", "c"]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("a,b\n", "no data rows"),
    ("a,a,y\n1,2,3\n", "duplicate column name"),
    ("a\n1\n2\n", "expected at least one feature column"),
    ("a,b,y\n1,2,3\n4,5,6,7\n", "line 3: expected 3 fields"),
    ("a,b,y\n1,inf,3\n", "line 2, column 'b'"),
    ("a,b,y\n1,2,\n", "line 2, column 'y'"),
])
def test_csv_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_data(str(path))


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), label=np.array(["a", "b", "a"]))
    data = load_npz(str(path), "label")
    assert data.X.shape == (3, 2) and list(data.y) == ["a", "b", "a"]
    with pytest.raises(DataError, match="no array named 'y'"):
        load_npz(str(path))
    np.savez(path, X=np.zeros((3, 2)), y=np.array([1, 2], dtype=object))
    with pytest.raises(DataError, match="cannot read"):  # pickled arrays are refused
        load_npz(str(path))


def test_load_features_by_name(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("b,target,a\n2,9,1\n4,9,3\n")
    np.testing.assert_array_equal(load_features(str(path), ["a", "b"], 2), [[1, 2], [3, 4]])
    with pytest.raises(DataError, match="has 3 columns; the model takes 2"):
        load_features(str(path), ["x", "y"], 2)


def test_bundled_without_download():
    pytest.importorskip("sklearn")
    data = load_data("iris")
    assert data.X.shape == (150, 4) and set(data.y) == {"setosa", "versicolor", "virginica"}
    with pytest.raises(DataError, match="--target applies to CSV and NPZ"):
        load_data("iris", target="x")


def test_split_is_seeded_and_stratified():
    y = np.repeat(["a", "b", "c"], [50, 30, 20])
    X = np.arange(len(y), dtype=float)[:, None]
    parts = train_test_split(X, y, 0.2, seed=1, stratify=True)
    again = train_test_split(X, y, 0.2, seed=1, stratify=True)
    for p, q in zip(parts, again):
        np.testing.assert_array_equal(p, q)
    X_train, X_test, y_train, y_test = parts
    assert {c: int(np.sum(y_test == c)) for c in "abc"} == {"a": 10, "b": 6, "c": 4}
    assert sorted(np.concatenate([X_train, X_test])[:, 0]) == list(X[:, 0])
    other = train_test_split(X, y, 0.2, seed=2, stratify=True)[1]
    assert not np.array_equal(other, X_test)


def test_standardizer_fits_train_only_and_keeps_constant_columns_finite():
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Standardizer.fit(X)
    np.testing.assert_array_equal(s.transform(X), [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(s.transform(np.array([[5.0, 6.0]])), [[3.0, 1.0]])
    with pytest.raises(DataError, match="has 3 feature columns; the model expects 2"):
        s.transform(np.zeros((1, 3)))


def test_folding_the_standardization_into_the_first_layer():
    rng = np.random.default_rng(0)
    X = rng.normal(50.0, 7.0, (40, 3))
    y = (X[:, 0] > 50).astype(int)
    s = Standardizer.fit(X)
    model = fg.MLP([3, 5, 1], "tanh", "sigmoid", dtype="float64", seed=0)
    model.fit(s.transform(X), y, epochs=2, verbose=0)
    before = model.forward(s.transform(X))
    fold_standardization(model, s.mean, s.scale)
    np.testing.assert_allclose(model.forward(X), before, rtol=1e-10, atol=1e-12)


def test_activation_curves_come_from_the_kernels():
    x = np.linspace(-5, 5, 101)
    sig = 1 / (1 + np.exp(-x))
    for name in ("softmax", "sigmoid"):  # softmax([x, 0])_0 is the sigmoid of x
        y, dy = activation_curves(ACTIVATIONS[name], x)
        np.testing.assert_allclose(y, sig, rtol=1e-12)
        np.testing.assert_allclose(dy, sig * (1 - sig), rtol=1e-10, atol=1e-15)
    y, dy = activation_curves(ACTIVATIONS["log_softmax"], x)
    np.testing.assert_allclose(y, np.log(sig), rtol=1e-10)
    np.testing.assert_allclose(dy, 1 - sig, rtol=1e-10, atol=1e-15)
    for spec in ACTIVATIONS.values():  # every derivative against central differences
        y, dy = activation_curves(spec, x)
        h = 1e-6
        numeric = (activation_curves(spec, x + h)[0] - activation_curves(spec, x - h)[0]) / (2 * h)
        smooth = np.abs(x) > 1e-3  # relu, leaky, elu, selu, step have a kink at 0
        if spec.name == "binary_step":
            np.testing.assert_array_equal(dy, 0.0)
            continue
        np.testing.assert_allclose(dy[smooth], numeric[smooth], rtol=1e-5, atol=1e-7,
                                   err_msg=spec.name)
