"""cuda-specific tests, run under numba's CUDA simulator by tests/test_cuda.py
(NUMBA_ENABLE_CUDASIM=1, FASTGRAD_TEST_CUDA=1): device arrays in and out without copies,
__cuda_array_interface__ objects, tile edges, the row kernels' strided loops.

tests/conftest.py sets the simulator-sized launch parameters (TILE=4, ROW_THREADS=8,
THREADS=32, MAX_BLOCKS=4); the table-driven tests (test_activations, test_linear) run on
the cuda backend in the same invocation.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_input

import fastgrad as fg
from fastgrad.backends import cuda as cuda_backend

cuda = pytest.importorskip("numba.cuda")

if not cuda_backend.SIMULATOR:  # a wrong invocation must fail loudly, not skip
    raise RuntimeError("tests/cuda_sim runs under NUMBA_ENABLE_CUDASIM=1 "
                       "(see tests/test_cuda.py)")


class Interface:
    """A minimal foreign device array: only __cuda_array_interface__ (as CuPy arrays and
    PyTorch CUDA tensors expose). Under the simulator device memory is host memory, so it
    points at a NumPy buffer, which shows whether results were written in place."""

    def __init__(self, host: np.ndarray):
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape, "typestr": host.dtype.str, "strides": None,
            "data": (host.ctypes.data, False), "version": 3}


@pytest.fixture
def no_transfers(monkeypatch):
    """Fail on any host<->device copy: device inputs must be used in place."""
    def refuse(*args, **kwargs):
        raise AssertionError("unexpected host<->device copy")
    monkeypatch.setattr(cuda_backend, "to_device", refuse)
    monkeypatch.setattr(cuda_backend, "to_host", refuse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_device_arrays_in_and_out_without_copies(dtype, rng, no_transfers):
    x = random_input(rng, (3, 5), dtype)
    g = rng.standard_normal((3, 5)).astype(dtype)
    xd, gd = cuda.to_device(x), cuda.to_device(g)
    for name in ("gelu", "softmax"):
        y = fg.forward(name, xd, backend="cuda")
        assert cuda_backend.is_device_array(y) and y.shape == (3, 5) and y.dtype == dtype
        assert_close(y.copy_to_host(), fg.forward(name, x, backend="numpy"), dtype, True, name)
        gx = fg.backward(name, gd, x=xd, y=y, backend="cuda")
        assert cuda_backend.is_device_array(gx)
        want = fg.backward(name, g, x=x, y=fg.forward(name, x, backend="numpy"),
                           backend="numpy")
        assert_close(gx.copy_to_host(), want, dtype, True, name)
    # out= a device array: written in place (poisoned first, so every element is checked).
    out = cuda.to_device(np.full((3, 5), np.nan, dtype))
    assert fg.tanh_forward(xd, out=out, backend="cuda") is out
    assert_close(out.copy_to_host(), np.tanh(x), dtype)


def test_cuda_linear_on_device_without_copies(rng, no_transfers):
    x, W, b = (random_input(rng, s, np.float32, scale=0.8) for s in ((2, 3, 5), (5, 6), (6,)))
    xd, Wd, bd = (cuda.to_device(a) for a in (x, W, b))
    y, pre = fg.linear_forward(xd, Wd, bd, activation="relu", backend="cuda",
                               return_pre=True)
    assert all(cuda_backend.is_device_array(a) for a in (y, pre))
    assert y.shape == (2, 3, 6) and pre.shape == (2, 3, 6)
    want_y, want_pre = fg.linear_forward(x, W, b, activation="relu", backend="numpy",
                                         return_pre=True)
    assert_close(pre.copy_to_host(), want_pre, np.float32, True, "pre")
    assert_close(y.copy_to_host(), want_y, np.float32, True, "y")
    g = rng.standard_normal((2, 3, 6)).astype(np.float32)
    got = fg.linear_backward(cuda.to_device(g), xd, Wd, activation="relu", pre=pre,
                             backend="cuda")
    want = fg.linear_backward(g, x, W, activation="relu", pre=want_pre, backend="numpy")
    for name, a, w in zip(("grad_x", "grad_W", "grad_b"), got, want):
        assert cuda_backend.is_device_array(a), name
        assert_close(a.copy_to_host(), w, np.float32, True, name)


def test_cuda_array_interface_objects_are_used_in_place(rng, no_transfers):
    x = random_input(rng, (4, 3), np.float64)
    out_host = np.full((4, 3), np.nan)
    result = fg.sigmoid_forward(Interface(x), out=(out := Interface(out_host)),
                                backend="cuda")
    assert result is out
    assert_close(out_host, fg.sigmoid_forward(x, backend="numpy"), np.float64)
    # Without out=: a numba device array comes back.
    y = fg.forward("log_softmax", Interface(x), backend="cuda")
    assert_close(y.copy_to_host(), fg.forward("log_softmax", x, backend="numpy"),
                 np.float64, True)


def test_cuda_host_input_comes_back_on_the_host(rng):
    x = random_input(rng, (2, 3), np.float32)
    y = fg.relu_forward(x, backend="cuda")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    # Mixed: a device array among the inputs keeps the results on the device.
    W = random_input(rng, (3, 4), np.float32)
    yd = fg.linear_forward(cuda.to_device(x), W, backend="cuda")
    assert cuda_backend.is_device_array(yd)
    assert_close(yd.copy_to_host(), x @ W, np.float32, True)


def test_cuda_device_array_errors():
    xd = cuda.to_device(np.ones((4, 6)))
    with pytest.raises(ValueError, match=r"x is a device array with strides .* expected a "
                                         "C-contiguous one"):
        fg.relu_forward(xd[:, ::2], backend="cuda")
    with pytest.raises(TypeError, match="x is a device array of dtype int64, expected "
                                        "float32 or float64"):
        fg.relu_forward(cuda.to_device(np.ones(3, np.int64)), backend="cuda")
    with pytest.raises(TypeError, match="y has dtype float32, expected float64"):
        fg.sigmoid_backward(xd, y=cuda.to_device(np.ones((4, 6), np.float32)),
                            backend="cuda")
    with pytest.raises(ValueError, match=r"out has shape \(6, 4\), expected \(4, 6\)"):
        fg.relu_forward(xd, out=cuda.to_device(np.ones((6, 4))), backend="cuda")


@pytest.mark.parametrize("tile", [3, 4, 5])
@pytest.mark.parametrize("shape", [(9, 13, 7), (8, 8, 8), (2, 3, 1), (1, 5, 11)])
def test_cuda_matmul_tile_edges(shape, tile, rng, monkeypatch):
    """N x D_in x D_out with tiles that do and do not divide them: every output element,
    including the last partial tiles, matches (outputs are poisoned with NaN first)."""
    monkeypatch.setattr(cuda_backend, "TILE", tile)
    n, d_in, d_out = shape
    x = rng.standard_normal((n, d_in))
    W = rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out)
    g = rng.standard_normal((n, d_out))
    out = cuda.to_device(np.full((n, d_out), np.nan))
    fg.linear_forward(cuda.to_device(x), cuda.to_device(W), cuda.to_device(b), out=out,
                      backend="cuda")
    assert_close(out.copy_to_host(), x @ W + b, np.float64, True, "x W + b")
    gx, gW, gb = fg.linear_backward(g, x, W, backend="cuda")
    assert_close(gx, g @ W.T, np.float64, True, "g W^T")
    assert_close(gW, x.T @ g, np.float64, True, "x^T g")
    assert_close(gb, g.sum(axis=0), np.float64, True, "grad_b")


def test_cuda_matmul_9x13x7_with_4x4_tiles_and_activation(rng, monkeypatch):
    monkeypatch.setattr(cuda_backend, "TILE", 4)
    x = random_input(rng, (9, 13), np.float32, scale=1.0)
    W = random_input(rng, (13, 7), np.float32, scale=0.5)
    b = random_input(rng, (7,), np.float32, scale=0.5)
    for act in ("gelu", "softmax"):
        y, pre = fg.linear_forward(x, W, b, activation=act, backend="cuda", return_pre=True)
        want, want_pre = fg.linear_forward(x, W, b, activation=act, backend="numpy",
                                           return_pre=True)
        assert_close(pre, want_pre, np.float32, True, f"{act} pre")
        assert_close(y, want, np.float32, True, f"{act} y")
        g = rng.standard_normal(y.shape).astype(np.float32)
        got = fg.linear_backward(g, x, W, activation=act, y=y, pre=pre, backend="cuda")
        ref = fg.linear_backward(g, x, W, activation=act, y=want, pre=want_pre,
                                 backend="numpy")
        for name, a, w in zip(("grad_x", "grad_W", "grad_b"), got, ref):
            assert_close(a, w, np.float32, True, f"{act} {name}")


@pytest.mark.parametrize("n", [1, 7, 8, 21])
def test_cuda_row_kernels_stride_over_long_rows(n, rng):
    """Rows shorter and longer than the block (ROW_THREADS=8 here), not powers of two,
    with a NaN row and a +inf row (NaN or one-hot, as the reference)."""
    x = rng.standard_normal((4, n)) * 5
    x[1, n // 2] = np.nan
    x[2, 0] = np.inf
    g = rng.standard_normal((4, n))
    for name in ("softmax", "log_softmax"):
        y = fg.forward(name, x, backend="cuda")
        want = fg.forward(name, x, backend="numpy")
        assert_close(y, want, np.float64, True, name)
        assert np.isnan(y[1]).all()
        big = np.full((1, n), 2.1990233e12, np.float32)  # equal huge logits: -log n
        assert_close(fg.forward(name, big, backend="cuda"),
                     fg.forward(name, big, backend="numpy"), np.float32, True, f"{name} big")
        fine = x[[0, 3]]
        yf = fg.forward(name, fine, backend="numpy")
        assert_close(fg.backward(name, g[[0, 3]], y=yf, backend="cuda"),
                     fg.backward(name, g[[0, 3]], y=yf, backend="numpy"), np.float64, True)


def test_cuda_elementwise_grid_stride_covers_every_element(rng, monkeypatch):
    """More elements than THREADS x MAX_BLOCKS: the grid-stride loop reaches them all."""
    monkeypatch.setattr(cuda_backend, "THREADS", 4)
    monkeypatch.setattr(cuda_backend, "MAX_BLOCKS", 2)
    x = rng.standard_normal(37)
    out = cuda.to_device(np.full(37, np.nan))
    fg.elu_forward(cuda.to_device(x), out=out, backend="cuda")
    assert_close(out.copy_to_host(), fg.elu_forward(x, backend="numpy"), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_losses_match_the_reference(dtype, rng):
    from fastgrad.losses import LOSSES

    ref = fg.get_backend("numpy")
    for spec in LOSSES.values():
        for shape in ((5, 3), (37, 1), (2, 21)):  # 37 > THREADS x MAX_BLOCKS: grid stride
            pred = (rng.standard_normal(shape) * 3).astype(dtype)
            if spec.rowwise:
                target = np.eye(shape[1], dtype=dtype)[rng.integers(0, shape[1], shape[0])]
            else:
                target = rng.random(shape).astype(dtype)
            want = ref.loss_forward(spec, pred, target)
            for p, t in ((pred, target), (cuda.to_device(pred), cuda.to_device(target))):
                got = cuda_backend.loss_forward(spec, p, t)
                assert isinstance(got, float)
                np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=spec.name)
            want_g = np.empty_like(pred)
            ref.loss_backward(spec, pred, target, want_g)
            out = cuda.to_device(np.full(shape, np.nan, dtype))  # poisoned
            cuda_backend.loss_backward(spec, cuda.to_device(pred), cuda.to_device(target), out)
            assert_close(out.copy_to_host(), want_g, dtype, True, spec.name)
            host_out = np.full(shape, np.nan, dtype)  # host arrays are staged and copied back
            cuda_backend.loss_backward(spec, pred, target, host_out)
            assert_close(host_out, want_g, dtype, True, spec.name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_optimizer_updates_match_the_reference(dtype, rng):
    ref = fg.get_backend("numpy")
    n = 37
    cases = [
        ("sgd_update", 1, (0.1, 0.9, 0.01, True)),
        ("sgd_update", 1, (0.1, 0.0, 0.0, False)),
        ("adam_update", 2, (1e-2, 0.9, 0.999, 1e-8, 0.01, False, 3)),
        ("adam_update", 2, (1e-2, 0.9, 0.999, 1e-8, 0.01, True, 1)),
        ("rmsprop_update", 2, (1e-2, 0.99, 1e-8, 0.01, 0.9)),
    ]
    for kernel, n_state, hyper in cases:
        arrays = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
        arrays += [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(n_state)]
        want = [a.copy() for a in arrays]
        getattr(ref, kernel)(*want, *hyper)
        on_device = [cuda.to_device(a) for a in arrays]
        getattr(cuda_backend, kernel)(*on_device, *hyper)
        host = [a.copy() for a in arrays]
        getattr(cuda_backend, kernel)(*host, *hyper)
        for i, w in enumerate(want):
            if i == 1:
                continue  # the gradient is read-only
            assert_close(on_device[i].copy_to_host(), w, dtype, False, f"{kernel}[{i}]")
            assert_close(host[i], w, dtype, False, f"{kernel}[{i}] host")


def test_cuda_loss_through_the_public_api(rng):
    pred = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    want = fg.loss("cross_entropy", pred, labels, backend="numpy")
    assert fg.loss("cross_entropy", pred, labels, backend="cuda") == pytest.approx(want,
                                                                                   rel=1e-12)
    assert_close(fg.loss_grad("cross_entropy", pred, labels, backend="cuda"),
                 fg.loss_grad("cross_entropy", pred, labels, backend="numpy"), np.float64,
                 True)


def _mlp_step(backend, device, rng_seed):
    """One SGD step of a 5-6-3 tanh MLP with cross-entropy, through the kernels of
    `backend`; with device=True every array stays on the device (numba device arrays)."""
    from fastgrad.losses import LOSSES

    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((8, 5))
    target = np.eye(3)[rng.integers(0, 3, 8)]
    params = [rng.standard_normal((5, 6)) * 0.5, rng.standard_normal(6) * 0.1,
              rng.standard_normal((6, 3)) * 0.5, rng.standard_normal(3) * 0.1]
    move = cuda.to_device if device else (lambda a: a)
    x, target = move(x), move(target)
    W1, b1, W2, b2 = (move(p) for p in params)
    kernels = fg.get_backend(backend)
    ce = LOSSES["cross_entropy"]
    h = fg.linear_forward(x, W1, b1, activation="tanh", backend=backend)
    logits = fg.linear_forward(h, W2, b2, backend=backend)
    loss = kernels.loss_forward(ce, logits, target)
    g = cuda.device_array((8, 3)) if device else np.empty((8, 3))
    kernels.loss_backward(ce, logits, target, g)
    gh, gW2, gb2 = fg.linear_backward(g, h, W2, backend=backend)
    _, gW1, gb1 = fg.linear_backward(gh, x, W1, activation="tanh", y=h, need_grad_x=False,
                                     backend=backend)
    for p, grad in zip((W1, b1, W2, b2), (gW1, gb1, gW2, gb2)):
        velocity = move(np.zeros(p.size))
        kernels.sgd_update(p.reshape(-1), grad.reshape(-1), velocity, 0.5, 0.9, 1e-3, False)
    host = (lambda a: a.copy_to_host()) if device else (lambda a: a)
    return loss, [host(p) for p in (W1, b1, W2, b2)]


def test_cuda_mlp_training_step_matches_the_cpu(rng, monkeypatch):
    seed = int(rng.integers(1 << 31))
    want_loss, want = _mlp_step("numpy", False, seed)
    # Once the data is on the device, only the loss value crosses back (one small copy).
    copies = []
    for name in ("to_device", "to_host"):
        original = getattr(cuda_backend, name)
        monkeypatch.setattr(cuda_backend, name,
                            lambda a, _f=original, _n=name: copies.append(_n) or _f(a))
    got_loss, got = _mlp_step("cuda", True, seed)
    assert copies == ["to_host"]
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for name, a, w in zip(("W1", "b1", "W2", "b2"), got, want):
        assert_close(a, w, np.float64, True, name)
