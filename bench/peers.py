"""Which peers are here, and one thread setting for all of them.

Peers are imported lazily and only once; an absent or broken one is reported with the
reason instead of failing the run. `thread_limit(n)` sets every pool this process can
run (BLAS and OpenMP through threadpoolctl, Numba's, PyTorch's intra-op) to n threads,
so no two pools of different sizes spin at once and each row can state its setting.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing, no warnings

_CACHE: dict[str, tuple[ModuleType | None, str]] = {}


class NotAvailable(Exception):
    """A row cannot be measured here; the message says why."""


def load(name: str) -> tuple[ModuleType | None, str]:
    """(module, "") or (None, reason) for a peer: 'torch', 'jax', 'sklearn', 'matplotlib',
    'threadpoolctl'."""
    if name not in _CACHE:
        try:
            module = importlib.import_module(name)
            if name == "jax":
                importlib.import_module("jax.numpy")
            _CACHE[name] = (module, "")
        except Exception as exc:  # absent or broken: the reason goes into the report
            _CACHE[name] = (None, f"{name} not importable: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}")
    return _CACHE[name]


def require(name: str) -> ModuleType:
    module, reason = load(name)
    if module is None:
        raise NotAvailable(reason)
    return module


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Run the block with n threads in BLAS, OpenMP, Numba and PyTorch (JAX's XLA pool is
    fixed when JAX starts and is reported as such)."""
    import numba

    tpc, _ = load("threadpoolctl")
    torch = _CACHE.get("torch", (None, ""))[0]  # only if a section already imported it
    old_numba = numba.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(n)
    limiter = (tpc.threadpool_limits(limits=n) if tpc is not None
               else contextlib.nullcontext())
    try:
        with limiter:
            yield
    finally:
        numba.set_num_threads(old_numba)
        if torch is not None:
            torch.set_num_threads(old_torch)


def fastgrad_backends(wanted: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(compiled backends to measure, {backend: reason} for the ones that cannot run).

    The numpy backend is fastgrad's float64-faithful oracle, not a performance backend;
    it is measured only when asked for by name."""
    import fastgrad

    info = fastgrad.backend_info()
    names = wanted or [b for b in info if b not in ("numpy", "cuda")]
    ok = [b for b in names if info.get(b, {}).get("available")]
    missing = {b: str(info.get(b, {}).get("reason") or "unknown backend")
               for b in names if b not in ok}
    return ok, missing
