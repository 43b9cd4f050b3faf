"""fastgrad: compiled forward and backward kernels for neural networks.

Kernels: ``<activation>_forward`` / ``<activation>_backward`` for every activation in
``ACTIVATIONS``, ``forward`` / ``backward`` by name, ``linear_forward`` /
``linear_backward`` for the dense layer. Backends: ``available_backends()``,
``backend_info()``, ``set_backend()``, ``use_backend()``, or ``backend=`` on any call.
"""

from .activations import ACTIVATIONS, ActivationSpec, get_activation
from .backends import available_backends, backend_info, get_backend, set_backend, use_backend
from .functional import activation_functions, backward, forward, linear_backward, linear_forward
from .gradcheck import GradcheckError, gradcheck, numerical_vjp

__version__ = "0.1.0"

globals().update(activation_functions())

__all__ = [
    "ACTIVATIONS", "ActivationSpec", "GradcheckError", "__version__", "available_backends",
    "backend_info", "backward", "forward", "get_activation", "get_backend", "gradcheck",
    "linear_backward", "linear_forward", "numerical_vjp", "set_backend", "use_backend",
    *activation_functions(),
]
