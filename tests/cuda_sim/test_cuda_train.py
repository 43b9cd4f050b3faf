"""The MLP trainer on the cuda backend, under numba's CUDA simulator (run by
tests/test_cuda.py with NUMBA_ENABLE_CUDASIM=1 and FASTGRAD_TEST_CUDA=1).

Every fit here is tiny (a 5-4-3 net, 13 samples, batches of 4: the simulator runs each GPU
thread as a Python thread, ~10 s a fit): the same seed on the numpy backend is the oracle.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from conftest import assert_close

import fastgrad as fg
from fastgrad.backends import cuda as cuda_backend
from fastgrad.losses import LOSSES
from fastgrad.train import NonFiniteError

cuda = pytest.importorskip("numba.cuda")

if not cuda_backend.SIMULATOR:  # a wrong invocation must fail loudly, not skip
    raise RuntimeError("tests/cuda_sim runs under NUMBA_ENABLE_CUDASIM=1 "
                       "(see tests/test_cuda.py)")

from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402
from numba.cuda.simulator.kernel import FakeCUDAKernel  # noqa: E402


def _data(n: int = 13):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 5))
    y = np.array(list("abc"))[np.arange(n) % 3]
    return X, y


def _fit(backend, dtype, optimizer, callbacks=None, **kw):
    X, y = _data()
    m = fg.MLP([5, 4, 3], "tanh", dtype=dtype, backend=backend, seed=7)
    h = m.fit(X, y, epochs=2, batch_size=4, optimizer=optimizer, verbose=0,
              callbacks=callbacks, **kw)
    return m, h


class TransferSpy:
    """Counts, per epoch, host->device and device->host copies, device allocations and
    kernel launches of the simulator, and records any host (NumPy) array handed straight
    to a kernel (numba would copy it in and out around that launch)."""

    def __init__(self, monkeypatch):
        self.counts = collections.Counter()
        self.per_epoch: list[dict] = []
        self.host_args: list[str] = []
        spy = self

        real_to_device = cuda.to_device

        def to_device(ary, *args, **kwargs):
            spy.counts["h2d"] += 1
            return real_to_device(ary, *args, **kwargs)

        def copy_to_device(self, ary, stream=0):
            spy.counts["d2d" if isinstance(ary, FakeCUDAArray) else "h2d"] += 1
            return real_copy_to_device(self, ary, stream)

        def copy_to_host(self, ary=None, stream=0):
            spy.counts["d2h"] += 1
            return real_copy_to_host(self, ary, stream)

        def device_array(*args, **kwargs):
            spy.counts["alloc"] += 1
            return real_device_array(*args, **kwargs)

        def launch(self, *args):
            if not self._device:
                spy.counts["launch"] += 1
                spy.host_args += [self.fn.__name__ for a in args
                                  if isinstance(a, np.ndarray) and a.ndim > 0]
            return real_call(self, *args)

        real_copy_to_device = FakeCUDAArray.copy_to_device
        real_copy_to_host = FakeCUDAArray.copy_to_host
        real_device_array = cuda.device_array
        real_call = FakeCUDAKernel.__call__
        monkeypatch.setattr(cuda, "to_device", to_device)
        monkeypatch.setattr(cuda, "device_array", device_array)
        monkeypatch.setattr(FakeCUDAArray, "copy_to_device", copy_to_device)
        monkeypatch.setattr(FakeCUDAArray, "copy_to_host", copy_to_host)
        monkeypatch.setattr(FakeCUDAKernel, "__call__", launch)

    def on_epoch_end(self, epoch, logs):
        self.per_epoch.append(dict(self.counts))


@pytest.mark.parametrize("dtype, optimizer, kw", [
    ("float64", "sgd", {"lr": 0.2, "momentum": 0.9, "nesterov": True, "clip_value": 0.3,
                        "clip_norm": 0.4}),
    ("float32", "adam", {"lr": 0.05, "clip_norm": 0.5}),
], ids=["float64-sgd-clip", "float32-adam"])
def test_cuda_fit_matches_the_numpy_backend(dtype, optimizer, kw, monkeypatch, tmp_path):
    want_model, want = _fit("numpy", dtype, optimizer, **kw)
    spy = TransferSpy(monkeypatch)
    model, got = _fit("cuda", dtype, optimizer, callbacks=[spy], **kw)
    monkeypatch.undo()
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(got.history["loss"], want.history["loss"], rtol=rtol)
    np.testing.assert_allclose(got.history["grad_norm"], want.history["grad_norm"], rtol=rtol)
    assert got.history["accuracy"] == want.history["accuracy"]
    assert got.runner == "layers"
    assert got.history["saturated"] == want.history["saturated"]
    assert model.params.dtype == np.dtype(dtype)
    assert_close(model.params, want_model.params, np.dtype(dtype).type, True, "weights")

    # Resident state: after the first epoch's set-up, an epoch of 4 batches moves the
    # shuffled X and T in (2 copies) and the metrics (batch losses, squared norms,
    # non-finite counts), the weights and the diagnostics (logits, the tanh layer's
    # output) out (6 copies), allocates nothing, and never hands a kernel a host array.
    first, second = spy.per_epoch
    steady = {k: second.get(k, 0) - first.get(k, 0) for k in ("h2d", "d2h", "alloc")}
    assert steady == {"h2d": 2, "d2h": 6, "alloc": 0}, spy.per_epoch
    assert spy.host_args == []
    launches = second["launch"] - first["launch"]
    assert 4 * 10 <= launches <= 4 * 20, launches  # the batches run on the device

    if dtype == "float64":  # inference and files on a cuda model: host in, host out
        X, y = _data()
        pred = model.predict(X)
        assert isinstance(pred, np.ndarray)
        np.testing.assert_array_equal(pred, want_model.predict(X))
        assert_close(model.predict_proba(X), want_model.predict_proba(X), np.float64, True)
        assert model.score(X, y) == want_model.score(X, y)
        model.save(tmp_path / "model.npz")  # the host copy of the weights
        clone = fg.load(tmp_path / "model.npz", backend="cuda")
        np.testing.assert_array_equal(clone.params, model.params)
        np.testing.assert_array_equal(clone.predict(X), pred)


def test_cuda_batch_gradient_matches_the_numpy_backend():
    X, y = _data()
    got_model = fg.MLP([5, 4, 3], "gelu", output="softmax", dtype="float64", backend="cuda",
                       seed=2)
    want_model = fg.MLP([5, 4, 3], "gelu", output="softmax", dtype="float64", seed=2)
    got_loss, got = fg.train.batch_gradient(got_model, X[:6], y[:6])
    want_loss, want = fg.train.batch_gradient(want_model, X[:6], y[:6])
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(got, want, np.float64, True, "flat gradient")


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the float64 blow-up itself
def test_cuda_fit_stops_on_a_non_finite_batch_like_the_cpu():
    """The epoch runs through on the device; the runner then replays up to the first bad
    batch, so the error and the kept weights match the layer-by-layer CPU runner."""
    errors, params = [], []
    for backend in ("numpy", "cuda"):
        X, y = _data(8)  # two batches: the second one fails
        m = fg.MLP([5, 4, 3], "relu", dtype="float64", backend=backend, seed=7)
        with pytest.raises(NonFiniteError) as info:
            m.fit(X, y, epochs=1, batch_size=4, optimizer="sgd", lr=1e300, verbose=0)
        e = info.value
        errors.append((e.epoch, e.batch, e.layer, e.what))
        params.append(m.params.copy())
    assert errors[0] == errors[1] and errors[1][1] >= 1, errors
    assert np.isfinite(params[1]).all()
    np.testing.assert_allclose(params[1], params[0], rtol=1e-10)


def test_cuda_trainer_kernels(rng):
    """The kernels the device runner adds: loss into a device slot, per-segment squared
    norms and non-finite counts (one and two stages), clipping by value and by norm
    (float32: where rounding the scale to the dtype matters; the fits cover float64)."""
    dtype = np.float32
    for spec in LOSSES.values():
        pred = (rng.standard_normal((5, 3)) * 3).astype(dtype)
        target = (np.eye(3)[rng.integers(0, 3, 5)] if spec.rowwise
                  else rng.random((5, 3))).astype(dtype)
        out = cuda.to_device(np.full(3, np.nan))
        scratch = cuda.device_array(cuda_backend.loss_scratch_size(spec, 5, 3))
        cuda_backend.loss_forward_into(spec, cuda.to_device(pred), cuda.to_device(target),
                                       out, 1, scratch)
        got = out.copy_to_host()
        assert np.isnan(got[[0, 2]]).all()
        want = fg.get_backend("numpy").loss_forward(spec, pred, target)
        np.testing.assert_allclose(got[1], want, rtol=1e-12, err_msg=spec.name)

    x = rng.standard_normal(200).astype(dtype)
    x[150] = np.inf
    bounds = [0, 7, 140, 200]  # 133 elements > THREADS (32): two-stage partials
    width = cuda_backend.segment_partials(bounds)
    assert width > 1
    sq = cuda.to_device(np.full((2, 3), np.nan))
    bad = cuda.to_device(np.full((2, 3), np.nan))
    cuda_backend.segment_sumsq_into(cuda.to_device(x), cuda.to_device(np.array(bounds)),
                                    cuda.device_array((3, width)),
                                    cuda.device_array((3, width)), sq, bad, 1)
    x64 = x.astype(np.float64)
    want_sq = [np.dot(x64[a:b], x64[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_allclose(sq.copy_to_host()[1], want_sq, rtol=1e-12)
    np.testing.assert_array_equal(bad.copy_to_host()[1], [0, 0, 1])

    g = rng.standard_normal(37).astype(dtype)
    gd = cuda.to_device(g)
    cuda_backend.clip_value_(gd, 0.5)
    want = np.clip(g, -0.5, 0.5)
    np.testing.assert_array_equal(gd.copy_to_host(), want)
    norm_sq = cuda.to_device(np.array([[0.0, 0.0], [float(np.dot(want, want)) - 1.0, 1.0]]))
    cuda_backend.clip_norm_(gd, norm_sq, 1, 0.25)
    assert_close(gd.copy_to_host(), want * dtype(0.25 / np.sqrt(np.dot(want, want))),
                 dtype, False, "clip_norm")


def test_get_kernel_never_serves_a_cpu_kernel_to_cuda(monkeypatch):
    from fastgrad.backends import get_kernel

    assert get_kernel("sgd_update", "cuda") is cuda_backend.sgd_update
    monkeypatch.delattr(cuda_backend, "sgd_update")
    with pytest.raises(AttributeError, match="device backend 'cuda' has no kernel "
                                             "'sgd_update'.*live on the device"):
        get_kernel("sgd_update", "cuda")
    X, y = _data()
    with pytest.raises(AttributeError, match="'sgd_update'"):
        fg.MLP([5, 3], backend="cuda").fit(X, y, optimizer="sgd", epochs=1, verbose=0)
