"""What the backends' fused epoch runners share: the adapter from `fastgrad.train.EpochPlan`
to a compiled epoch kernel, kept once per model in plan.cache.

A backend's adapter (a `FitAdapter` subclass) holds what its kernel takes, built once per
model (views into the trainer's flat buffers, a workspace), and implements two launches:
`run` (rows lo:hi of the plan's epoch, from a given optimizer step) and `run_epochs`
(several epochs, fit's blocks). This module adds the parts that are the same whatever the
kernel: the adapter cache and its fast path, the plan checks every fused runner makes,
the optimizer's state arrays, and the trainer's contract around a launch (epoch-start
copies; on a non-finite batch whose previous update broke the weights, the deterministic
replay that hands fit the weights before that update in plan.last_good; a block that fails
puts the parameters, optimizer state and step count back).

Nothing here imports a backend; the backends import it.
"""

from __future__ import annotations

import numpy as np

_OPTIM = None  # fastgrad.optim, imported on first use (it imports the backends)


def optimizer_state(opt) -> tuple[str, tuple, dict]:
    """(fused optimizer name, (a, b) flat state arrays of `opt`, hyper-parameters) for an
    optimizer of fastgrad.optim (exact types: a subclass may change the update): sgd (the
    velocity twice), adam/adamw (m, v), rmsprop (momentum_buf, square_avg); ValueError when
    it has no fused equivalent."""
    global _OPTIM
    if _OPTIM is None:  # an import statement per epoch costs ~1 us
        from .. import optim
        _OPTIM = optim
    SGD, Adam, AdamW, RMSprop = _OPTIM.SGD, _OPTIM.Adam, _OPTIM.AdamW, _OPTIM.RMSprop
    kind = type(opt)
    if kind is SGD:
        return "sgd", (opt.velocity, opt.velocity), {"momentum": opt.momentum,
                                                      "nesterov": opt.nesterov}
    if kind in (Adam, AdamW):
        return kind.name, (opt.m, opt.v), {"beta1": opt.beta1, "beta2": opt.beta2,
                                           "eps": opt.eps}
    if kind is RMSprop:
        return "rmsprop", (opt.momentum_buf, opt.square_avg), {
            "alpha": opt.alpha, "eps": opt.eps, "momentum": opt.momentum}
    raise ValueError(f"optimizer {type(opt).__name__} has no fused update")


def written_state(opt_name: str, hyper: dict) -> tuple[int, ...]:
    """Which of optimizer_state's (a, b) arrays an update writes: sgd a (the velocity) with
    momentum; adam/adamw both; rmsprop b, and a with momentum."""
    uses_a = hyper.get("momentum", 0.0) != 0 or opt_name in ("adam", "adamw")
    uses_b = opt_name != "sgd"
    return tuple(i for i, used in enumerate((uses_a, uses_b)) if used)


def representable(value: float, dtype) -> bool:
    """Whether `value` is 0 or a normal number of `dtype` (no overflow, no flush to 0): a
    hyper-parameter a kernel computing in that dtype takes as given."""
    finfo = np.finfo(dtype)
    return value == 0 or finfo.tiny <= abs(value) <= finfo.max


def hyper_values(plan, hyper: dict) -> dict[str, float]:
    """The scalars of the update and of clipping by name, for the kernels' hyper-parameter
    vectors (each takes them in its own order): `hyper` (optimizer_state's) with the
    neutral value where the optimizer has none, weight decay, lr and clipping (0 = off)."""
    return {"lr": plan.lr, "momentum": hyper.get("momentum", 0.0),
            "beta1": hyper.get("beta1", 0.9), "beta2": hyper.get("beta2", 0.999),
            "eps": hyper.get("eps", 1e-8), "weight_decay": plan.optimizer.weight_decay,
            "alpha": hyper.get("alpha", 0.99), "clip_norm": plan.clip_norm or 0.0,
            "clip_value": plan.clip_value or 0.0}


