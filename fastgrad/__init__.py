"""fastgrad: compiled forward and backward kernels for neural networks.

Kernels: ``<activation>_forward`` / ``<activation>_backward`` for every activation in
``ACTIVATIONS``, ``forward`` / ``backward`` by name, ``linear_forward`` /
``linear_backward`` for the dense layer. Autograd: ``Tensor`` (reverse mode over those
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
from .functional import activation_functions, backward, forward, linear_backward, linear_forward
from .gradcheck import GradcheckError, gradcheck, numerical_vjp

__version__ = "0.1.0"

globals().update(activation_functions())

__all__ = [
    "ACTIVATIONS", "ActivationSpec", "GradcheckError", "__version__", "available_backends",
    "backend_info", "backward", "forward", "get_activation", "get_backend", "gradcheck",
    "linear_backward", "linear_forward", "numerical_vjp", "set_backend", "use_backend",
    "ChainPlan", "Tensor", "chain_order", "chain_vjp", "grad", "is_grad_enabled", "jacobian",
    "jvp", "multi_dot", "no_grad", "vjp",
    *activation_functions(),
]
