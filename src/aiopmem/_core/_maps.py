"""Making mappings: ``map_file()`` and ``map_anonymous()`` of a reservation, their checks in
the contract's order and the plans the C core's map takes (its MAP_SYNC probe and the overlay
of the placeholder are in ``_ffi/_core_map.h``), as libpmem2's ``map_posix.c``."""

from __future__ import annotations

import contextlib
import errno
from typing import Final, TypeAlias

from .. import _ffi
from ._align import ALIGNMENT, as_int, as_optional_int
from ._enums import Protection, Sharing, prot_bits
from ._errors import (
    ClosedError,
    InvalidFileHandleError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    OffsetUnalignedError,
    SourceEmptyError,
    os_error,
)
from ._mapping import Mapping
from ._placement import Holes
from ._source import WRITE_HINT, FileSource, Source, fd_error, open_source

__all__ = ["MapPlan", "Maps", "c_offset_length", "file_refusal", "int64", "populated"]

_MASK: Final = ALIGNMENT - 1
_RW: Final = Protection.READ | Protection.WRITE

#: How a mapping is made (the C core's kinds).
_FILE_SHARED: Final = 0
_FILE_PRIVATE: Final = 1
_ANON_SHARED: Final = 2
_ANON_PRIVATE: Final = 3
_SHARED: Final = Sharing.SHARED
_FD_MAX: Final = 2**31 - 1
#: PROT_* bits by Protection value (indexing by the int value avoids hashing a Flag member).
_PROT_BITS: Final = tuple(prot_bits(Protection(v)) for v in range(8))

# The async map of a plain descriptor makes _fd_plan's checks in C (aio_map_fd): its objects.
_ffi.aio_configure_map(Mapping, Protection, Sharing, _SHARED, _PROT_BITS, _MASK)
#: Offsets the C core takes (int64); a larger one keeps its sign and alignment when clamped.
_I64: Final = 2**63
#: Lengths the C core takes (uint64); a larger one is clamped to one that never fits.
_U64: Final = 2**64
_U64_CLAMP: Final = 2**64 - ALIGNMENT
_CLAMP: Final = 2**62

_fdcheck = _ffi.fdcheck
_raw_fdcheck = _ffi.raw_fdcheck
_last_dev = _ffi.last_dev
_INJECTING: Final = _ffi.INJECTING
_NEG_EINTR: Final = -errno.EINTR
_HOLE_BIT: Final = _ffi.HOLE_BIT
_C_CLOSED: Final = _ffi.C_CLOSED
_C_OFF_UNALIGNED: Final = _ffi.C_OFF_UNALIGNED
_C_OFF_NEGATIVE: Final = _ffi.C_OFF_NEGATIVE
_C_NO_FIT: Final = _ffi.C_NO_FIT
_C_EXISTS: Final = _ffi.C_EXISTS


def populated(m: Mapping) -> Mapping:
    """``m`` after ``populate()`` (``populate=True`` of a map): unmapped again if that fails."""
    try:
        m.populate()
    except BaseException:
        with contextlib.suppress(Exception):
            m.unmap()
        raise
    return m


#: What ``_map_at`` takes: offset, length, protection, sharing, PROT bits, kind, fd,
#: file_offset, device, label.
MapPlan: TypeAlias = tuple[
    int, int, Protection, Sharing, int, int, int, int, int, "str | int | None"
]


def c_offset_length(offset: int, length: int) -> tuple[int, int]:
    """``(offset, length)`` as the C core's map takes them (see ``_int64``)."""
    return (
        offset if -_I64 <= offset < _I64 else int64(offset),
        length if length < _U64 else _U64_CLAMP,
    )


def file_bits_kind(protection: Protection, sharing: Sharing) -> tuple[int, int]:
    """The PROT bits and the C kind of a map of a file with ``protection`` and ``sharing``."""
    return _PROT_BITS[protection._value_], _FILE_SHARED if sharing is _SHARED else _FILE_PRIVATE


def int64(x: int) -> int:
    """``x`` as the C core takes it (int64): unchanged if it fits, else clamped far out of any
    range with its sign and its alignment kept, so that every check gives the same verdict."""
    if -_I64 <= x < _I64:
        return x
    return (_CLAMP if x > 0 else -_CLAMP) | (x & _MASK)