def plan_reason(plan, losses) -> str | None:
    """Why no fused runner can run `plan` whatever its backend, or None: float32/float64
    parameters, logits out of the last layer, a loss in `losses`, an optimizer bound to the
    parameters with a fused equivalent (optimizer_state), X and T C-contiguous 2-D arrays
    of the parameters' dtype, fewer than 2**31 rows."""
    dtype = plan.params.dtype
    if dtype not in (np.float32, np.float64):
        return f"dtype {dtype} (float32 or float64 only)"
    if plan.layers[-1][2].name != "identity":
        return f"the last layer applies {plan.layers[-1][2].name!r}, not logits"
    if plan.loss.name not in losses:
        return f"loss {plan.loss.name!r}"
    if plan.optimizer.__dict__.get("_size") is None:
        return "the optimizer is not bound to the parameters"
    try:
        optimizer_state(plan.optimizer)
    except (ValueError, AttributeError) as exc:
        return str(exc)
    for name, arr in (("X", plan.X), ("T", plan.T)):
        if arr.dtype != dtype or not arr.flags.c_contiguous or arr.ndim != 2:
            return f"{name} is not a C-contiguous 2-D {dtype} array"
    if len(plan.X) >= 2**31:
        return f"{len(plan.X)} rows per epoch (fewer than 2**31)"
    return None


DATA_PARALLEL_MIN_FLOPS = 1.5e6
"""A fused runner splits each batch into parts of its rows, one per thread (data-parallel:
each part's forward and backward, then the parts' gradients summed) when one batch's
matmuls take at least this many FLOPs (6 * batch * the weights' count): below it the
barriers and the sum of the gradients cost as much as the smaller products save. Measured
(cython runner, float32 SGD, 2 threads against 1 part, 2026-11-29): 64-64-10 at batch 32
(0.9 MFLOP) 0.97x, at 64 (1.8 MFLOP) 1.33x, at 128 1.49x; 64-100-10 at 200 (digits)
1.45x; 784-128-10 at 32 1.71x."""
DATA_PARALLEL_MIN_ROWS = 8
"""... and each part gets at least this many of the batch's rows."""


