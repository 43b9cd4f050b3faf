"""fastgrad: compiled forward and backward kernels for neural networks.

Kernels: ``<activation>_forward`` / ``<activation>_backward`` for every activation in
``ACTIVATIONS``, ``forward`` / ``backward`` by name, ``linear_forward`` /
``linear_backward`` for the dense layer; ``loss`` / ``loss_grad`` over ``LOSSES``.
Trainer: ``MLP``, ``Sequential`` of ``Dense``, optimizers (``SGD``, ``Adam``, ``AdamW``,
``RMSprop``) and schedules, ``load``. Backends: ``available_backends()``,
``backend_info()``, ``set_backend()``, ``use_backend()``, or ``backend=`` on any call.
"""

from .activations import ACTIVATIONS, ActivationSpec, get_activation
from .backends import available_backends, backend_info, get_backend, set_backend, use_backend
from .functional import (
    activation_functions,
    backward,
    forward,
    linear_backward,
    linear_forward,
    loss,
    loss_grad,
    one_hot,
)
from .gradcheck import GradcheckError, gradcheck, numerical_vjp
from .io import ModelFileError, load
from .losses import LOSSES, LossSpec, get_loss
from .nn import MLP, Dense, Sequential
from .optim import SGD, Adam, AdamW, CosineLR, Optimizer, RMSprop, StepLR, WarmupLR
from .train import (
    EarlyStopping,
    GradientHealth,
    GradientHealthWarning,
    History,
    NonFiniteError,
)

__version__ = "0.1.0"

globals().update(activation_functions())

__all__ = [
    "ACTIVATIONS", "ActivationSpec", "GradcheckError", "__version__", "available_backends",
    "backend_info", "backward", "forward", "get_activation", "get_backend", "gradcheck",
    "linear_backward", "linear_forward", "numerical_vjp", "set_backend", "use_backend",
    # the trainer
    "LOSSES", "MLP", "SGD", "Adam", "AdamW", "CosineLR", "Dense", "EarlyStopping",
    "GradientHealth", "GradientHealthWarning", "History", "LossSpec", "ModelFileError",
    "NonFiniteError", "Optimizer", "RMSprop", "Sequential", "StepLR", "WarmupLR", "get_loss",
    "load", "loss", "loss_grad", "one_hot",
    *activation_functions(),
]
