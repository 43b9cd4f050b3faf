# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastgrad's compiled kernels (the `cython` backend).

The foundation build compiles this module so that `pip install .` proves the toolchain;
the full backend (every activation, the dense layer, BLAS) is issue #3.
"""

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FG_OPENMP 1
    #else
    #define FG_OPENMP 0
    #endif
    """
    int FG_OPENMP

OPENMP = bool(FG_OPENMP)  # True when the build had OpenMP

ctypedef fused floating:
    float
    double


def relu_forward(floating[::1] x, floating[::1] out):
    """out[i] = 0 if x[i] < 0 else x[i] (NaN propagates). x and out: same length."""
    cdef Py_ssize_t i, n = x.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"out has length {out.shape[0]}, expected {n} (the length of x)")
    with nogil:
        for i in range(n):
            out[i] = 0 if x[i] < 0 else x[i]
