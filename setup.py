# setuptools takes `cffi_modules` and C extensions from setup() alone; everything else about
# the package lives in pyproject.toml.
import glob

from setuptools import Extension, setup

setup(
    cffi_modules=["src/aiopmem/_ffi/_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "aiopmem._ffi._core",
            ["src/aiopmem/_ffi/_core.c"],
            include_dirs=["src/aiopmem/_ffi"],
            depends=sorted(glob.glob("src/aiopmem/_ffi/*.h")),
            extra_compile_args=["-O2", "-Wall"],
        )
    ],
)
