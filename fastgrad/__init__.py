"""fastgrad: compiled forward and backward kernels for neural networks.

Kernels: ``<activation>_forward`` / ``<activation>_backward`` for every activation in
``ACTIVATIONS``, ``forward`` / ``backward`` by name, ``linear_forward`` /
``linear_backward`` for the dense layer; ``loss`` / ``loss_grad`` over ``LOSSES``.
Trainer: ``MLP``, ``Sequential`` of ``Dense``, optimizers (``SGD``, ``Adam``, ``AdamW``,
``RMSprop``) and schedules, ``load``. Autograd: ``Tensor`` (reverse mode over those
kernels; ops and losses in ``fastgrad.autograd`` / ``fastgrad.tensor_losses``), ``no_grad``,
``grad``, ``vjp``, ``jvp``, ``jacobian``; matrix chains: ``multi_dot``, ``chain_order``,
``chain_vjp``. Backends: ``available_backends()``,
``backend_info()``, ``set_backend()``, ``use_backend()``, or ``backend=`` on any call.
"""

from .activations import ACTIVATIONS, ActivationSpec, get_activation
from .autograd import Tensor, is_grad_enabled, no_grad
from .backends import available_backends, backend_info, get_backend, set_backend, use_backend
from .chain import ChainPlan, chain_order, chain_vjp, multi_dot
from .derivatives import grad, jacobian, jvp, vjp
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
    # autograd and matrix chains
    "ChainPlan", "Tensor", "chain_order", "chain_vjp", "grad", "is_grad_enabled", "jacobian",
    "jvp", "multi_dot", "no_grad", "vjp",
    *activation_functions(),
]
