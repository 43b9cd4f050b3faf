"""The `fastgrad` command line (also `python -m fastgrad`).

    fastgrad train [--data digits|iris|wine|breast_cancer|diabetes|FILE.csv|FILE.npz] ...
    fastgrad evaluate MODEL.npz [--data ...]
    fastgrad predict MODEL.npz DATA.csv [--out predictions.csv]
    fastgrad info
    fastgrad activations [--plot act.png]

Errors in what the user gave (files, columns, names, data) print one line on stderr and
exit with status 1; set FASTGRAD_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from . import model_file
from .datasets import (
    BUNDLED,
    TASKS,
    DataError,
    Standardizer,
    check_task,
    detect_task,
    load_data,
    load_features,
    train_test_split,
)
from .plots import MissingExtra, require_matplotlib

DTYPES = ("float32", "float64")
TEST_SIZE = 0.2


class CLIError(Exception):
    """A problem with the command's arguments or inputs: printed as one line, exit 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- checks


# argparse prefixes these messages with "argument --name:", so they do not repeat it.


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got "
                                             f"{text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _hidden(text: str) -> list[int]:
    """'128,64' -> [128, 64]; '' or 'none' -> [] (no hidden layer)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer sizes like 128,64, got "
                                         f"{text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be > 0, got {text!r}")
    return sizes


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise CLIError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")
    return value


def _check_activation(name: str) -> str:
    from .activations import get_activation

    try:
        return get_activation(name).name
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _check_backend(name: str | None) -> str | None:
    """None or 'auto' means the fastest available; an unknown or unavailable backend is a
    CLIError naming the reason."""
    if name in (None, "auto"):
        return None
    from .backends import get_backend

    try:
        get_backend(name)
    except ValueError as exc:  # unknown name
        raise CLIError(f"{exc} (or auto)") from None
    except RuntimeError as exc:  # known, but cannot run here
        raise CLIError(str(exc)) from None
    return name


OUTPUT_FOR_TASK = {"regression": "identity", "binary": "sigmoid", "multiclass": "softmax"}


def _labels(y: np.ndarray, task: str) -> np.ndarray:
    """Regression targets as float64; class labels read as floats (1.0, 2.0) as integers,
    so that predictions print as 1, 2."""
    if task == "regression":
        return y.astype(np.float64)
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


def _describe(data, task: str) -> str:
    n, d = data.X.shape
    extra = ""
    if task != "regression":
        extra = f", {len(np.unique(data.y))} classes"
    return f"{data.source}: {n} samples, {d} features, target {data.target_name!r} ({task}{extra})"


# --------------------------------------------------------------------------- train


class _EpochTable:
    """Prints one row per epoch (loss, metric, validation, time) above a tqdm bar over the
    epochs when tqdm is installed and stderr is a terminal."""

    def __init__(self, epochs: int, metric: str, quiet: bool):
        self.metric, self.quiet = metric, quiet
        self.columns: list[str] | None = None
        self.t_last = time.perf_counter()
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=epochs, unit="epoch", leave=False, disable=None,
                                file=sys.stderr)

    def _write(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def row(self, epoch: int, logs: dict) -> None:
        """The fit callback: one row from this epoch's logs."""
        now = time.perf_counter()
        seconds, self.t_last = now - self.t_last, now
        if self.columns is None:
            keys = ["loss", self.metric, "val_loss", f"val_{self.metric}"]
            self.columns = [k for k in keys if k in logs]
            self._write("epoch " + "".join(f"{k:>14}" for k in self.columns) + f"{'time':>9}")
        cells = "".join(f"{logs[k]:>14.4f}" for k in self.columns)
        self._write(f"{epoch + 1:>5} {cells}{seconds:>8.2f}s")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _metric_name(task: str) -> str:
    return "r2" if task == "regression" else "accuracy"


def _metric_label(task: str) -> str:
    return "R^2" if task == "regression" else "accuracy"


