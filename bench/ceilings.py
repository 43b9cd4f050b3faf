"""Section 1, the ceilings every other figure is a fraction of.

Copy bandwidth: a 64 MiB float32 array copied into a preallocated, already-touched
destination; bytes counted = bytes read + bytes written (2 x 64 MiB). One thread
(np.copyto) and all threads (a Numba prange copy, one contiguous block per thread; and
PyTorch's copy_ with all threads as a cross-check where installed). Matmul: sgemm and
dgemm through np.matmul at 2048 x 2048 x 2048 (2 n^3 FLOPs), one thread and all threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from .peers import NotAvailable, all_threads, require, thread_limit
from .timing import Budget, Stats, fmt_stats, measure

COPY_BYTES = 64 * 2**20
GEMM_N = 2048


@njit(parallel=True, cache=True, nogil=True)
def _parallel_copy(src, dst, blocks):  # pragma: no cover - compiled
    n = src.size
    for c in prange(blocks):
        lo = c * n // blocks
        hi = (c + 1) * n // blocks
        dst[lo:hi] = src[lo:hi]  # a slice copy: LLVM emits memcpy per block


@dataclass
class Ceilings:
    """Measured ceilings: copy GB/s and gemm GFLOP/s by thread count, with their Stats."""

    copy: dict[int, float] = field(default_factory=dict)
    gemm: dict[tuple[str, int], float] = field(default_factory=dict)
    rows: list[tuple[str, int, Stats, str, str]] = field(default_factory=list)
    """(what, threads, Stats, how, rate as text)"""

    def copy_bw(self, threads: int) -> float | None:
        return self.copy.get(threads)

    def sgemm(self, threads: int) -> float | None:
        return self.gemm.get(("float32", threads))


def thread_counts() -> list[int]:
    n = all_threads()
    return [1] if n == 1 else [1, n]


def measure_ceilings(budget: Budget, gemm_n: int = GEMM_N, cross_check: bool = True
                     ) -> Ceilings:
    """Copy bandwidth and gemm rates at 1 and all threads (gemm_n < 2048 only for smoke
    runs; cross_check adds PyTorch's copy where installed)."""
    result = Ceilings()
    n = COPY_BYTES // 4
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    dst.fill(0)  # touch every page before timing
    for t in thread_counts():
        with thread_limit(t):
            if t == 1:
                stats = measure(lambda: np.copyto(dst, src), budget)
                how = "np.copyto"
            else:
                stats = measure(lambda t=t: _parallel_copy(src, dst, t), budget)
                how = f"Numba prange copy, {t} blocks"
            result.copy[t] = 2 * COPY_BYTES / stats.median / 1e9
            result.rows.append(("copy 64 MiB float32", t, stats, how, _gbs(stats)))
            if t > 1 and cross_check:
                try:
                    torch = require("torch")
                    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
                    torch.set_num_threads(t)
                    stats = measure(lambda ts=ts, td=td: td.copy_(ts), budget)
                    result.rows.append(("copy 64 MiB float32", t, stats,
                                        f"torch copy_, {t} threads (cross-check)",
                                        _gbs(stats)))
                except NotAvailable:
                    pass
    assert np.array_equal(src, dst), "the copy kernel did not copy"
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(1)
        a = rng.random((gemm_n, gemm_n)).astype(dtype)
        b = rng.random((gemm_n, gemm_n)).astype(dtype)
        c = np.empty((gemm_n, gemm_n), dtype)
        name = "sgemm" if dtype == np.float32 else "dgemm"
        for t in thread_counts():
            with thread_limit(t):
                stats = measure(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), budget)
            rate = 2 * gemm_n**3 / stats.median / 1e9
            result.gemm[(np.dtype(dtype).name, t)] = rate
            result.rows.append((f"{name} {gemm_n}", t, stats, "np.matmul, BLAS threads via "
                                "threadpoolctl", f"{rate:.0f} GFLOP/s"))
    return result


def _gbs(stats: Stats) -> str:
    return (f"{2 * COPY_BYTES / stats.median / 1e9:.1f} GB/s "
            f"({2 * COPY_BYTES / stats.max / 1e9:.1f}–{2 * COPY_BYTES / stats.min / 1e9:.1f})")


def markdown(c: Ceilings) -> list[str]:
    """The section's table."""
    lines = ["| what | threads | how | median time (min–max) | rate (range) |",
             "|---|---|---|---|---|"]
    for what, t, stats, how, rate in c.rows:
        lines.append(f"| {what} | {t} | {how} | {fmt_stats(stats)} | {rate} |")
    return lines
