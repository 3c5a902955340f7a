"""The synchronous, thread-safe implementation. Imports ``aiopmem._ffi``, never anyio."""

from ._align import ALIGNMENT
from ._enums import Advice, Granularity, Protection, Sharing
from ._errors import (
    AddressUnalignedError,
    AlignmentError,
    ClosedError,
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
    ReservationNotEmptyError,
    SourceEmptyError,
)
from ._mapping import Mapping
from ._reservation import Reservation, reserve

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
