"""A Tensor-built MLP and the trainer (MLP.fit, fused where the backend fuses) agree:
from the same initial weights and the same batches they give the same losses step by
step and end at the same weights."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import autograd as ag
from fastgrad import tensor_losses


def tensor_sgd(X, y, weights, biases, *, activation, loss, lr, momentum, batch_size, steps):
    """Plain autograd training loop: per batch, Tensor forward, loss, backward, SGD with
    PyTorch's momentum (v = mu v + g; p -= lr v). Returns the per-step losses and the
    final parameters."""
    params = [fg.Tensor(p.copy(), requires_grad=True) for pair in zip(weights, biases)
              for p in pair]
    velocity = [np.zeros_like(p.data) for p in params]
    n_batches = -(-len(X) // batch_size)
    out = []
    for step in range(steps):
        i = step % n_batches
        xb, yb = X[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]
        h = fg.Tensor(xb)
        for k in range(0, len(params), 2):
            last = k == len(params) - 2
            h = ag.linear(h, params[k], params[k + 1], activation=None if last else activation)
        L = tensor_losses.loss(loss, h, yb)
        out.append(L.item())
        for p in params:
            p.zero_grad()
        L.backward()
        for p, v in zip(params, velocity):
            v *= momentum
            v += p.grad
            p.data -= lr * v
    return out, [p.data for p in params]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_full_batch_losses_match_step_by_step(dtype, rtol, activation, rng):
    X = rng.standard_normal((24, 5)).astype(dtype)
    y = rng.permutation(np.arange(24) % 3)
    model = fg.MLP([5, 8, 3], activation=activation, output="softmax", dtype=dtype, seed=1)
    w0, b0 = [w.copy() for w in model.weights], [b.copy() for b in model.biases]
    steps = 6
    history = model.fit(X, y, epochs=steps, batch_size=len(X), optimizer="sgd", lr=0.2,
                        momentum=0.9, shuffle=False, verbose=0, health=False)
    got, final = tensor_sgd(X, y, w0, b0, activation=activation, loss="cross_entropy",
                            lr=0.2, momentum=0.9, batch_size=len(X), steps=steps)
    np.testing.assert_allclose(got, history["loss"], rtol=rtol)
    np.testing.assert_allclose(final[0], model.weights[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(final[-1], model.biases[-1], rtol=rtol, atol=rtol)


def test_minibatch_epochs_match_for_binary_output(rng):
    X = rng.standard_normal((20, 4))
    y = rng.permutation(np.arange(20) % 2)
    model = fg.MLP([4, 6, 1], activation="gelu", output="sigmoid", dtype="float64", seed=3)
    w0, b0 = [w.copy() for w in model.weights], [b.copy() for b in model.biases]
    epochs, batch = 3, 8  # batches of 8, 8, 4: the last one shorter
    history = model.fit(X, y, epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.1,
                        shuffle=False, verbose=0, health=False)
    got, final = tensor_sgd(X, y.reshape(-1, 1).astype(np.float64), w0, b0,
                            activation="gelu", loss="binary_cross_entropy", lr=0.1,
                            momentum=0.0, batch_size=batch, steps=3 * epochs)
    sizes = np.array([8, 8, 4])
    per_epoch = [np.dot(got[3 * e:3 * e + 3], sizes) / 20 for e in range(epochs)]
    np.testing.assert_allclose(per_epoch, history["loss"], rtol=1e-10)
    for mine, theirs in zip(final, [p for pair in zip(model.weights, model.biases)
                                    for p in pair]):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