def cmd_train(args: argparse.Namespace) -> int:
    """Load, split 80/20 (seeded; stratified for classes), standardize on the training rows,
    fit an MLP, print a row per epoch and the test score; optionally save and plot."""
    import fastgrad as fg
    from fastgrad.optim import make_optimizer

    activation = _check_activation(args.activation)
    backend = _check_backend(args.backend)
    optimizer = make_optimizer(args.optimizer, args.lr)  # unknown names fail here, first
    _check_choice(args.dtype, DTYPES, "dtype")
    if args.plot:
        require_matplotlib()  # fail before training, not after
    data = load_data(args.data, args.target)
    task = detect_task(data.y) if args.task == "auto" else args.task
    check_task(task, data.y)
    y = _labels(data.y, task)
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, y, TEST_SIZE, seed=args.seed, stratify=task != "regression")
    scaler = Standardizer.fit(X_train)

    n_out = 1 if task in ("regression", "binary") else len(np.unique(y))
    sizes = [data.X.shape[1], *args.hidden, n_out]
    model = fg.MLP(sizes, activation=activation, output=OUTPUT_FOR_TASK[task],
                   dtype=args.dtype, backend=backend, seed=args.seed)
    backend_name = backend or fg.available_backends()[0]
    n_val = math.ceil(args.val_split * len(y_train))  # as fit holds them out
    if not args.quiet:
        print(_describe(data, task))
        print(f"model: MLP {'-'.join(map(str, sizes))}, {activation}, {args.optimizer} "
              f"lr={optimizer.lr:g}, batch {args.batch_size}, {args.dtype}, backend "
              f"{backend_name}")
        print(f"split: {len(y_train)} train ({n_val} of them for validation), "
              f"{len(y_test)} test (seed {args.seed}); features standardized on train")
    metric = _metric_name(task)
    table = _EpochTable(args.epochs, metric, args.quiet)
    t0 = time.perf_counter()
    try:
        history = _fit(model, scaler.transform(X_train), y_train, optimizer, args, table)
    finally:
        table.close()
    seconds = time.perf_counter() - t0
    # From here on the model takes raw features: what is scored is what is saved.
    model_file.fold_standardization(model, scaler.mean, scaler.scale)
    score = float(model.score(X_test, y_test))
    epochs_run = len(history["loss"])
    print(f"test {_metric_label(task)}: {score:.4f} on {len(y_test)} samples "
          f"({epochs_run} epochs in {seconds:.2f} s)")
    if args.save:
        path = model_file.save(model, args.save, model_file.TrainingRecord(
            feature_names=data.feature_names, target_name=data.target_name,
            source=data.source, seed=args.seed, test_size=TEST_SIZE, task=task))
        print(f"saved the model to {path}")
    if args.plot:
        from .plots import plot_history

        title = f"{data.source}: MLP {'-'.join(map(str, sizes))} ({activation}, " \
                f"{args.optimizer}); test {_metric_label(task)} {score:.3f}"
        plot_history(history, args.plot, title=title, layer_sizes=sizes)
        print(f"wrote the training curves to {args.plot}")
    return 0


def _fit(model, X, y, optimizer, args: argparse.Namespace, table: _EpochTable) -> dict:
    """model.fit with the command's options; the table prints a row after each epoch."""
    # A diverging run ends in fit's NonFiniteError, which names the epoch and batch; numpy's
    # overflow warnings on the way there would only repeat it less clearly.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = model.fit(
            X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
            validation_split=args.val_split or None, shuffle=True,
            early_stopping=args.early_stopping, callbacks=[table.row], verbose=0)
    return history.history


# --------------------------------------------------------------------------- evaluate, predict