def _check_protection(protection: object) -> Protection:
    if not isinstance(protection, Protection):
        raise TypeError(f"protection must be a Protection, not {type(protection).__name__}")
    return protection


def _check_sharing(sharing: object) -> Sharing:
    if not isinstance(sharing, Sharing):
        raise TypeError(f"sharing must be a Sharing, not {type(sharing).__name__}")
    return sharing


def _map_error(err: int, bits: int, kind: int) -> Exception:
    if err == errno.EACCES:
        hint = ""
        if kind == _FILE_SHARED and bits & _ffi.PROT_WRITE:
            hint = f" (the descriptor is not open for writing: {WRITE_HINT})"
        return NoAccessError(f"the kernel refused the access: {_ffi.strerror(err)}{hint}")
    if err == errno.EBADF:
        return InvalidFileHandleError(
            f"the kernel refused the file descriptor: {_ffi.strerror(err)}"
        )
    return os_error(err)


def _label(label: str | int) -> str:
    return f"file descriptor {label}" if type(label) is int else str(label)


def _empty_error(label: str | int) -> SourceEmptyError:
    return SourceEmptyError(f"{_label(label)} is empty")


def _beyond_error(file_offset: int, n: int, size: int, label: str | int) -> MapRangeError:
    return MapRangeError(
        f"[{file_offset}, {file_offset + n}) is beyond the end of {_label(label)} ({size} bytes)"
    )


def file_refusal(fsize: int, fd: int, file_offset: int, n: int) -> Exception:
    """The error for a descriptor check an async map job refused (``C_FILE``): ``fsize`` is
    the check's result (a negative code, 0 for an empty file, or a size too small)."""
    if fsize < 0:
        return fd_error(fd, fsize, f"file descriptor {fd}")
    if fsize == 0:
        return _empty_error(fd)
    return _beyond_error(file_offset, n, fsize, fd)


