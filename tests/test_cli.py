"""The `fastgrad` command, run as a user runs it: `python -m fastgrad ...` in a fresh
process, in a temporary directory, with the source tree on PYTHONPATH."""

from __future__ import annotations

import csv
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--epochs", "4", "--hidden", "16", "--batch-size", "32", "--lr", "0.01"]


def fastgrad(*args: str, cwd: pathlib.Path, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("FASTGRAD_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "fastgrad", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def score_line(stdout: str) -> tuple[str, float]:
    """(metric, value) from the final "test accuracy: 0.97" line."""
    match = re.search(r"^test (accuracy|R\^2): (-?[0-9.]+)", stdout, re.M)
    assert match, stdout
    return match.group(1), float(match.group(2))


def epoch_losses(stdout: str) -> list[float]:
    """The loss column of the per-epoch table."""
    return [float(m.group(1)) for m in re.finditer(r"^\s+\d+\s+([0-9.]+)", stdout, re.M)]


def assert_png(path: pathlib.Path, min_size: tuple[int, int] = (300, 300)) -> None:
    """A real PNG that matplotlib reads back, of a sensible size, not blank."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = pytest.importorskip("matplotlib.image").imread(path)
    h, w = image.shape[:2]
    assert h >= min_size[0] and w >= min_size[1], image.shape
    assert h <= 4000 and w <= 4000, image.shape
    assert image[..., :3].std() > 0.05  # something is drawn on the white canvas


def write_csv(path: pathlib.Path, header: list[str], rows) -> pathlib.Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_blobs(path: pathlib.Path) -> pathlib.Path:
    """Three well separated classes with string labels, 2 features."""
    rng = np.random.default_rng(0)
    centers = {"red": (-4.0, 0.0), "green": (4.0, 0.0), "blue": (0.0, 5.0)}
    rows = []
    for label, (cx, cy) in centers.items():
        for _ in range(60):
            rows.append([f"{cx + rng.normal():.4f}", f"{cy + rng.normal():.4f}", label])
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return write_csv(path, ["x1", "x2", "color"], rows)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """(directory, blobs.csv, stdout of `fastgrad train ... --save model.npz`): one
    trained model shared by the tests that use it."""
    tmp = tmp_path_factory.mktemp("blobs")
    data = _write_blobs(tmp / "blobs.csv")
    train = fastgrad("train", "--data", data.name, "--save", "model.npz", "--epochs", "30",
                     "--hidden", "8", "--lr", "0.01", "--seed", "3", cwd=tmp)
    return tmp, data, train.stdout


# --------------------------------------------------------------------------- train

@pytest.mark.parametrize("name, metric", [
    ("digits", "accuracy"), ("iris", "accuracy"), ("wine", "accuracy"),
    ("breast_cancer", "accuracy"), ("diabetes", "R^2"),
])
def test_train_on_each_bundled_dataset(name, metric, tmp_path):
    pytest.importorskip("sklearn")
    proc = fastgrad("train", "--data", name, *SMALL, cwd=tmp_path)
    got_metric, score = score_line(proc.stdout)
    assert got_metric == metric
    losses = epoch_losses(proc.stdout)
    assert len(losses) == 4, proc.stdout
    assert losses[-1] < losses[0], proc.stdout  # it learns
    if metric == "accuracy":
        assert 0.0 <= score <= 1.0
    else:
        assert score <= 1.0


@pytest.mark.slow
def test_train_without_arguments_learns_digits(tmp_path):
    pytest.importorskip("sklearn")
    proc = fastgrad("train", cwd=tmp_path)
    assert "digits" in proc.stdout and "MLP 64-128-64-10" in proc.stdout
    assert len(epoch_losses(proc.stdout)) == 20
    metric, score = score_line(proc.stdout)
    assert metric == "accuracy" and score >= 0.9, proc.stdout


def test_save_predict_evaluate_round_trip(blobs):
    tmp_path, blobs_csv, train_stdout = blobs
    assert "multiclass" in train_stdout
    _, test_accuracy = score_line(train_stdout)
    assert (tmp_path / "model.npz").exists()

    fastgrad("predict", "model.npz", blobs_csv.name, "--out", "pred.csv", "--proba",
             cwd=tmp_path)
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(blobs_csv, newline="") as f:
        truth = [r["color"] for r in csv.DictReader(f)]
    assert len(rows) == len(truth)
    assert set(rows[0]) == {"prediction", "p_blue", "p_green", "p_red"}
    agree = np.mean([r["prediction"] == t for r, t in zip(rows, truth)])
    assert agree > 0.9  # well separated blobs
    sums = [sum(float(r[f"p_{c}"]) for c in ("blue", "green", "red")) for r in rows]
    assert np.allclose(sums, 1.0, atol=1e-4)

    # without --out the predictions go to stdout, same values
    stdout = fastgrad("predict", "model.npz", blobs_csv.name, cwd=tmp_path).stdout
    assert stdout.splitlines()[1:] == [r["prediction"] for r in rows]

    # evaluate finds the same held-out rows as train and reports the same score
    evaluation = fastgrad("evaluate", "model.npz", cwd=tmp_path).stdout
    assert f"accuracy {test_accuracy:.4f}" in evaluation, (train_stdout, evaluation)
    every_row = fastgrad("evaluate", "model.npz", "--split", "all", cwd=tmp_path).stdout
    assert f"over {len(truth)} rows" in every_row


def test_regression_from_npz_with_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.standard_normal(300)
    np.savez(tmp_path / "lin.npz", X=X, y=y)
    proc = fastgrad("train", "--data", "lin.npz", "--epochs", "40", "--hidden", "16",
                    "--lr", "0.01", "--plot", "curves.png", "--save", "lin_model",
                    cwd=tmp_path)
    metric, score = score_line(proc.stdout)
    assert metric == "R^2" and score > 0.9, proc.stdout
    assert_png(tmp_path / "curves.png", (300, 600))
    saved = "lin_model.npz" if (tmp_path / "lin_model.npz").exists() else "lin_model"
    out = fastgrad("predict", saved, "lin.npz", cwd=tmp_path).stdout.splitlines()
    assert out[0] == "prediction" and len(out) == 301
    pred = np.array([float(v) for v in out[1:]])
    assert 1 - np.mean((pred - y) ** 2) / np.var(y) > 0.9


def test_csv_target_by_index_and_binary_task(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 2))
    label = (X[:, 0] + X[:, 1] > 0).astype(int)
    write_csv(tmp_path / "b.csv", ["label", "a", "b"],
              [[int(t), f"{a:.5f}", f"{b:.5f}"] for t, (a, b) in zip(label, X)])
    proc = fastgrad("train", "--data", "b.csv", "--target", "0", *SMALL, cwd=tmp_path)
    assert "binary" in proc.stdout and "target 'label'" in proc.stdout


# --------------------------------------------------------------------------- info, activations


def test_info(tmp_path):
    out = fastgrad("info", cwd=tmp_path)
    import fastgrad as fg

    assert f"fastgrad:             {fg.__version__}" in out.stdout
    for name in fg.backend_info():
        assert re.search(rf"^backend {name}:\s+(available|not available \(.+\))$",
                         out.stdout, re.M), out.stdout
    assert "numba threads:" in out.stdout and "threading layer:" in out.stdout
    assert "compiled module:" in out.stdout and "GPU:" in out.stdout
    assert out.stderr == ""  # nothing initialized that warns
    # ... and Numba's thread pool is left unstarted (starting it picks a layer, which can warn)
    assert "(chosen at the first parallel kernel)" in out.stdout


def test_activations_list_and_plot(tmp_path):
    import fastgrad as fg

    listing = fastgrad("activations", cwd=tmp_path).stdout
    for name in fg.ACTIVATIONS:
        assert re.search(rf"^{name}\s", listing, re.M)
    pytest.importorskip("matplotlib")
    fastgrad("activations", "--plot", "act.png", "--backend", "numpy", cwd=tmp_path)
    assert_png(tmp_path / "act.png", (600, 800))


def test_python_dash_m_and_version(tmp_path):
    import fastgrad as fg

    out = fastgrad("--version", cwd=tmp_path).stdout
    assert out.strip() == f"fastgrad {fg.__version__}"


# --------------------------------------------------------------------------- errors


@pytest.fixture
def bad_files(tmp_path) -> pathlib.Path:
    (tmp_path / "ok.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    (tmp_path / "short_row.csv").write_text("a,b,y\n1,2,0\n3,4\n5,6,1\n")
    (tmp_path / "text.csv").write_text("a,b,y\n1,2,0\n3,four,1\n")
    (tmp_path / "nan.csv").write_text("a,b,y\n1,2,0\n3,nan,1\n5,6,0\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    (tmp_path / "adir.csv").mkdir()
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    (tmp_path / "notzip.npz").write_text("this is not an archive")
    np.savez(tmp_path / "nan.npz", X=np.array([[1.0, 2.0], [np.nan, 4.0]]), y=np.ones(2))
    return tmp_path


@pytest.mark.parametrize("args, fragments", [
    (["train", "--data", "missing.csv"], ["no such file: missing.csv"]),
    (["train", "--data", "adir.csv"], ["adir.csv", "directory"]),
    (["train", "--data", "binary.csv"], ["cannot read binary.csv"]),
    (["train", "--data", "short_row.csv"], ["short_row.csv line 3", "expected 3 fields"]),
    (["train", "--data", "text.csv"], ["text.csv line 3", "'b'", "'four' is not a number"]),
    (["train", "--data", "nan.csv"], ["nan.csv line 3", "'b'", "NaN"]),
    (["train", "--data", "nan.npz"], ["nan.npz: X has 1 NaN", "index (1, 0)"]),
    (["train", "--data", "ok.csv", "--target", "price"], ["unknown column 'price'",
                                                          "a, b, y"]),
    (["train", "--activation", "relux"], ["unknown activation 'relux'"]),
    (["train", "--backend", "tpu"], ["unknown backend 'tpu'", "numba"]),
    (["train", "--optimizer", "lbfgs"], ["unknown optimizer 'lbfgs'"]),
    (["train", "--hidden", "64,x"], ["argument --hidden: expected layer sizes like 128,64"]),
    (["evaluate", "foreign.npz"], ["foreign.npz is not a fastgrad model file"]),
    (["evaluate", "notzip.npz"], ["notzip.npz is not a", "fastgrad model file"]),
    (["predict", "ok.csv", "ok.csv"], ["ok.csv is not a", "fastgrad model file"]),
    (["predict", "missing.npz", "ok.csv"], ["no such file: missing.npz"]),
    (["activations", "--backend", "tpu"], ["unknown backend 'tpu'"]),
])
def test_errors_are_one_line(args, fragments, bad_files):
    proc = fastgrad(*args, cwd=bad_files, check=False)
    line = assert_one_line_error(proc, *fragments)
    assert line.startswith(f"fastgrad {args[0]}: error: ")


def test_predict_with_wrong_columns(blobs):
    tmp_path = blobs[0]
    write_csv(tmp_path / "three.csv", ["p", "q", "r"], [[1, 2, 3]])
    proc = fastgrad("predict", "model.npz", "three.csv", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "three.csv has 3 columns", "takes 2 features (x1, x2)")


def test_saved_model_takes_raw_features_from_python(blobs):
    """The standardization is folded into the first layer: fastgrad.load(...).predict on
    the raw columns gives what `fastgrad predict` gives."""
    import fastgrad as fg

    tmp_path, blobs_csv, _ = blobs
    model = fg.load(tmp_path / "model.npz")
    with open(blobs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    X = np.array([[float(r["x1"]), float(r["x2"])] for r in rows])
    stdout = fastgrad("predict", "model.npz", blobs_csv.name, cwd=tmp_path).stdout
    assert list(model.predict(X)) == stdout.splitlines()[1:]


@pytest.mark.parametrize("blocked, args", [
    ("matplotlib", ["activations", "--plot", "a.png"]),
    ("matplotlib", ["train", "--data", "iris", "--plot", "c.png"]),
    ("sklearn", ["train", "--data", "iris"]),
])
def test_missing_extra_is_named(blocked, args, tmp_path):
    """Without matplotlib or scikit-learn the error names the extra that installs it (and
    --plot fails before any training)."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from fastgrad.cli import main\n"
            f"sys.exit(main({args!r}))")
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "pip install 'fastgrad[train]'")
    assert "epoch" not in proc.stdout


def test_warnings_print_as_one_line(capsys):
    import warnings

    from fastgrad.cli import _one_line_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warnings("train")
        warnings.warn("exploding gradients in layer 0:\n norm 1e5", RuntimeWarning,
                      stacklevel=1)
    assert capsys.readouterr().err == ("fastgrad train: warning: exploding gradients in "
                                       "layer 0: norm 1e5\n")


def test_console_script_is_the_same_main():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fastgrad"] == "fastgrad.cli:main"
    assert "from .cli import main" in (ROOT / "fastgrad" / "__main__.py").read_text()