def _check_features(model, record: model_file.TrainingRecord | None, X: np.ndarray,
                    path: str) -> np.ndarray:
    n_in = model.n_features_in_
    if X.shape[1] != n_in:
        names = f" ({', '.join(record.feature_names)})" if record else ""
        raise CLIError(f"{path} has {X.shape[1]} feature columns; the model takes "
                       f"{n_in}{names}")
    return X


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a saved model: on the held-out test rows when --data is the data it was trained
    on (the same seeded split), else on every row of --data."""
    model, record = model_file.load(args.model)
    source = args.data or (record.source if record else None)
    if source is None:
        raise CLIError(f"{args.model} does not record its training data; pass --data")
    target = args.target
    if target is None and record is not None and not record.source_is_bundled:
        target = record.target_name  # the column the model learned, in this file too
    data = load_data(source, target)
    task = record.task if record else model.task
    y = _labels(data.y, task)
    X = data.X
    if record is not None and set(record.feature_names) <= set(data.feature_names):
        # the model's columns by name, whatever their order in this file
        X = X[:, [data.feature_names.index(n) for n in record.feature_names]]
    X = _check_features(model, record, X, source)
    split = args.split
    if split == "auto":
        split = "test" if record is not None and source == record.source else "all"
    if split == "test":
        if record is None:
            raise CLIError(f"{args.model} does not record its split; use --split all")
        _, X, _, y = train_test_split(X, y, record.test_size, seed=record.seed,
                                      stratify=task != "regression")
    score = float(model.score(X, y))
    which = "held-out test rows" if split == "test" else "rows"
    print(f"{args.model} on {source}: {_metric_label(task)} {score:.4f} over {len(y)} "
          f"{which}")
    if task == "regression":
        pred = np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
        err = pred - np.asarray(y, dtype=np.float64)
        print(f"RMSE {np.sqrt(np.mean(err ** 2)):.4f}, MAE {np.mean(np.abs(err)):.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predictions for each row of a CSV (or .npz X), one per line, with a header; with
    --proba also each class's probability. To --out FILE or stdout."""
    model, record = model_file.load(args.model)
    X = load_features(args.data, record.feature_names if record else None,
                      model.n_features_in_)
    Xs = _check_features(model, record, X, args.data)
    pred = np.asarray(model.predict(Xs)).reshape(-1)
    header = ["prediction"]
    columns = [pred]
    if args.proba:
        task = record.task if record else model.task
        if task == "regression":
            raise CLIError("--proba applies to classifiers; this model does regression")
        proba = np.asarray(model.predict_proba(Xs))
        header += [f"p_{c}" for c in model.classes_]
        columns += list(proba.T)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for row in zip(*columns):
            writer.writerow([_cell(v) for v in row])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(pred)} predictions to {args.out}", file=sys.stderr)
    return 0


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


# --------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    """Version, backends (available or why not), Numba threads and threading layer, BLAS,
    the compiled module, GPU."""
    from . import sysinfo

    for label, value in sysinfo.report():
        print(f"{label + ':':<22}{value}")
    return 0


# --------------------------------------------------------------------------- activations


def cmd_activations(args: argparse.Namespace) -> int:
    """List the activation table; with --plot draw each f and f' on [-5, 5]."""
    from .activations import ACTIVATIONS

    backend = _check_backend(args.backend)
    if args.plot:
        from .plots import plot_activations

        require_matplotlib()
        plot_activations(args.plot, backend=backend)
        print(f"wrote {len(ACTIVATIONS)} activations and their derivatives to {args.plot}")
        return 0
    width = max(map(len, ACTIVATIONS)) + 2
    for spec in ACTIVATIONS.values():
        aliases = f"  (also {', '.join(spec.aliases)})" if spec.aliases else ""
        params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
        print(f"{spec.name:<{width}}{spec.formula}{aliases}")
        print(f"{'':<{width}}{spec.derivative}; backward needs "
              f"{spec.needs or 'nothing'}{'; params: ' + params if params else ''}")
    return 0


