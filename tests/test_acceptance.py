"""Issue #4's acceptance bar, on scikit-learn's bundled datasets (no download):
80/20 split with random_state=0, features standardized on the training part."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg

datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is in the test extra")
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def split(loader):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


def test_digits_multiclass():
    Xtr, Xte, ytr, yte = split(datasets.load_digits)
    model = fg.MLP([64, 128, 10], seed=0)
    model.fit(Xtr, ytr, epochs=30, batch_size=32, lr=1e-3, verbose=0)
    assert model.task == "multiclass"
    assert model.score(Xte, yte) >= 0.97


def test_breast_cancer_binary():
    Xtr, Xte, ytr, yte = split(datasets.load_breast_cancer)
    model = fg.MLP([30, 32, 1], seed=0)
    model.fit(Xtr, ytr, epochs=30, batch_size=32, verbose=0)
    assert model.task == "binary"
    assert model.score(Xte, yte) >= 0.95


def test_diabetes_regression():
    Xtr, Xte, ytr, yte = split(datasets.load_diabetes)
    model = fg.MLP([10, 16, 1], seed=0)
    model.fit(Xtr, ytr, epochs=100, batch_size=32, lr=1e-2, weight_decay=1e-3, verbose=0)
    assert model.task == "regression"
    r2 = model.score(Xte, yte)
    assert r2 >= 0.30
    pred = model.predict(Xte)
    manual = 1 - np.sum((yte - pred) ** 2) / np.sum((yte - yte.mean()) ** 2)
    assert r2 == pytest.approx(manual, rel=1e-6)
