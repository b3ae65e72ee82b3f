"""Builds the Cython extensions with -O3 and OpenMP, or serially (with a warning) without OpenMP."""
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_has_openmp(compiler_cmd):
    """True if the C compiler builds and links a program with -fopenmp."""
    src = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            result = subprocess.run(
                compiler_cmd + ["-fopenmp", path, "-o", os.path.join(tmp, "t")],
                capture_output=True,
            )
        except OSError:
            return False
        return result.returncode == 0


class BuildExt(build_ext):
    def build_extensions(self):
        compiler = self.compiler.compiler_type
        if compiler == "msvc":
            compile_args, link_args = ["/O2", "/openmp"], []
        else:
            cc = getattr(self.compiler, "compiler_so", None) or [os.environ.get("CC", "cc")]
            openmp = (
                os.environ.get("KERNELS_NO_OPENMP") != "1"
                and shutil.which(cc[0]) is not None
                and _compiler_has_openmp([cc[0]])
            )
            # no FMA contraction: q * scale + bias must round twice, as NumPy and Numba do.
            # -g0: Python's CFLAGS ask for debug info, which made the compile of
            # _cython_gather.c 84 s instead of 61 s (2 vCPU AMD EPYC), paid twice by `make bench`.
            compile_args, link_args = ["-O3", "-ffp-contract=off", "-g0"], []
            if openmp:
                compile_args.append("-fopenmp")
                link_args.append("-fopenmp")
            else:
                warnings.warn(
                    "embedding-kernels: the C compiler has no OpenMP; "
                    "cython_gather is built SERIAL (single-threaded).",
                    stacklevel=1,
                )
                print("WARNING: building cython_gather without OpenMP (serial)", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = list(compile_args)
            ext.extra_link_args = list(link_args)
        super().build_extensions()


def _ext(name):
    return Extension(
        f"kernels.{name}",
        [f"kernels/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        [_ext("_cython_gather"), _ext("_bounds")],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
