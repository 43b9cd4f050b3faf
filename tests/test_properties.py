"""Property tests: any shape (0 and 1 sizes included), stride and magnitude."""

from __future__ import annotations

import warnings

import numpy as np
from conftest import BACKENDS, SPECS, assert_close, reference_forward
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastgrad as fg

dtypes = st.sampled_from([np.float32, np.float64])
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


@st.composite
def arrays_with_strides(draw):
    dtype = draw(dtypes)
    shape = draw(shapes)
    elements = st.floats(width=32 if dtype == np.float32 else 64)  # NaN, inf, huge, tiny
    base = draw(hnp.arrays(dtype, tuple(2 * s for s in shape), elements=elements))
    step = draw(st.sampled_from([1, 2]))
    view = base[tuple(slice(None, None, step) for _ in shape)] if shape else base
    return view[tuple(slice(0, s) for s in shape)] if shape else view


@settings(max_examples=60, deadline=None)
@given(x=arrays_with_strides(), spec=st.sampled_from(SPECS),
       backend=st.sampled_from(BACKENDS))
def test_forward_any_shape_stride_magnitude(x, spec, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fg.forward(spec.name, x, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, reference_forward(spec, x), x.dtype, reduction=spec.rowwise)


@settings(max_examples=60, deadline=None)
@given(x=arrays_with_strides(), spec=st.sampled_from(SPECS),
       backend=st.sampled_from(BACKENDS), data=st.data())
def test_backward_any_shape_stride_magnitude(x, spec, backend, data):
    g = data.draw(hnp.arrays(x.dtype, x.shape, elements=st.floats(
        -1e3, 1e3, width=32 if x.dtype == np.float32 else 64)))
    saved = {"x": x} if spec.needs == "x" else (
        {"y": reference_forward(spec, x)} if spec.needs == "y" else {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fg.backward(spec.name, g, backend=backend, **saved)
    want = fg.backward(spec.name, g, backend="numpy", **saved)
    assert_close(got, want, x.dtype, reduction=spec.rowwise)