class Maps(Holes):
    """The map operations of a reservation (a part of ``Reservation``)."""

    __slots__ = ()

    # -- mapping -------------------------------------------------------------------------------

    def map_file(
        self,
        file: FileSource,
        offset: int,
        *,
        length: int | None = None,
        file_offset: int = 0,
        protection: Protection = _RW,
        sharing: Sharing = Sharing.SHARED,
        populate: bool = False,
    ) -> Mapping:
        """Map ``length`` bytes of ``file`` from ``file_offset`` at ``offset`` of the reservation.

        ``file`` is a path (opened read-write, or read-only when the mapping cannot write to the
        file, with O_CLOEXEC, and closed once mapped), an open file descriptor (not closed) or an
        object with ``fileno()``. ``length=None`` or ``0`` maps to the end of the file; a file
        whose size is not a multiple of ALIGNMENT then gets a partial last page. The mapping is
        placed exactly at ``address + offset`` and occupies ``[offset, offset +
        round_up(length))`` of the reservation. ``populate=True`` faults every page in as part
        of the map, as ``Mapping.populate()`` does (if that fails, the map is undone).

        Raises (checked in this order):
            TypeError: an argument of the wrong type.
            ClosedError: the reservation is closed.
            InvalidFileHandleError: bad, closed or write-only descriptor.
            FileNotFoundError: the path does not exist.
            InvalidFileTypeError: a directory or other non-regular file.
            NoAccessError: the path cannot be opened with the access needed.
            OffsetUnalignedError: ``file_offset`` unaligned.
            MapRangeError: ``file_offset`` negative.
            SourceEmptyError: the file is empty.
            LengthOutOfRangeError: ``length`` negative.
            LengthUnalignedError: ``length`` unaligned.
            MapRangeError: the range is beyond the end of the file, or nothing is left to map.
            OffsetUnalignedError: ``offset`` unaligned.
            LengthOutOfRangeError: the mapping does not fit in the reservation.
            MappingExistsError: the range overlaps an existing or in-flight mapping.
            NoAccessError: the kernel refuses the access (e.g. read-only file with WRITE).
            OSError: any other failure of the kernel; the range stays a placeholder.
        """
        # Plain arguments on an open reservation skip the checks' call: this is the hot path.
        n = length
        if (
            type(offset) is not int
            or (length is not None and type(length) is not int)
            or type(file_offset) is not int
            or type(protection) is not Protection
            or type(sharing) is not Sharing
            or self.closed
        ):
            offset, n, file_offset, protection, sharing = self._path_args(
                offset, length, file_offset, protection, sharing
            )
        shared = sharing is _SHARED
        bits = _PROT_BITS[protection._value_]
        src: Source | None = None
        label: str | int
        if type(file) is int and 0 <= file <= _FD_MAX:
            fd = label = file
            size = _fdcheck(fd) if _INJECTING else _raw_fdcheck(fd)
            if size == _NEG_EINTR:
                size = _fdcheck(fd)
            if size < 0:
                raise fd_error(fd, size, f"file descriptor {fd}")
        else:
            src = open_source(file, shared and bool(bits & _ffi.PROT_WRITE))
            fd, size, label = src.fd, src.size, src.name
        try:
            m = self._map_at(
                *self._file_plan(offset, n, file_offset, protection, sharing, fd, size, label)
            )
        finally:
            if src is not None:
                src.close()
        return populated(m) if populate else m

    def _file_plan(
        self,
        offset: int,
        n: int | None,
        file_offset: int,
        protection: Protection,
        sharing: Sharing,
        fd: int,
        size: int,
        label: str | int,
        dev: int | None = None,
    ) -> MapPlan:
        """map_file()'s checks 2-5 once the file is open and checked (``size``: its size); what
        ``_map_at`` takes. ``dev``: the file's st_dev (None: from the check just made)."""
        if file_offset & _MASK:
            raise OffsetUnalignedError(
                f"file_offset {file_offset} is not a multiple of {ALIGNMENT}"
            )
        if file_offset < 0:
            raise MapRangeError(f"file_offset {file_offset} is negative")
        if size == 0:
            raise _empty_error(label)
        if not n:
            if n is not None and n < 0:
                raise LengthOutOfRangeError(f"length {n} is negative")
            if file_offset >= size:
                raise MapRangeError(
                    f"file_offset {file_offset} leaves nothing of {_label(label)} "
                    f"({size} bytes) to map"
                )
            n = size - file_offset
        else:
            if n < 0:
                raise LengthOutOfRangeError(f"length {n} is negative")
            if n & _MASK:
                raise LengthUnalignedError(f"length {n} is not a multiple of {ALIGNMENT}")
            if file_offset + n > size:
                raise _beyond_error(file_offset, n, size, label)
        bits = _PROT_BITS[protection._value_]
        if sharing is _SHARED:
            kind = _FILE_SHARED
            dev = _last_dev() if dev is None else dev
        else:
            kind, dev = _FILE_PRIVATE, 0
        return offset, n, protection, sharing, bits, kind, fd, file_offset, dev, label

    def _path_args(
        self,
        offset: object,
        length: object,
        file_offset: object,
        protection: object,
        sharing: object,
    ) -> tuple[int, int | None, int, Protection, Sharing]:
        """map_file()'s argument checks (types, closed), in the contract's order: made by
        map_file() for anything but plain arguments, and before a path is opened by a job."""
        off = as_int(offset, "offset")
        n = as_optional_int(length, "length")
        foff = as_int(file_offset, "file_offset")
        if type(protection) is not Protection:
            _check_protection(protection)
        if type(sharing) is not Sharing:
            _check_sharing(sharing)
        if self.closed:
            raise ClosedError("the reservation is closed")
        return off, n, foff, protection, sharing  # type: ignore[return-value]

    def map_anonymous(
        self,
        offset: int,
        length: int,
        *,
        protection: Protection = _RW,
        sharing: Sharing = Sharing.SHARED,
        populate: bool = False,
    ) -> Mapping:
        """Map ``length`` bytes of zero-filled memory at ``offset`` of the reservation
        (``populate=True``: and fault every page in, as ``map_file()``).

        Raises (checked in this order):
            TypeError: an argument of the wrong type.
            ClosedError: the reservation is closed.
            LengthUnalignedError: ``length`` unaligned.
            LengthOutOfRangeError: ``length <= 0``.
            OffsetUnalignedError: ``offset`` unaligned.
            LengthOutOfRangeError: the mapping does not fit in the reservation.
            MappingExistsError: the range overlaps an existing or in-flight mapping.
            OSError: the kernel refused (e.g. ENOMEM); the range stays a placeholder.
        """
        m = self._map_at(*self._anon_plan(offset, length, protection, sharing))
        return populated(m) if populate else m

    def _anon_plan(
        self, offset: int, length: int, protection: Protection, sharing: Sharing
    ) -> MapPlan:
        """map_anonymous()'s checks; what ``_map_at`` takes."""
        if type(offset) is not int:
            offset = as_int(offset, "offset")
        n = length if type(length) is int else as_int(length, "length")
        if type(protection) is not Protection:
            _check_protection(protection)
        if type(sharing) is not Sharing:
            _check_sharing(sharing)
        if self.closed:
            raise ClosedError("the reservation is closed")
        if n & _MASK:
            raise LengthUnalignedError(f"length {n} is not a multiple of {ALIGNMENT}")
        if n <= 0:
            raise LengthOutOfRangeError(f"length {n} is not positive")
        kind = _ANON_SHARED if sharing is _SHARED else _ANON_PRIVATE
        bits = _PROT_BITS[protection._value_]
        return offset, n, protection, sharing, bits, kind, -1, 0, 0, None

    def _fd_plan(
        self,
        file: object,
        offset: object,
        length: object,
        file_offset: object,
        protection: object,
        sharing: object,
    ) -> MapPlan | None:
        """What ``_map_at`` takes for a map of a descriptor whose own checks (fcntl, fstat, the
        file's size) are left to the map's job; None when the call needs anything else first
        (a path to open, no length, an argument to coerce, a check that fails: the full
        ``map_file()`` then reports the first error in the contract's order)."""
        if (
            type(file) is not int
            or type(offset) is not int
            or type(length) is not int
            or type(file_offset) is not int
            or type(protection) is not Protection
            or type(sharing) is not Sharing
            or not 0 <= file <= _FD_MAX
            or not 0 < length < _U64
            or length & _MASK
            or not 0 <= file_offset < _I64
            or file_offset & _MASK
            or self._closed
        ):
            return None
        bits, kind = file_bits_kind(protection, sharing)
        return offset, length, protection, sharing, bits, kind, file, file_offset, 0, file

    def _map_at(
        self,
        offset: int,
        length: int,
        protection: Protection,
        sharing: Sharing,
        bits: int,
        kind: int,
        fd: int,
        file_offset: int,
        dev: int,
        label: str | int | None,
    ) -> Mapping:
        """Steps 6-9 of map validation, the claim, the syscall and the commit: one C call."""
        off = offset if -_I64 <= offset < _I64 else int64(offset)  # no call on the hot path
        n = length if length < _U64 else _U64_CLAMP
        r = self._map(Mapping, off, n, bits, kind, fd, file_offset, dev, protection, sharing, label)
        if type(r) is not int:
            return r  # type: ignore[no-any-return]
        raise self._map_refusal(r, offset, length, bits, kind)

    def _map_refusal(self, r: int, offset: int, length: int, bits: int, kind: int) -> Exception:
        """The error for the code of a refused map (not C_FILE); warns of a hole it left."""
        if r == _C_CLOSED:
            return ClosedError("the reservation is closed")
        if r == _C_OFF_UNALIGNED:
            return OffsetUnalignedError(f"offset {offset} is not a multiple of {ALIGNMENT}")
        if r == _C_OFF_NEGATIVE:  # libpmem2 reports it as a length error; the fault is the offset's
            return LengthOutOfRangeError(f"offset {offset} is negative")
        span = (length + _MASK) & ~_MASK
        if r == _C_NO_FIT:
            return LengthOutOfRangeError(
                f"[{offset}, {offset + span}) does not fit in the reservation of {self.size} bytes"
            )
        if r == _C_EXISTS:
            return MappingExistsError(
                f"[{offset:#x}, {offset + span:#x}) overlaps a mapping of the reservation"
            )
        if r & _HOLE_BIT:
            r &= ~_HOLE_BIT
            addr = self.address + offset
            self._warn_hole(addr, addr + span)
        return _map_error(r, bits, kind)
