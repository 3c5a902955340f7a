"""aiopmem: virtual-memory reservations for async Python.

A reservation is a range of address space held as an inaccessible placeholder; files and
anonymous memory are mapped into it at fixed offsets, and it can grow at its end and shrink at
either end while its mappings stay where they are. This module is the async API (anyio: asyncio,
asyncio+uvloop, trio); ``aiopmem.sync`` is the same API, blocking and thread-safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import (
    ALIGNMENT,
    AddressUnalignedError,
    Advice,
    AlignmentError,
    ClosedError,
    Granularity,
    InvalidFileHandleError,
    InvalidFileTypeError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    PmemError,
    Protection,
    ReservationNotEmptyError,
    Sharing,
    SourceEmptyError,
)

if TYPE_CHECKING:
    from ._async import Mapping, Opening, Reservation, reserve

__version__ = "0.1.0.dev0"

__all__ = [
    "ALIGNMENT",
    "AddressUnalignedError",
    "Advice",
    "AlignmentError",
    "ClosedError",
    "Granularity",
    "InvalidFileHandleError",
    "InvalidFileTypeError",
    "LengthOutOfRangeError",
    "LengthUnalignedError",
    "MapRangeError",
    "Mapping",
    "MappingExistsError",
    "NoAccessError",
    "NotSupportedError",
    "OffsetOutOfRangeError",
    "OffsetUnalignedError",
    "Opening",
    "PmemError",
    "Protection",
    "Reservation",
    "ReservationNotEmptyError",
    "Sharing",
    "SourceEmptyError",
    "reserve",
]

_ASYNC_NAMES = frozenset({"Mapping", "Opening", "Reservation", "reserve"})
#: Submodules reachable as attributes after a bare ``import aiopmem``.
_SUBMODULES = frozenset({"sync", "testing"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    # The async classes import anyio; loading them on first use keeps `import aiopmem.sync`
    # (which imports this package first) free of anyio.
    if name in _ASYNC_NAMES:
        from . import _async

        value = getattr(_async, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ASYNC_NAMES | _SUBMODULES)
