"""Drop-in scikit-learn estimators: `MLPClassifier` and `MLPRegressor` on fastgrad's trainer.

They take scikit-learn's MLP parameters with its names, defaults and meanings
(``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``) plus fastgrad's own
``backend`` and ``dtype``, and train a `fastgrad.MLP` with `fastgrad.SGD` / `fastgrad.Adam`
in ONE ``MLP.fit`` call of up to max_iter epochs: scikit-learn's per-epoch logic
(convergence by ``tol`` over ``n_iter_no_change`` epochs, early stopping on a validation
score, the 'invscaling' and 'adaptive' learning rates) runs as fit's epoch callback, so
every configuration trains on fit's fused compiled epoch runner where the backend has one
(numba, cython: all of them, ``_model.history_.runner == "fused"``), layer by layer
elsewhere.

Conventions kept from scikit-learn (so a model trained here and one trained there on the
same data behave alike):

- Initialization: Glorot-uniform weights AND biases, bound sqrt(6 / (fan_in + fan_out))
  (sqrt(2 / ...) for 'logistic'), drawn from ``random_state`` in scikit-learn's order;
  shuffling and the early-stopping split draw from the same stream. (A fresh regressor's
  output bias then starts at the targets' mean, as `fastgrad.MLP.fit` does.)
- Loss: log-loss (sigmoid + binary cross-entropy for two classes, softmax + cross-entropy
  for more) or half the mean squared error, plus the L2 penalty on the weights only (not
  the biases): per batch of n_b samples, 0.5 * alpha * sum_k ||W_k||^2 / n_b, gradient
  alpha * W_k / n_b (the optimizers' ``decay="sklearn"`` convention, which both of
  fit's epoch runners implement). ``loss_curve_`` records the epoch's sample-weighted mean of the
  batch losses, penalty included, exactly as scikit-learn does.
- Optimizers: the update formulas are PyTorch's (see fastgrad.optim); with a constant
  learning rate they equal scikit-learn's (Adam differs only in where epsilon sits).

Predictions are computed in float64 from the weights whatever ``dtype`` (see
`_BaseMLP._forward`), so a row's prediction does not depend on the batch it comes in.

Not supported (clear errors): solver='lbfgs', loss='poisson', multilabel targets,
sample_weight, sparse X. ``max_fun`` is accepted for signature compatibility and unused
(it only concerns lbfgs).

Importing `fastgrad` does not import scikit-learn; importing this module does.
"""

from __future__ import annotations

import math
import numbers
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6: no validate_data, no __sklearn_tags__
    import sklearn

    raise ImportError(f"fastgrad.sklearn needs scikit-learn >= 1.6, found "
                      f"{sklearn.__version__}: pip install 'fastgrad[sklearn]'") from None

from . import functional as F
from .activations import get_activation
from .nn import MLP
from .optim import SGD, Adam, Optimizer
from .targets import target_indices
from .train import NonFiniteError

__all__ = ["MLPClassifier", "MLPRegressor"]

_SKLEARN_ACTIVATION = {"sigmoid": "logistic"}  # fastgrad name -> scikit-learn's, where they differ
_FLOAT_DTYPES = (np.float64, np.float32)