def data_parallel_parts(plan, available: int) -> int:
    """How many parts a fused runner splits each batch of `plan` into: 1 below
    DATA_PARALLEL_MIN_FLOPS a batch, else `available` (the threads its pool may use), at
    most one per DATA_PARALLEL_MIN_ROWS rows. The parts fix the arithmetic (the training's
    bits), so they follow the thread settings only, never the load: a runner runs them on
    fewer threads when the cores are busy, with the same result."""
    if available <= 1:
        return 1
    flops = 6 * plan.batch_size * sum(W.size for W, *_rest in plan.layers)
    if flops < DATA_PARALLEL_MIN_FLOPS:
        return 1
    return max(1, min(available, plan.batch_size // DATA_PARALLEL_MIN_ROWS))


def check_launch(plan, count: int) -> None:
    """ValueError unless plan.T has a row per row of plan.X and plan.batch_loss (>= count,)
    and plan.grad_sq (>= count, L) are float64 arrays that hold `count` batches: a kernel
    that reads and writes them without bounds checks (numba's) relies on it."""
    if len(plan.T) != len(plan.X):
        raise ValueError(f"plan.T has {len(plan.T)} rows, plan.X {len(plan.X)}: one target "
                         f"row per input row")
    bl, gs = plan.batch_loss, plan.grad_sq
    # (once per epoch of a fit: kept to plain comparisons, ~0.4 us)
    if not (type(bl) is np.ndarray and bl.dtype == np.float64 and bl.ndim == 1
            and len(bl) >= count):
        raise ValueError(f"plan.batch_loss must be a float64 array of shape (>= {count},), "
                         f"got {getattr(bl, 'dtype', type(bl).__name__)} "
                         f"{getattr(bl, 'shape', '')}")
    if not (type(gs) is np.ndarray and gs.dtype == np.float64 and gs.ndim == 2
            and len(gs) >= count and gs.shape[1] == len(plan.layers)):
        raise ValueError(f"plan.grad_sq must be a float64 array of shape (>= {count}, "
                         f"{len(plan.layers)}), got {getattr(gs, 'dtype', type(gs).__name__)} "
                         f"{getattr(gs, 'shape', '')}")


def check_block(plan, orders) -> None:
    """What a block of epochs reads and writes by index, checked (numba's kernel does not
    check them itself; cython's does): `orders` an int64 (E, n) array of row indices in
    [0, n) (n = len(plan.X)) or (E, 0), and check_launch for E epochs' batches."""
    n = len(plan.X)
    if not isinstance(orders, np.ndarray) or orders.dtype != np.int64:
        raise TypeError(f"orders must be an int64 numpy.ndarray, got "
                        f"{getattr(orders, 'dtype', type(orders).__name__)}")
    if orders.ndim != 2 or orders.shape[1] not in (0, n):
        raise ValueError(f"orders must be (E, {n}) or (E, 0), got shape {orders.shape}")
    if orders.size and (orders.min() < 0 or orders.max() >= n):
        raise ValueError(f"orders must hold row indices in [0, {n})")
    check_launch(plan, len(orders) * plan.n_batches)


class FitAdapter:
    """What a fused runner keeps per model between epochs and fits (subclasses add what
    their kernel takes): the optimizer's state arrays (the optimizer's own, so switching
    runners or fitting again continues the same state) and epoch-start copies for the
    non-finite replay. Subclasses set `cache_name` (their key in plan.cache) and implement
    `configure`, `run` and `run_epochs`."""

    cache_name = ""

    def __init__(self, plan, opt_name: str, state_arrays: tuple) -> None:
        self.key = self.key_of(plan, state_arrays)
        self.last: tuple | None = None  # what for_plan last matched (its fast path)
        self.configured: tuple | None = None  # the run-time switches last configured
        self.opt_name = opt_name
        self.state_arrays = state_arrays
        self.start_params = np.empty_like(plan.params)
        self.start_state = tuple(np.empty_like(a) for a in state_arrays)

    @staticmethod
    def key_of(plan, state_arrays) -> tuple:
        # Identities of every buffer the adapter points into (it holds them, so an id
        # cannot be reused while it lives), and what it is built for. (activations by name:
        # comparing ActivationSpec dataclasses field by field costs more than the rest)
        acts = tuple((spec.name, a, b) for _W, _b, spec, a, b in plan.layers)
        return (id(plan.params), id(plan.grads), plan.batch_size, acts,
                tuple(id(a) for a in state_arrays), tuple(W.shape for W, *_ in plan.layers))

    @classmethod
    def for_plan(cls, plan, opt_name: str, state_arrays: tuple) -> FitAdapter:
        """The model's adapter from plan.cache, built when missing or when the plan no
        longer matches it."""
        cache = plan.cache if plan.cache is not None else {}
        adapter = cache.get(cls.cache_name)
        # Fast path, every epoch of a fit after its first: the very objects of the last
        # call (fit builds plan.layers once per fit; the adapter holds them, so none is a
        # new object at a reused address). An epoch of a small net lasts ~150 us: the full
        # key costs ~1%.
        last = adapter.last if adapter is not None else None
        if (last is not None and last[0] is plan.layers and last[1] is plan.params
                and last[2] is plan.grads and last[3] == plan.batch_size
                and last[4] == tuple(map(id, state_arrays))):
            return adapter
        if adapter is None or adapter.key != cls.key_of(plan, state_arrays):
            adapter = cache[cls.cache_name] = cls(plan, opt_name, state_arrays)
        adapter.last = (plan.layers, plan.params, plan.grads, plan.batch_size,
                        tuple(map(id, state_arrays)))
        return adapter

    def configure(self, plan, hyper: dict, use_order: bool) -> None:
        """Write the plan's switches and hyper-parameters where the kernel reads them."""
        raise NotImplementedError

    def run(self, plan, lo: int, hi: int, step: int) -> int:
        """Rows lo:hi of the epoch (lo a multiple of the batch size) through the kernel
        from optimizer step `step`, plan.optimizer.steps left at the updates made; returns
        the number of batches completed (offset by lo's)."""
        raise NotImplementedError

    def run_epochs(self, plan, orders: np.ndarray, step: int) -> tuple[int, int]:
        """The epochs of `orders` (see train_epochs) from optimizer step `step`: (epochs
        completed, the step count after them)."""
        raise NotImplementedError

    def _save_start(self, plan, written: tuple[int, ...]) -> None:
        # epoch-start copies for the replay, of the state arrays the update writes only
        # (plain sgd writes none; sgd's two slots are one array): a few us per epoch saved,
        # which is several percent of an epoch of a small net
        np.copyto(self.start_params, plan.params)
        for i in written:
            np.copyto(self.start_state[i], self.state_arrays[i])

    def _restore_start(self, plan, written: tuple[int, ...]) -> None:
        np.copyto(plan.params, self.start_params)
        for i in written:
            np.copyto(self.state_arrays[i], self.start_state[i])


def configured(cls: type[FitAdapter], plan, use_order: bool) -> tuple[FitAdapter, tuple]:
    """(the plan's adapter of class `cls`, configured for it; the update's written state)."""
    opt_name, state_arrays, hyper = optimizer_state(plan.optimizer)
    ad = cls.for_plan(plan, opt_name, state_arrays)
    ad.configure(plan, hyper, use_order)
    return ad, written_state(opt_name, hyper)


def train_epoch(cls: type[FitAdapter], plan) -> int:
    """One epoch of `plan` through `cls`'s kernel with the epoch runners' contract
    (fastgrad.train.EpochPlan): fills plan.batch_loss and plan.grad_sq and returns the
    batches completed; on a non-finite batch whose previous update left non-finite weights,
    replays the epoch up to that update (deterministic, from epoch-start copies) to hand fit
    the weights before it in plan.last_good, at no cost to the epochs that stay finite."""
    ad, written = configured(cls, plan, use_order=False)
    start_step = plan.optimizer.steps
    ad._save_start(plan, written)
    done = ad.run(plan, 0, len(plan.X), start_step)
    if done < plan.n_batches and done > 0 and not np.isfinite(plan.params).all():
        # The update of batch done-1 broke the weights: replay to just before it.
        ad._restore_start(plan, written)
        cut = (done - 1) * plan.batch_size
        if cut:
            ad.run(plan, 0, cut, start_step)
        plan.last_good = plan.params.copy()
        ad.run(plan, cut, len(plan.X), plan.optimizer.steps)
    else:
        plan.last_good = None
    return done


def train_epochs(cls: type[FitAdapter], plan, orders: np.ndarray) -> int:
    """Several epochs of `plan` in one kernel call (fit's blocks of epochs, for fits that
    need no Python between epochs). plan.X, plan.T: the rows in their original order;
    orders: (E, n) int64, epoch e's row order, or (E, 0) for every epoch in the rows'
    order. plan.batch_loss (E * n_batches,) and plan.grad_sq (E * n_batches, L) receive
    every epoch's batches. Returns E when every batch was finite; otherwise the epochs
    completed before the one that stopped, with the parameters, the optimizer state and
    its step count put back as they were at the call (the caller replays those epochs one
    by one to report the failure with its epoch and batch)."""
    ad, written = configured(cls, plan, use_order=orders.shape[1] > 0)
    opt = plan.optimizer
    start_step = opt.steps
    ad._save_start(plan, written)
    done, step = ad.run_epochs(plan, orders, start_step)
    if done < len(orders):
        ad._restore_start(plan, written)
        opt.steps = start_step
    else:
        opt.steps = step
    return done
