"""The `cython` backend: a thin adapter over the compiled module fastgrad._kernels."""

from __future__ import annotations

from .. import _kernels

NAME = "cython"

_REQUIRED = ("activation_forward", "activation_backward", "linear_forward", "linear_backward")


def check_available() -> None:
    missing = [k for k in _REQUIRED if not hasattr(_kernels, k)]
    if missing:
        raise ImportError(
            f"fastgrad._kernels ({_kernels.__file__}) lacks {', '.join(missing)}"
        )
