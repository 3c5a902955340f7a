"""The exception hierarchy: one base class, never raised directly, and one class per condition.

Each class also derives from the builtin exception whose meaning it shares, so
``except ValueError`` keeps working for callers who do not know aiopmem's classes. ``code`` and
``value`` name the matching libpmem2 error (``PMEM2_E_*``) and its number.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import ClassVar, final

__all__ = [
    "AddressUnalignedError",
    "ClosedError",
    "InvalidFileHandleError",
    "InvalidFileTypeError",
    "LengthOutOfRangeError",
    "LengthUnalignedError",
    "MapRangeError",
    "MappingExistsError",
    "NoAccessError",
    "NotSupportedError",
    "OffsetOutOfRangeError",
    "OffsetUnalignedError",
    "PmemError",
    "ReservationNotEmptyError",
    "SourceEmptyError",
]


class PmemError(Exception):
    """Base class of every aiopmem exception. Never raised directly.

    Attributes:
        code: the libpmem2 name of the condition, e.g. ``"PMEM2_E_MAPPING_EXISTS"``.
        value: the libpmem2 number of the condition, e.g. ``-100007``.
    """

    code: ClassVar[str] = "PMEM2_E_UNKNOWN"
    value: ClassVar[int] = -100000


@final
class AddressUnalignedError(PmemError, ValueError):
    """An address is not a multiple of ``ALIGNMENT``."""

    code = "PMEM2_E_ADDRESS_UNALIGNED"
    value = -100022


@final
class OffsetUnalignedError(PmemError, ValueError):
    """An offset (in the reservation or in the file) is not a multiple of ``ALIGNMENT``."""

    code = "PMEM2_E_OFFSET_UNALIGNED"
    value = -100011


@final
class LengthUnalignedError(PmemError, ValueError):
    """A size or length is not a multiple of ``ALIGNMENT``."""

    code = "PMEM2_E_LENGTH_UNALIGNED"
    value = -100015


@final
class OffsetOutOfRangeError(PmemError, ValueError):
    """An offset lies outside the object it refers to."""

    code = "PMEM2_E_OFFSET_OUT_OF_RANGE"
    value = -100010


@final
class LengthOutOfRangeError(PmemError, ValueError):
    """A size or length is zero, negative, too large, or reaches past the end."""

    code = "PMEM2_E_LENGTH_OUT_OF_RANGE"
    value = -100030


@final
class MapRangeError(PmemError, ValueError):
    """The requested part of the file (file_offset, length) does not exist."""

    code = "PMEM2_E_MAP_RANGE"
    value = -100006


@final
class SourceEmptyError(PmemError, ValueError):
    """The file has size zero: there is nothing to map."""

    code = "PMEM2_E_SOURCE_EMPTY"
    value = -100018


@final
class InvalidFileHandleError(PmemError, ValueError):
    """The file descriptor is negative, closed, or not open for reading."""

    code = "PMEM2_E_INVALID_FILE_HANDLE"
    value = -100004


@final
class InvalidFileTypeError(PmemError, ValueError):
    """The file is of a type that cannot be mapped (a directory, a FIFO, a socket...)."""

    code = "PMEM2_E_INVALID_FILE_TYPE"
    value = -100005


@final
class NotSupportedError(PmemError):
    """The operation is not supported (e.g. shrinking the middle or the whole reservation)."""

    code = "PMEM2_E_NOSUPP"
    value = -100001


@final
class MappingExistsError(PmemError):
    """The address range is already occupied, by one of the reservation's mappings or by
    anything else in the process."""

    code = "PMEM2_E_MAPPING_EXISTS"
    value = -100007


@final
class ReservationNotEmptyError(PmemError):
    """The region to remove from a reservation still holds (part of) a mapping."""

    code = "PMEM2_E_VM_RESERVATION_NOT_EMPTY"
    value = -100033


@final
class NoAccessError(PmemError, PermissionError):
    """The requested access is not permitted (a read-only file mapped for writing, a view of a
    mapping without READ)."""

    code = "PMEM2_E_NO_ACCESS"
    value = -100032

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EACCES, message)


@final
class AlignmentError(PmemError, ValueError):
    """An alignment that is not a power of two multiple of ``ALIGNMENT`` (``reserve()``)."""

    code = "PMEM2_E_INVALID_ALIGNMENT_VALUE"
    value = -100013


@final
class ClosedError(PmemError, ValueError):
    """The reservation or mapping has been closed (unmapped)."""

    code = "AIOPMEM_E_CLOSED"
    value = -1


def os_error(err: int) -> OSError:
    """An ``OSError`` of the subclass Python picks for ``err`` (``FileNotFoundError``...)."""
    return OSError(err, os.strerror(err))
