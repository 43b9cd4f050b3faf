"""Build fastgrad's compiled extension, fastgrad._kernels, from fastgrad/_kernels.pyx.

OpenMP is used where the compiler supports it; a compiler without it still builds a
serial extension. No -march flag and no -ffast-math: the shipped build must run on any
x86-64 and keep IEEE NaN/inf behaviour (see ../shared/DESIGN.md section 6).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def compiler_supports_openmp() -> bool:
    """Compile and link a tiny OpenMP program; True when that works."""
    if os.environ.get("FASTGRAD_NO_OPENMP"):
        return False
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        result = subprocess.run(
            [cc, "-fopenmp", src, "-o", os.path.join(tmp, "t")], capture_output=True
        )
        return result.returncode == 0


openmp = compiler_supports_openmp() and sys.platform != "win32"
# -ffp-contract=off: no FMA contraction, so each kernel evaluates its formula operation by
# operation as fastgrad/scalar_math.py writes it, identically in every ISA variant; only
# the activation loops opt in to fused multiply-adds (FG_MATH_CLONES in _kernels_simd.h).
compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
link_args = []
if openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

extensions = [
    Extension(
        "fastgrad._kernels",
        ["fastgrad/_kernels.pyx"],
        depends=["fastgrad/_kernels_simd.h", "fastgrad/_kernels_impl.h", "fastgrad/_train.pxi",
                 "fastgrad/_train_impl.h"],
        include_dirs=[numpy.get_include(), "fastgrad"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=["m"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
    )
)