# --- parameter validation (in fit, never in __init__, as scikit-learn requires) -----------

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_real(name: str, value: Any, low: float, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> float:
    ok = _is_real(value) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        interval = (("(" if low_open else "[") + f"{low:g}, {high:g}"
                    + (")" if high_open or high == math.inf else "]"))
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class _BaseMLP(BaseEstimator):
    """Shared fit / partial_fit / predict machinery; see MLPClassifier and MLPRegressor."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, backend=None, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype

    # --- parameters -------------------------------------------------------------------
    def _check_params(self) -> dict[str, Any]:
        """The parameters validated and normalized; ValueError naming the bad one."""
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if _is_int(sizes) else sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(_is_int(s) and s >= 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be a positive integer or a sequence "
                             f"of positive integers, got {self.hidden_layer_sizes!r}")
        if not isinstance(self.activation, str):
            raise ValueError(f"activation must be a name ('identity', 'logistic', 'tanh', "
                             f"'relu' or any fastgrad activation), got {self.activation!r}")
        activation = get_activation(self.activation).name  # ValueError naming known ones
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fastgrad's estimators "
                             "(they train with compiled mini-batch steps); use "
                             "solver='adam' or 'sgd', or sklearn.neural_network for lbfgs")
        _check_choice("solver", self.solver, ("sgd", "adam"))
        if not (self.batch_size == "auto" or (_is_int(self.batch_size)
                                              and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an integer >= 1, got "
                             f"{self.batch_size!r}")
        _check_choice("learning_rate", self.learning_rate,
                      ("constant", "invscaling", "adaptive"))
        if not (self.n_iter_no_change == np.inf or (_is_int(self.n_iter_no_change)
                                                    and self.n_iter_no_change >= 1)):
            raise ValueError(f"n_iter_no_change must be an integer >= 1 or numpy.inf, got "
                             f"{self.n_iter_no_change!r}")
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            _check_bool(name, getattr(self, name))
        if not (_is_int(self.verbose) or isinstance(self.verbose, (bool, np.bool_))):
            raise ValueError(f"verbose must be a bool or an integer, got {self.verbose!r}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise ValueError(f"backend must be a backend name or None, got {self.backend!r}")
        return {
            "sizes": sizes,
            "activation": activation,
            "alpha": _check_real("alpha", self.alpha, 0.0),
            "learning_rate_init": _check_real("learning_rate_init",
                                              self.learning_rate_init, 0.0, low_open=True),
            "power_t": _check_real("power_t", self.power_t, 0.0),
            "max_iter": _check_int("max_iter", self.max_iter),
            "tol": _check_real("tol", self.tol, 0.0),
            "momentum": _check_real("momentum", self.momentum, 0.0, 1.0),
            "validation_fraction": _check_real("validation_fraction",
                                               self.validation_fraction, 0.0, 1.0,
                                               high_open=True),
            "beta_1": _check_real("beta_1", self.beta_1, 0.0, 1.0, high_open=True),
            "beta_2": _check_real("beta_2", self.beta_2, 0.0, 1.0, high_open=True),
            "epsilon": _check_real("epsilon", self.epsilon, 0.0, low_open=True),
            "max_fun": _check_int("max_fun", self.max_fun),
            "dtype": dtype,
        }

    # --- fitting ----------------------------------------------------------------------
    def _fit(self, X: Any, y: Any, incremental: bool):
        params = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, targets = self._validate_input(X, y, incremental, reset=first_pass)
        X = np.ascontiguousarray(X, dtype=params["dtype"])
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(X, targets, params)
        else:
            self._check_compatible(params)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer(params)
        self._fit_stochastic(X, targets, params, incremental)
        return self

    def _architecture(self, params: dict, n_features: int, n_outputs: int) -> dict:
        return {"layer_sizes": [n_features, *params["sizes"], n_outputs],
                "activation": params["activation"], "dtype": params["dtype"].name,
                "backend": self.backend}

    def _check_compatible(self, params: dict) -> None:
        want = self._architecture(params, self.n_features_in_, self.n_outputs_)
        if want != self._arch:
            changed = sorted(k for k in want if want[k] != self._arch[k])
            raise ValueError(f"warm_start / partial_fit continue the fitted network, but "
                             f"{', '.join(changed)} changed since it was fit "
                             f"({ {k: self._arch[k] for k in changed} } -> "
                             f"{ {k: want[k] for k in changed} }); refit from scratch "
                             "with warm_start=False")

    def _initialize(self, X: np.ndarray, targets: np.ndarray, params: dict) -> None:
        n_outputs = self._n_outputs_for(targets)
        self._arch = self._architecture(params, X.shape[1], n_outputs)
        model = MLP(self._arch["layer_sizes"], activation=params["activation"],
                    output=self._output_activation(), dtype=params["dtype"],
                    backend=self.backend, seed=0)
        # scikit-learn's initialization (its _init_coef), from random_state, in its order.
        factor = 2.0 if params["activation"] == "sigmoid" else 6.0
        for layer in model.layers:
            bound = math.sqrt(factor / (layer.d_in + layer.d_out))
            layer.W[...] = self._random_state.uniform(-bound, bound, (layer.d_in, layer.d_out))
            layer.b[...] = self._random_state.uniform(-bound, bound, layer.d_out)
        self._model = model
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(self._arch["layer_sizes"])
        out = model.output
        self.out_activation_ = _SKLEARN_ACTIVATION.get(out, out)
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._best_params = model.params.copy()
        self._link_parameters()

    def _link_parameters(self) -> None:
        """coefs_ / intercepts_ as views of the model's weights (scikit-learn's shapes:
        (fan_in, fan_out) and (fan_out,)), so they always show the current values."""
        self.coefs_ = [layer.W for layer in self._model.layers]
        self.intercepts_ = [layer.b for layer in self._model.layers]

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "_model" in self.__dict__:  # pickled views came back as copies: re-link
            self._link_parameters()

    def _make_optimizer(self, params: dict) -> Optimizer:
        """SGD or Adam with scikit-learn's L2 penalty (decay="sklearn": alpha * W / n_b on
        the weights only, its penalty in the loss)."""
        lr, alpha = params["learning_rate_init"], params["alpha"]
        if self.solver == "sgd":
            momentum = params["momentum"]
            return SGD(lr=lr, momentum=momentum,
                       nesterov=bool(self.nesterovs_momentum) and momentum > 0,
                       weight_decay=alpha, decay="sklearn")
        return Adam(lr=lr, beta1=params["beta_1"], beta2=params["beta_2"],
                    eps=params["epsilon"], weight_decay=alpha, decay="sklearn")

    def _set_lr(self, lr: float) -> None:
        """Change the learning rate the way scikit-learn's SGD does. It keeps the rate
        inside its velocity (v = mu v - lr g; p += v), PyTorch's formula outside it
        (v = mu v + g; p -= lr v): scaling v by old / new when the rate changes keeps the
        two updates identical after the change too. In place, so the fused runner's views
        of the velocity see it."""
        opt = self._optimizer
        velocity = getattr(opt, "velocity", None)
        if velocity is not None and lr != opt.lr:
            velocity *= velocity.dtype.type(opt.lr / lr)
        opt.lr = float(lr)

    def _fit_stochastic(self, X: np.ndarray, targets: np.ndarray, params: dict,
                        incremental: bool) -> None:
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early = self.early_stopping
        if early:
            # scikit-learn stratifies the split only for single-output classification
            stratify = targets if is_classifier(self) and self.n_outputs_ == 1 else None
            X_train, X_val, T_train, T_val = train_test_split(
                X, targets, random_state=self._random_state,
                test_size=params["validation_fraction"], stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
        else:
            X_train, T_train, X_val, T_val = X, targets, None, None
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped", stacklevel=4)
            batch_size = min(self.batch_size, n)
        order = np.arange(n)

        def shuffle(epoch: int) -> np.ndarray:
            # scikit-learn reshuffles the previous epoch's order from random_state:
            # sklearn.utils.shuffle(order, random_state=rs), whose draw is exactly this
            # (tested), without its ~1 ms of argument checks per epoch
            nonlocal order
            perm = np.arange(n)
            self._random_state.shuffle(perm)
            order = order[perm]
            return order

        stopped = False

        def end_epoch(epoch: int, logs: dict) -> bool:
            """scikit-learn's end of an iteration; True stops training."""
            nonlocal stopped
            self.n_iter_ += 1
            self.loss_ = logs["loss"]  # the runners add the L2 penalty (decay="sklearn")
            self.t_ += n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            self._update_no_improvement_count(early, X_val, T_val, params["tol"])
            self._iteration_ends(params)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early else "Training loss"
                msg = (f"{what} did not improve more than tol={params['tol']:f} for "
                       f"{self.n_iter_no_change} consecutive epochs.")
                if self._trigger_stopping(msg):
                    stopped = True
                    return True
                self._no_improvement_count = 0
            return False

        def quiet_epochs(epoch: int) -> float:
            """Epochs from `epoch` on in which end_epoch cannot act (fit may run them as
            one block): it stops (or cuts adaptive's rate) only when the no-improvement
            count passes n_iter_no_change, at least n_iter_no_change - count + 1 epochs
            away; under early stopping it scores the current weights every epoch, under
            invscaling it sets the rate every epoch."""
            if early or self._rate_set_every_epoch():
                return 0
            return self.n_iter_no_change - self._no_improvement_count

        callback = SimpleNamespace(on_epoch_end=end_epoch, quiet_epochs=quiet_epochs)
        max_iter = 1 if incremental else params["max_iter"]
        self.n_iter_ = 0
        try:
            self._model.fit(
                X_train, T_train, epochs=max_iter, batch_size=batch_size,
                optimizer=self._optimizer, shuffle=shuffle if self.shuffle else False,
                verbose=0, health=False, callbacks=[callback],
                classes=np.arange(len(self.classes_)) if is_classifier(self) else None)
        except NonFiniteError as err:
            raise ValueError(f"Solver produced non-finite values ({err}). The input "
                             "data may contain large values and need to be "
                             "preprocessed.") from err
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        else:
            if not stopped and not incremental and self.n_iter_ == max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({max_iter}) "
                              "reached and the optimization hasn't converged yet.",
                              ConvergenceWarning, stacklevel=4)
        if early:
            self._model.params[...] = self._best_params

    def _update_no_improvement_count(self, early: bool, X_val, T_val, tol: float) -> None:
        if early:
            score = self._validation_score(X_val, T_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._model.params.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _iteration_ends(self, params: dict) -> None:
        """scikit-learn's 'invscaling' schedule: lr = lr_init / (t_ + 1) ** power_t, t_ the
        samples seen so far (sgd only; adam keeps its learning rate)."""
        if self._rate_set_every_epoch():
            self._set_lr(params["learning_rate_init"] / (self.t_ + 1) ** params["power_t"])

    def _rate_set_every_epoch(self) -> bool:
        """Whether _iteration_ends sets a new learning rate after every epoch."""
        return self.solver == "sgd" and self.learning_rate == "invscaling"

    def _trigger_stopping(self, msg: str) -> bool:
        """Stop, or with sgd and learning_rate='adaptive' divide the learning rate by 5
        (until it falls to 1e-6), as scikit-learn does."""
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self._optimizer.lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_lr(self._optimizer.lr / 5.0)
        if self.verbose:
            print(msg + f" Setting learning rate to {self._optimizer.lr:f}")
        return False

    # --- prediction ---------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        # classes_ alone (set by partial_fit's classes= before training) is not fitted
        return "_model" in self.__dict__

    def _check_X(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float64)

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """The network's raw outputs (logits) (n_samples, n_outputs_), in float64 whatever
        the training dtype: a float32 product's last bit depends on how BLAS blocks the
        rows, so float32 predictions would change with the batch a row is predicted in
        (by ~1e-7); in float64 that noise is far below anything a prediction shows."""
        a = np.ascontiguousarray(X, dtype=np.float64)
        model = self._model
        for k, layer in enumerate(model.layers):
            spec, kw = model.hidden_activation(k)
            a = F.linear_forward(a, layer.W.astype(np.float64), layer.b.astype(np.float64),
                                 activation=spec.name, backend=model.backend, **kw)
        return a

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def _labels_of(y: np.ndarray) -> np.ndarray:
    """unique_labels(y) for a 1-D y that check_classification_targets accepted: np.unique
    for numbers and booleans, the same sorted values in the same dtype, without
    unique_labels' second type_of_target (digits' validation 0.47 -> 0.36 ms); other
    labels (strings, objects) through unique_labels itself."""
    return np.unique(y) if y.dtype.kind in "biuf" else unique_labels(y)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's ``MLPClassifier`` on fastgrad.

    Parameters are scikit-learn's (same names, defaults and meanings; see its
    documentation): hidden_layer_sizes, activation ('identity', 'logistic', 'tanh',
    'relu', or any name in ``fastgrad.ACTIVATIONS``), solver ('adam' or 'sgd'; 'lbfgs' is
    not supported), alpha (L2 penalty on the weights, divided by the batch size), batch_size
    ('auto' = min(200, n_samples)), learning_rate ('constant', 'invscaling', 'adaptive';
    sgd only), learning_rate_init, power_t, max_iter (epochs), shuffle, random_state, tol,
    verbose, warm_start, momentum, nesterovs_momentum, early_stopping,
    validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, max_fun (accepted,
    unused: it concerns lbfgs). fastgrad's own: backend (kernel backend name, None for the
    default) and dtype ('float32' or 'float64', the precision of weights and computation).

    Labels may be of any type scikit-learn accepts (strings, integers, ...); two classes
    train a sigmoid output with binary cross-entropy, more a softmax with cross-entropy.
    Multilabel targets are not supported.

    Attributes: classes_, n_outputs_, n_layers_, out_activation_, coefs_, intercepts_
    (views of the trained weights, shapes (fan_in, fan_out) and (fan_out,)), loss_,
    loss_curve_, best_loss_, validation_scores_, best_validation_score_, n_iter_, t_,
    n_features_in_, feature_names_in_ (when fit on a DataFrame with string column names).
    """

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train on X (n_samples, n_features) and labels y (n_samples,) for up to
        max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y), continuing from the current weights. `classes` (every
        label y may ever contain) is required on the first call, optional later (it must
        then equal classes_)."""
        if classes is not None:
            classes = unique_labels(classes)
            if hasattr(self, "classes_") and not np.array_equal(self.classes_, classes):
                raise ValueError(f"classes={classes.tolist()!r} is not the same as on the "
                                 f"last call to partial_fit, was: {self.classes_.tolist()!r}")
            if not hasattr(self, "classes_"):
                self.classes_ = classes
        elif not hasattr(self, "classes_"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=_FLOAT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if y.ndim != 1:
            raise ValueError(f"fastgrad's MLPClassifier does not support multilabel or "
                             f"multi-output targets (y of type {type_of_target(y)!r}, shape "
                             f"{y.shape}); give one label per sample")
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self.classes_ = _labels_of(y)
        else:
            classes = _labels_of(y)
            if self.warm_start and not incremental and set(classes) != set(self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same "
                                 "classes as in the previous call to fit. Previously got "
                                 f"{self.classes_}, `y` has {classes}")
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes, but y "
                             f"has 1 class: {self.classes_.tolist()!r}")
        return X, target_indices(y, self.classes_, len(y))

    def _n_outputs_for(self, targets: np.ndarray) -> int:
        n_classes = len(self.classes_)
        return 1 if n_classes == 2 else n_classes

    def _output_activation(self) -> str:
        return "sigmoid" if len(self.classes_) == 2 else "softmax"

    def _validation_score(self, X: np.ndarray, T: np.ndarray) -> float:
        return float(accuracy_score(T, self._class_indices(self._forward(X))))

    def _class_indices(self, z: np.ndarray) -> np.ndarray:
        if z.shape[1] == 1:  # sigmoid(z) >= 0.5 without computing it
            return (z[:, 0] >= 0).astype(np.intp)
        return np.argmax(z, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """Labels (n_samples,), from classes_."""
        X = self._check_X(X)
        return self.classes_[self._class_indices(self._forward(X))]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n_samples, n_classes) in float64, columns in the order of
        classes_ (two classes: [1 - p, p], p the sigmoid of the single output)."""
        z = self._forward(self._check_X(X))
        if z.shape[1] == 1:
            p = F.forward("sigmoid", z[:, 0], backend=self._model.backend)
            return np.stack([1.0 - p, p], axis=1)
        return F.forward("softmax", z, backend=self._model.backend)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log(predict_proba(X))."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's ``MLPRegressor`` on fastgrad.

    Parameters as MLPClassifier's (scikit-learn's names, defaults and meanings, plus
    backend and dtype), and loss: 'squared_error' (half the mean squared error, the only
    one supported; 'poisson' raises). y may be (n_samples,) or (n_samples, n_outputs).
    Predictions are float64. Attributes as MLPClassifier's, without classes_.
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, backend=None, dtype="float32"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            backend=backend, dtype=dtype)
        self.loss = loss

    def _check_params(self) -> dict[str, Any]:
        if self.loss == "poisson":
            raise ValueError("loss='poisson' is not supported by fastgrad's MLPRegressor "
                             "(no exp output / Poisson loss kernel); use "
                             "loss='squared_error'")
        _check_choice("loss", self.loss, ("squared_error",))
        return super()._check_params()

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        """Train on X (n_samples, n_features) and targets y (n_samples,) or
        (n_samples, n_outputs) for up to max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over (X, y), continuing from the current weights."""
        return self._fit(X, y, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=_FLOAT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, np.asarray(y, dtype=np.float64)

    def _n_outputs_for(self, targets: np.ndarray) -> int:
        return 1 if targets.ndim == 1 else targets.shape[1]

    def _output_activation(self) -> str:
        return "identity"

    def _validation_score(self, X: np.ndarray, T: np.ndarray) -> float:
        pred = self._values(self._forward(X))
        if not np.isfinite(pred).all():
            return np.nan
        return float(r2_score(T, pred))

    def _values(self, z: np.ndarray) -> np.ndarray:
        return z[:, 0] if self.n_outputs_ == 1 else z

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, float64: (n_samples,) when fit on 1-D y, else
        (n_samples, n_outputs)."""
        X = self._check_X(X)
        return self._values(self._forward(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
