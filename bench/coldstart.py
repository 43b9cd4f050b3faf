"""Section 6: cold start, a fresh process's import + model build + first training step.

Each run is a new interpreter (`python -c`), timed from inside (perf_counter from the
first line: import, build, first step) and from outside (process start to exit, which
adds the interpreter's own start-up). The model is 784-256-128-10, ReLU, softmax
cross-entropy, SGD, float32, one batch of 128. fastgrad runs twice: with its Numba cache
warm (the default cache, filled by one untimed run first) and empty (NUMBA_CACHE_DIR set
to a fresh temporary directory for every run, so every kernel compiles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .machine import ROOT

_PRELUDE = """
import time, json
t0 = time.perf_counter()
"""
_EPILOGUE = """
t3 = time.perf_counter()
print("COLDSTART " + json.dumps({"import": t1 - t0, "build": t2 - t1, "step": t3 - t2,
                                 "total": t3 - t0, "how": how}))
"""

FASTGRAD = _PRELUDE + """
import numpy as np
import fastgrad as fg
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.standard_normal((128, 784)).astype(np.float32)
y = rng.integers(0, 10, 128)
sizes = [784, 256, 128, 10]
if hasattr(fg, "MLP"):
    import inspect
    sig = inspect.signature(fg.MLP).parameters
    model = fg.MLP(sizes, **{k: v for k, v in dict(activation="relu", dtype="float32",
                                                   seed=0).items() if k in sig})
    t2 = time.perf_counter()
    fsig = inspect.signature(model.fit).parameters
    extra = {k: v for k, v in dict(batch_size=128, optimizer="sgd", lr=0.01, verbose=0,
                                   shuffle=False).items() if k in fsig}
    model.fit(X, y, epochs=1, **extra)
    how = "fastgrad.MLP(...).fit(one batch of 128, epochs=1)"
else:
    Ws = [(rng.standard_normal((a, b)).astype(np.float32) * 0.05, np.zeros(b, np.float32))
          for a, b in zip(sizes[:-1], sizes[1:])]
    t2 = time.perf_counter()
    hs, pres, h = [], [], X
    for k, (W, b) in enumerate(Ws):
        hs.append(h)
        h, pre = fg.linear_forward(h, W, b, activation="relu" if k < 2 else None,
                                   return_pre=True)
        pres.append(pre)
    p = fg.softmax_forward(h)
    p[np.arange(128), y] -= 1
    g = p / 128
    for k in (2, 1, 0):
        gx, gW, gb = fg.linear_backward(g, hs[k], Ws[k][0], pre=pres[k],
                                        activation="relu" if k < 2 else None,
                                        need_grad_x=k > 0)
        Ws[k][0][...] -= 0.01 * gW
        Ws[k][1][...] -= 0.01 * gb
        g = gx
    how = ("fastgrad kernels, one call per layer (fastgrad.MLP not in this checkout), "
           f"default backend {fg.available_backends()[0]}")
""" + _EPILOGUE

TORCH = _PRELUDE + """
import torch
t1 = time.perf_counter()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
X = torch.randn(128, 784)
y = torch.randint(0, 10, (128,))
t2 = time.perf_counter()
opt.zero_grad()
loss = torch.nn.functional.cross_entropy(model(X), y)
loss.backward()
opt.step()
how = "torch eager: nn.Sequential, cross_entropy, backward, SGD step"
""" + _EPILOGUE

JAX = _PRELUDE + """
import jax, jax.numpy as jnp
t1 = time.perf_counter()
key = jax.random.PRNGKey(0)
sizes = [784, 256, 128, 10]
params = [(jax.random.normal(key, (a, b)) * 0.05, jnp.zeros(b))
          for a, b in zip(sizes[:-1], sizes[1:])]
X = jax.random.normal(key, (128, 784))
y = jax.random.randint(key, (128,), 0, 10)
def loss_fn(p, x, y):
    h = x
    for W, b in p[:-1]:
        h = jax.nn.relu(h @ W + b)
    logp = jax.nn.log_softmax(h @ p[-1][0] + p[-1][1])
    return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()
step = jax.jit(lambda p, x, y: jax.tree_util.tree_map(lambda w, g: w - 0.01 * g, p,
                                                      jax.grad(loss_fn)(p, x, y)))
t2 = time.perf_counter()
jax.block_until_ready(step(params, X, y))
how = "jax.jit of the whole step, first call (tracing + XLA compile)"
""" + _EPILOGUE

SCRIPTS = {"fastgrad": FASTGRAD, "torch": TORCH, "jax": JAX}


@dataclass
class ColdRow:
    name: str
    inside: list[dict]          # per run: import, build, step, total (seconds)
    outside: list[float]        # per run: process wall time
    how: str = ""
    note: str = ""


def _run_child(script: str, env: dict[str, str], timeout: float) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("COLDSTART "):
            return json.loads(line[len("COLDSTART "):]), wall
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"exit {proc.returncode}: {tail[:200]}")


def _available(name: str) -> str:
    """'' when the child can import the library, else the reason."""
    if name == "fastgrad":
        return ""
    import importlib.util
    return "" if importlib.util.find_spec(name) else f"{name} not installed"


def run_coldstart(repeat: int, timeout: float = 300.0) -> list[ColdRow]:
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base.setdefault("JAX_PLATFORMS", "cpu")
    plans = [("fastgrad, warm Numba cache", "fastgrad", "warm"),
             ("fastgrad, empty Numba cache", "fastgrad", "empty"),
             ("torch", "torch", None), ("jax", "jax", None)]
    rows = []
    for label, lib, cache in plans:
        why = _available(lib)
        if why:
            rows.append(ColdRow(label, [], [], note=why))
            continue
        row = ColdRow(label, [], [])
        try:
            if cache == "warm":
                _run_child(SCRIPTS[lib], base, timeout)  # fills the cache; not counted
            for _ in range(repeat):
                env = dict(base)
                with tempfile.TemporaryDirectory(prefix="fastgrad-numba-cache-") as tmp:
                    if cache == "empty":
                        env["NUMBA_CACHE_DIR"] = tmp
                    inside, wall = _run_child(SCRIPTS[lib], env, timeout)
                row.inside.append(inside)
                row.outside.append(wall)
                row.how = inside.get("how", "")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row.note = f"failed: {exc}"
        rows.append(row)
    return rows
