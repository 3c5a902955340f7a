"""cffi builder for ``aiopmem._ffi._lib`` (API mode: compiled at install time).

API mode lets the C compiler read the constants (``MAP_FIXED_NOREPLACE``, ``MAP_SYNC``, ...) from
the system headers instead of us typing their values in, and calls go through compiled stubs,
which is measurably cheaper per call than ABI mode or ctypes.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((_HERE / "_cdef.h").read_text())
ffibuilder.set_source(
    "aiopmem._ffi._lib",
    (_HERE / "_source.c").read_text(),
    include_dirs=[str(_HERE)],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
