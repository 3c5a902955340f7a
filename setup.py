# setuptools takes `cffi_modules` and C extensions from setup() alone; everything else about
# the package lives in pyproject.toml.
from setuptools import Extension, setup

setup(
    cffi_modules=["src/aiopmem/_ffi/_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "aiopmem._ffi._core",
            ["src/aiopmem/_ffi/_core.c"],
            include_dirs=["src/aiopmem/_ffi"],
            depends=["src/aiopmem/_ffi/_linux.h", "src/aiopmem/_ffi/_exec.h"],
            extra_compile_args=["-O2", "-Wall"],
        )
    ],
)
