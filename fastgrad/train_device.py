"""Training on a device backend (cuda): the layer-by-layer epoch runner with its state
resident on the device.

`DeviceEpochRunner` follows fastgrad.train's `EpochPlan` contract, so `fit` (targets,
validation, diagnostics, early stopping, callbacks, History) is the same code on every
backend. `fit` makes one runner per fit; on its first epoch it allocates on the device,
once for the whole fit:

- the flat parameter vector (every layer's W and b are views into it) and the flat
  gradient buffer (grad_W, grad_b views, written in place by the backward kernels);
- the optimizer's state (`Optimizer.bind` allocates it on a device backend);
- per layer, a full batch's activations (and pre-activations where the activation's
  backward needs them) and the backward scratch (the gradient w.r.t. its input);
- the training rows X and targets T (the epoch's shuffled copy is uploaded into them);
- the epoch's metrics: batch losses and per-layer squared gradient norms (float64);
- a snapshot of the parameters and optimizer state (see non-finite batches below).

Transfers per epoch, none between batches: the epoch's shuffled X and T in (one copy
each: the whole epoch at once, not batch by batch), the parameters in only when the host
copy changed since the runner last wrote it (a callback, a restored best epoch), the
parameters out once (fit's diagnostics, early stopping, callbacks and `save` read
`model.params`), and the metrics out (batch losses, squared norms, non-finite counts: three
small arrays). The end-of-epoch diagnostics pass runs on the device with the resident
weights and the diagnostic rows uploaded once per fit; only the logits and the
activations a statistic needs (pre-activations of ReLU layers, outputs of sigmoid/tanh
layers) come back.

Non-finite batches: whether a batch's loss or gradient is finite is known on the device
only, and asking after every batch would stall the GPU on a copy per batch. So an epoch
runs through; when its metrics show a non-finite batch j, the runner restores the
parameters and optimizer state of the epoch's start from the device snapshot, replays
batches 0..j-1 (bit for bit: every kernel is deterministic, no atomics), computes batch j's
loss and gradients without updating, and returns j, as the contract asks.

Every kernel comes from the device backend itself through `get_kernel`, which refuses to
stand a CPU kernel in for a missing device one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import get_backend, get_kernel

_KERNELS = ("linear_forward", "linear_backward_into", "loss_forward_into", "loss_backward",
            "loss_scratch_size", "segment_partials", "segment_sumsq_into", "clip_value_",
            "clip_norm_")


class DeviceEpochRunner:
    """An epoch runner (EpochPlan in, batches completed out) for a device backend, its
    state on the device for the whole fit (see the module docstring). Also answers fit's
    end-of-epoch forward passes (`layer_outputs`) with the resident weights."""

    layer_by_layer = True  # history.runner reports "layers": one kernel per op, not fused

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.be = get_backend(backend)
        self.k = {name: get_kernel(name, backend) for name in _KERNELS}
        self.params = None
        self._diag: tuple[Any, Any] | None = None  # (host X, its device copy)
        self._diag_buffers: dict[int, list] = {}

    # --- allocation, once per fit ------------------------------------------------------
    def _setup(self, plan) -> None:
        be = self.be
        dtype = plan.params.dtype
        n, B = len(plan.X), min(plan.batch_size, len(plan.X))
        self.params = be.to_device(plan.params)
        self.mirror = plan.params.copy()  # the host values the device holds
        # Written in full before they are read (the backward kernels cover every element
        # of the flat gradient, each batch its metrics row): no fill needed.
        self.grads = be.empty(plan.params.shape, dtype)
        self.layers, self.grad_W, self.grad_b = [], [], []
        for (W, _b, spec, pa, pb), s in zip(plan.layers, plan.layer_slices):
            n_w = W.size
            self.layers.append((self.params[s.start:s.start + n_w].reshape(W.shape),
                                self.params[s.start + n_w:s.stop], spec, pa, pb))
            self.grad_W.append(self.grads[s.start:s.start + n_w].reshape(W.shape))
            self.grad_b.append(self.grads[s.start + n_w:s.stop])
        # Per layer: its output, its pre-activation (when the backward needs it) and the
        # gradient w.r.t. its output (the next layer's grad_x; the loss's for the last).
        self.out = [be.empty((B, W.shape[1]), dtype) for W, *_ in plan.layers]
        self.pre = [be.empty((B, W.shape[1]), dtype) if spec.needs == "x" else None
                    for W, _, spec, *_ in plan.layers]
        self.grad_out = [be.empty((B, W.shape[1]), dtype) for W, *_ in plan.layers]
        self.X = be.empty(plan.X.shape, dtype)
        self.T = be.empty(plan.T.shape, dtype)
        nb, L = plan.n_batches, len(plan.layers)
        self.batch_loss = be.empty((nb,), np.float64)
        self.grad_sq = be.empty((nb, L), np.float64)
        self.bad = be.empty((nb, L), np.float64)
        self.clip_sq = be.empty((1, L), np.float64)
        self.clip_bad = be.empty((1, L), np.float64)
        bounds = [s.start for s in plan.layer_slices] + [plan.layer_slices[-1].stop]
        self.bounds = be.to_device(np.asarray(bounds, np.int64))
        width = self.k["segment_partials"](bounds)
        self.psq = be.empty((L, width), np.float64)
        self.pbad = be.empty((L, width), np.float64)
        self.loss_scratch = be.empty(
            (max(1, self.k["loss_scratch_size"](plan.loss, B, plan.T.shape[1])),), np.float64)
        self.snap_params = be.empty(plan.params.shape, dtype)
        state = [] if plan.optimizer is None else plan.optimizer.state()
        self.snap_state = [be.empty(s.shape, s.dtype) for s in state]
        self.prev = be.empty(plan.params.shape, dtype)
        self.n = n

    # --- one batch ---------------------------------------------------------------------
    def _forward_backward(self, plan, i: int) -> None:
        """Batch i forward, its loss into batch_loss[i], backward into the flat grads,
        and its per-layer squared norms / non-finite counts into grad_sq[i], bad[i]."""
        k = self.k
        B = plan.batch_size
        lo, hi = i * B, min((i + 1) * B, self.n)
        r = hi - lo
        a = self.X[lo:hi]
        t = self.T[lo:hi]
        inputs, saved = [], []
        for L, (W, b, spec, pa, pb) in enumerate(self.layers):
            inputs.append(a)
            out = self.out[L][:r]
            pre = None if self.pre[L] is None else self.pre[L][:r]
            k["linear_forward"](a, W, b, out, pre, spec, pa, pb)
            saved.append(pre if spec.needs == "x" else out if spec.needs == "y" else None)
            a = out
        k["loss_forward_into"](plan.loss, a, t, self.batch_loss, i, self.loss_scratch)
        g = self.grad_out[-1][:r]
        k["loss_backward"](plan.loss, a, t, g)
        for L in range(len(self.layers) - 1, -1, -1):
            W, _, spec, pa, pb = self.layers[L]
            grad_x = self.grad_out[L - 1][:r] if L > 0 else None
            # g is its own scratch: the activation's backward overwrites it in place.
            k["linear_backward_into"](g, inputs[L], W, saved[L], spec, pa, pb, g, grad_x,
                                      self.grad_W[L], self.grad_b[L])
            g = grad_x
        k["segment_sumsq_into"](self.grads, self.bounds, self.psq, self.pbad, self.grad_sq,
                                self.bad, i)

    def _update(self, plan, i: int) -> None:
        """Clip (by value, then by global norm) and one optimizer step, on the device."""
        if plan.clip_value is not None:
            self.k["clip_value_"](self.grads, plan.clip_value)
        if plan.clip_norm is not None:
            sq, row = self.grad_sq, i
            if plan.clip_value is not None:  # the norm of the clipped gradient
                self.k["segment_sumsq_into"](self.grads, self.bounds, self.psq, self.pbad,
                                             self.clip_sq, self.clip_bad, 0)
                sq, row = self.clip_sq, 0
            self.k["clip_norm_"](self.grads, sq, row, plan.clip_norm)
        plan.optimizer.step(self.params, self.grads, plan.lr)

    # --- the epoch (the EpochPlan contract) --------------------------------------------
    def __call__(self, plan) -> int:
        be = self.be
        if self.params is None:
            self._setup(plan)
        elif not np.array_equal(plan.params, self.mirror):
            be.upload(self.params, plan.params)
        be.upload(self.X, plan.X)
        be.upload(self.T, plan.T)
        opt = plan.optimizer
        be.copy_device(self.snap_params, self.params)
        for snap, s in zip(self.snap_state, opt.state()):
            be.copy_device(snap, s)
        steps = opt.steps
        nb = plan.n_batches
        for i in range(nb):
            self._forward_backward(plan, i)
            self._update(plan, i)
        be.download(self.batch_loss, plan.batch_loss)
        be.download(self.grad_sq, plan.grad_sq)
        bad = be.to_host(self.bad)
        ok = np.isfinite(plan.batch_loss) & (bad.sum(axis=1) == 0)
        done = nb if ok.all() else int(np.argmin(ok))
        if done < nb:
            self._replay(plan, done, steps)
        be.download(self.params, plan.params)
        self.mirror[...] = plan.params
        return done

    def _replay(self, plan, bad: int, steps: int) -> None:
        """Back to the epoch's start, batches 0..bad-1 again, then batch `bad` without its
        update; the host gets its gradients and the parameters before the last update."""
        be, opt = self.be, plan.optimizer
        be.copy_device(self.params, self.snap_params)
        for s, snap in zip(opt.state(), self.snap_state):
            be.copy_device(s, snap)
        opt.steps = steps
        for i in range(bad):
            self._forward_backward(plan, i)
            if i == bad - 1:
                be.copy_device(self.prev, self.params)
            self._update(plan, i)
        self._forward_backward(plan, bad)
        be.download(self.grads, plan.grads)
        if bad > 0:
            plan.last_good = be.to_host(self.prev)

    def gradient(self, plan) -> float:
        """The mean loss of plan.X as one batch, its flat gradient into plan.grads (host);
        no update (plan.optimizer may be None). For fastgrad.train.batch_gradient."""
        self._setup(plan)
        self.be.upload(self.X, plan.X)
        self.be.upload(self.T, plan.T)
        self._forward_backward(plan, 0)
        self.be.download(self.grads, plan.grads)
        return float(self.be.to_host(self.batch_loss)[0])

    # --- forward passes for fit's diagnostics ------------------------------------------
    def layer_outputs(self, X: np.ndarray, wants: list[str | None]):
        """(logits, taken): X (host) through the resident weights; taken[k] is layer k's
        pre-activation ("pre"), output ("a") or None as wants[k] says, copied to the host
        (the logits too). X is uploaded once and reused while the same array comes back."""
        be = self.be
        if self._diag is None or self._diag[0] is not X:
            self._diag = (X, be.to_device(X))
            self._diag_buffers = {}
        a = self._diag[1]
        rows = len(X)
        buffers = self._diag_buffers
        taken = []
        for k, (W, b, spec, pa, pb) in enumerate(self.layers):
            if k not in buffers:
                buffers[k] = (be.empty((rows, W.shape[1]), W.dtype),
                              be.empty((rows, W.shape[1]), W.dtype))
            out, pre = buffers[k]
            self.k["linear_forward"](a, W, b, out, pre, spec, pa, pb)
            want = wants[k]
            taken.append(be.to_host(pre) if want == "pre" else
                         be.to_host(out) if want == "a" else None)
            a = out
        return be.to_host(a), taken
