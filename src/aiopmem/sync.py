"""aiopmem's blocking, thread-safe API: the same as ``aiopmem`` without ``await``.

Every ``await x.f(...)`` of the async API is a plain call ``x.f(...)`` here, ``aclose()`` is
``close()`` and ``async with`` is ``with``; lookups and attributes are identical. Importing this
module does not import anyio.

Example::

    from aiopmem.sync import reserve

    with reserve(64 << 20) as rsv:
        with rsv.map_file("data.bin", 0) as m:
            m.view()[:5] = b"hello"
            m.persist()
"""

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
    Mapping,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    PmemError,
    Protection,
    Reservation,
    ReservationNotEmptyError,
    Sharing,
    SourceEmptyError,
    reserve,
)

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
    "PmemError",
    "Protection",
    "Reservation",
    "ReservationNotEmptyError",
    "Sharing",
    "SourceEmptyError",
    "reserve",
]