# --------------------------------------------------------------------------- parser, main


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the `fastgrad` command and its subcommands."""
    parser = _Parser(
        prog="fastgrad", description="fastgrad: train, evaluate and inspect MLPs built on "
        "fastgrad's compiled kernels.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an MLP (default: digits) and report the test "
                       "score", description=cmd_train.__doc__)
    p.add_argument("--data", default="digits", metavar="NAME|FILE",
                   help=f"a bundled dataset ({', '.join(BUNDLED)}) or a .csv/.npz file "
                   "(default: digits)")
    p.add_argument("--target", metavar="COLUMN", help="the target column of a CSV (name or "
                   "0-based index; default the last) or array of an NPZ (default y)")
    p.add_argument("--task", default="auto", choices=("auto", *TASKS),
                   help="default: guessed from the target")
    p.add_argument("--hidden", type=_hidden, default=[128, 64], metavar="SIZES",
                   help="hidden layer sizes, comma-separated (default 128,64)")
    p.add_argument("--activation", default="relu", help="hidden activation (default relu; "
                   "see `fastgrad activations`)")
    p.add_argument("--optimizer", default="adam", help="adam (default), sgd, adamw or "
                   "rmsprop")
    p.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate (default: the optimizer's, 0.001 for adam)")
    p.add_argument("--epochs", type=_positive(int), default=20,
                   help="default 20")
    p.add_argument("--batch-size", type=_positive(int), default=64,
                   help="default 64")
    p.add_argument("--backend", default="auto", help="auto (fastest available), cython, "
                   "numba, cuda or numpy")
    p.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and "
                   "the shuffling (default 0)")
    p.add_argument("--val-split", type=_fraction, default=0.1, metavar="FRACTION",
                   help="share of the training rows held for validation (default 0.1; 0: "
                   "none)")
    p.add_argument("--early-stopping", type=_positive(int),
                   metavar="PATIENCE", help="stop after this many epochs without a better "
                   "validation loss")
    p.add_argument("--save", metavar="MODEL.npz", help="save the trained model (with its "
                   "recordrocessing) to this file")
    p.add_argument("--plot", metavar="CURVES.png", help="write the loss, metric and "
                   "per-layer gradient norm curves to this PNG (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the test score")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a saved model on data",
                       description=cmd_evaluate.__doc__)
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("--data", metavar="NAME|FILE", help="default: the data it was trained on")
    p.add_argument("--target", metavar="COLUMN")
    p.add_argument("--split", choices=("auto", "test", "all"), default="auto",
                   help="test: the held-out rows of the training split; all: every row "
                   "(default: test for the training data, else all)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict each row of a CSV with a saved model",
                       description=cmd_predict.__doc__)
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("data", metavar="DATA.csv", help="feature columns (a target column the "
                   "model was trained with is ignored), or an .npz with X")
    p.add_argument("--out", metavar="FILE.csv", help="default: standard output")
    p.add_argument("--proba", action="store_true", help="add each class's probability")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="version, backends, threads, BLAS, compiled module, GPU",
                       description=cmd_info.__doc__)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("activations", help="list the activations; --plot draws them",
                       description=cmd_activations.__doc__)
    p.add_argument("--plot", metavar="ACT.png", help="write f and f' of each activation on "
                   "[-5, 5] to this PNG (needs matplotlib)")
    p.add_argument("--backend", default="auto", help="the kernels' backend (default auto)")
    p.set_defaults(func=cmd_activations)
    return parser


# FloatingPointError: fastgrad.NonFiniteError, a loss or gradient that became NaN/inf
_USER_ERRORS = (CLIError, DataError, MissingExtra, model_file.ModelFileError, OSError,
                ValueError, FloatingPointError)


def _one_line_warnings(command: str):
    """warnings.showwarning that prints `fastgrad <command>: warning: ...` on one line
    (gradient health warnings during training read as advice, not as a code location)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"fastgrad {command}: warning: {text}", file=sys.stderr)
    return show


def main(argv: list[str] | None = None) -> int:
    """Run the command; user errors print one line on stderr and return 1."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command)
            return args.func(args)
    except _USER_ERRORS as exc:
        if os.environ.get("FASTGRAD_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            message = f"{exc.filename}: {exc.strerror}"
        print(f"fastgrad {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastgrad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
