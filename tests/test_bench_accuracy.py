"""bench/peer_accuracy.py runs, and its figures for fastgrad agree with the ulp bounds the
kernel tests hold (so the table it writes beside the peers' can be trusted)."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it lives beside the package
    sys.path.insert(0, str(ROOT))

import fastgrad as fg  # noqa: E402
from bench import peer_accuracy  # noqa: E402


def _ulp(cell: str) -> float:
    return float(cell.split(" ")[0])


def test_peer_accuracy_table_for_fastgrad(monkeypatch):
    monkeypatch.setattr(peer_accuracy, "peer_table", _no_peers)
    rows = peer_accuracy.measure(1 << 14)
    assert {(n, p) for n, p, _ in rows} == {(n, p) for n in peer_accuracy.NAMES
                                            for p in ("fwd", "bwd")}
    for name, pas, cells in rows:
        assert cells["torch"] == ("n/a (not installed here)",) * len(cells["torch"])
        for backend in ("numba", "cython"):
            views = cells[f"fastgrad-{backend}"]
            # forward: within 4 ulp of the result; backward: of max(|result|, |g|)
            worst = _ulp(views[0] if pas == "fwd" else views[2])
            assert 0 <= worst <= 4, (name, pas, backend, views)
    text = peer_accuracy.render(rows, 1 << 14)
    assert text.count("| gelu | fwd |") == 2 and text.count("| gelu | bwd |") == 3


def _no_peers(peer):
    raise peer_accuracy.NotAvailable("not installed here")


def test_ulp_error_counts_nan_and_matching_infinities_as_exact():
    import numpy as np
    got = np.array([np.nan, np.inf, 1.0, 0.0], np.float32)
    ref = np.array([np.nan, np.inf, np.nan, 2.0 ** -149])
    err = peer_accuracy.ulp_error(got, ref, rowwise=False)
    assert err[0] == 0 and err[1] == 0 and err[2] == np.inf
    assert err[3] == 1.0  # one subnormal step
    assert fg  # the package under test is importable beside bench/
