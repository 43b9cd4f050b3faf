"""Argument checks shared by the public API: one clear exception per kind of bad input,
naming the argument, what was given and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(value: Any, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """`value` as a float32/float64 ndarray.

    Float arrays keep their dtype; bool and integer arrays (and Python numbers/lists) become
    float64 - exactly for integers up to 2**53, never truncated; anything else (complex,
    object, strings) raises TypeError. With `dtype`, the result must have that dtype:
    a float array of another float dtype raises TypeError (no silent precision change).
    """
    arr = np.asarray(value)
    if arr.dtype not in FLOAT_DTYPES:
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        else:
            raise TypeError(
                f"{name} must be a float32 or float64 array (integers and bools are "
                f"converted to float64), got dtype {arr.dtype}"
            )
    if dtype is not None and arr.dtype != dtype:
        if np.asarray(value).dtype.kind in "biu":
            return arr.astype(dtype)
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)} "
                        f"(the dtype of the other inputs)")
    return arr


def check_shape(arr: np.ndarray, name: str, shape: tuple[int, ...], what: str = "") -> None:
    if arr.shape != tuple(shape):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}{extra}")


def check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """`out=` must be a writeable ndarray of exactly the result's shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"out has shape {out.shape} and dtype {out.dtype}, expected shape "
            f"{tuple(shape)} and dtype {np.dtype(dtype)}"
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous view or copy: the layout every backend kernel assumes. Device arrays
    pass through (`check_device_array` has refused non-contiguous ones)."""
    if not isinstance(arr, np.ndarray) and hasattr(arr, "is_c_contiguous"):
        return arr
    return np.ascontiguousarray(arr)


def check_device_array(arr: Any, name: str, dtype: np.dtype | None = None) -> None:
    """A device array (numba DeviceNDArray) must be float32/float64 - device arrays are
    never converted - of `dtype` when given, and C-contiguous."""
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} is a device array of dtype {arr.dtype}, expected float32 "
                        "or float64 (device arrays are not converted)")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)} "
                        f"(the dtype of the other inputs)")
    if not arr.is_c_contiguous():
        raise ValueError(f"{name} is a device array with strides {tuple(arr.strides)} and "
                         f"shape {tuple(arr.shape)}, expected a C-contiguous one")
