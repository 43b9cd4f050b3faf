"""PNG pictures for the command line: training curves and the activation table.

matplotlib is an optional dependency (the ``train`` extra); it is imported here only, with
the Agg backend (files only, never a window), and its absence raises `MissingExtra`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .activations import ACTIVATIONS, ActivationSpec


class MissingExtra(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def require_matplotlib() -> None:
    """MissingExtra (naming the extra to install) when matplotlib is not installed."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("plotting needs matplotlib, which is not installed: "
                           "pip install 'fastgrad[train]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


METRIC_LABELS = {"accuracy": "accuracy", "r2": "R²"}


def grad_norms(history: Mapping[str, Sequence]) -> np.ndarray | None:
    """Per-layer gradient norms as an (epochs, layers) array, from ``history["grad_norm"]``
    (one sequence of per-layer norms per epoch) or from ``grad_norm_<layer>`` keys; None
    when the history has neither."""
    if history.get("grad_norm"):
        rows = [np.atleast_1d(np.asarray(r, dtype=float)) for r in history["grad_norm"]]
        return np.vstack(rows)
    keys = sorted((k for k in history if k.startswith("grad_norm_") and history[k]),
                  key=lambda k: int(k.rsplit("_", 1)[1]) if k.rsplit("_", 1)[1].isdigit()
                  else 0)
    if not keys:
        return None
    return np.column_stack([np.asarray(history[k], dtype=float) for k in keys])


def plot_history(history: Mapping[str, Sequence], path: str, *, title: str = "",
                 layer_sizes: Sequence[int] | None = None) -> str:
    """Write a PNG with three panels over the epochs: the loss (train and validation), the
    metric (accuracy or R², train and validation) and each layer's gradient norm on a log
    scale, where vanishing or exploding gradients show at a glance. layer_sizes (the
    model's widths) labels each layer with its shape. Returns `path`."""
    plt = _pyplot()
    metric = next((m for m in METRIC_LABELS if history.get(m) or history.get(f"val_{m}")),
                  None)
    norms = grad_norms(history)
    panels = ["loss"] + ([metric] if metric else []) + (["grad"] if norms is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2),
                             squeeze=False, constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        if panel == "grad":
            epochs = np.arange(1, len(norms) + 1)
            for layer in range(norms.shape[1]):
                ax.plot(epochs, norms[:, layer], marker="." if len(epochs) < 30 else None,
                        label=f"layer {layer + 1}" + (
                            f" ({layer_sizes[layer]}→{layer_sizes[layer + 1]})"
                            if layer_sizes and len(layer_sizes) > norms.shape[1] else ""))
            ax.set_yscale("log")
            ax.set_title("gradient norm per layer")
            ax.set_ylabel("gradient norm (log scale)")
        else:
            for key, label, style in ((panel, "train", "-"), (f"val_{panel}", "validation",
                                                              "--")):
                values = history.get(key)
                if values:
                    epochs = np.arange(1, len(values) + 1)
                    ax.plot(epochs, values, style, marker="." if len(epochs) < 30 else None,
                            label=label)
            name = METRIC_LABELS.get(panel, panel)
            ax.set_title(name)
            ax.set_ylabel(name)
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if panel == "grad":  # one entry per layer: beside the panel, off the curves
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def activation_curves(spec: ActivationSpec, x: np.ndarray, backend: str | None = None):
    """(f(x), f'(x)) on the points x (1-D float64) through the fastgrad kernels themselves.

    Elementwise activations take x directly. A row-wise one (softmax) acts on a vector, so
    it is shown on two-element rows [x, 0]: its first output and the derivative of that
    output with respect to x (softmax([x, 0])_0 is the logistic sigmoid of x)."""
    from .functional import backward, forward

    if spec.rowwise:
        rows = np.column_stack([x, np.zeros_like(x)])
        y = forward(spec.name, rows, backend=backend)
        seed = np.zeros_like(rows)
        seed[:, 0] = 1.0  # the VJP with e_0 is row 0 of the Jacobian; its entry 0 is dy0/dx0
        dy = backward(spec.name, seed, x=rows, y=y, backend=backend)
        return y[:, 0], dy[:, 0]
    y = forward(spec.name, x, backend=backend)
    dy = backward(spec.name, np.ones_like(x), x=x, y=y, backend=backend)
    return y, dy


def plot_activations(path: str, *, names: Sequence[str] | None = None,
                     backend: str | None = None, lo: float = -5.0, hi: float = 5.0) -> str:
    """Write a PNG with one panel per activation of the table (or of `names`): f and f' on
    [lo, hi], computed by the kernels. Returns `path`."""
    plt = _pyplot()
    specs = [ACTIVATIONS[n] for n in (names or ACTIVATIONS)]
    x = np.linspace(lo, hi, 1001)
    cols = 4 if len(specs) > 9 else 3
    rows = -(-len(specs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, spec in zip(axes.flat, specs):
        y, dy = activation_curves(spec, x, backend)
        label = f"{spec.name}([x, 0])₀" if spec.rowwise else "f(x)"
        ax.plot(x, y, lw=2, label=label)
        ax.plot(x, dy, "--", lw=1.6, label="f′(x)" if not spec.rowwise else "∂/∂x")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.axvline(0, color="0.6", lw=0.6)
        ax.set_title(spec.name, fontsize=11, fontweight="bold")
        ax.set_xlim(lo, hi)
        top = min(max(float(np.max(y)), float(np.max(dy)), 1.0) * 1.08, hi * 1.05)
        bottom = max(min(float(np.min(y)), float(np.min(dy)), 0.0), -hi)
        ax.set_ylim(bottom - 0.08 * (top - bottom), top)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
    for ax in list(axes.flat)[len(specs):]:
        ax.set_visible(False)
    fig.suptitle(f"fastgrad activations and their derivatives on [{lo:g}, {hi:g}]",
                 fontsize=13)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
