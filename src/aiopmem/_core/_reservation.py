"""A reservation: a range of address space held as an inaccessible placeholder, into which
files and anonymous memory are mapped at fixed offsets.

Layout. The reservation holds ``[address, address + max_size)``: ``[address, address + size)``
is the usable part, the rest is headroom kept for ``extend()``. Every byte of the held range is
always either a placeholder or one of the reservation's mappings; unmapping lays a placeholder
back (MAP_FIXED replaces atomically), so no other mapping of the process can slip in.

Guarantees (thread-shared state): the state (extent, the index of mappings and claims, the
admission gate, the holes) lives in the C base ``ReservationBase`` (``_ffi/_core.c``), and each
transition (admit + claim + mmap + commit, unmap, persist, extend, shrink, close, reserve) is
one C call: the GIL makes it atomic, syscalls run with the GIL released only while a claim, an
UNMAPPING mark or an exclusive admission stands for them, and a KeyboardInterrupt can arrive
only before such a call (validation here, nothing changed) or after it (raising the error its
code stands for; the mapping it committed is in ``mappings()`` already).
- Operations are admitted by the gate: maps, unmaps and persists share it, extend, shrink and
  close hold it exclusively (phase-fair, see ``_gate.py``).
- Lookups (``find*``, ``mappings``, attributes) never wait for a syscall.
- Check-then-act is atomic: a map validates its range and claims it in the index in one step,
  makes the syscall with the claim held, then commits (or drops) the claim. A claim blocks
  overlapping maps but is invisible to lookups until the map completes.
"""

from __future__ import annotations

import contextlib
import errno
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeAlias, final

from .. import _ffi
from ._align import ADDRESS_LIMIT, ALIGNMENT, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit, public_name
from ._describe import Layout, Row, render
from ._enums import Protection, Sharing, prot_bits
from ._errors import (
    AddressUnalignedError,
    AlignmentError,
    ClosedError,
    InvalidFileHandleError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    ReservationNotEmptyError,
    SourceEmptyError,
    os_error,
)
from ._mapping import Mapping, MemArgs, busy_error, bytes_view, mem_outcome
from ._placement import default_headroom
from ._source import WRITE_HINT, FileSource, Source, fd_error, open_source

__all__ = ["Reservation", "reserve"]

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
_C_BUSY_BASE: Final = _ffi.C_BUSY_BASE
_MEM_PERSIST: Final = _ffi.MEM_PERSIST
_MEM_POPULATE: Final = _ffi.MEM_POPULATE
_MEM_WRITE: Final = _ffi.MEM_WRITE
_MEM_READ: Final = _ffi.MEM_READ


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
        offset if -_I64 <= offset < _I64 else _int64(offset),
        length if length < _U64 else _U64_CLAMP,
    )


def _int64(x: int) -> int:
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


@final
class Reservation(_ffi.ReservationBase, metaclass=NoPublicConstructor):
    """A range of virtual address space, reserved as an inaccessible placeholder.

    Made by ``aiopmem.sync.reserve()``. Map files or anonymous memory into it with
    ``map_file()`` / ``map_anonymous()``; grow it with ``extend()``, cut it with ``shrink()``,
    release it all with ``close()`` (or by leaving ``with``). Thread-safe: any number of threads
    may use one reservation at once.

    """

    __slots__ = ()

    if TYPE_CHECKING:  # the fields of the C base
        _address: int
        _size: int
        _max_size: int
        _closed: bool
        _facade: object | None
        _count: int

    # -- attributes ----------------------------------------------------------------------------

    @property
    def address(self) -> int:
        """Address of the first usable byte (moves up when the front is shrunk)."""
        return self._address

    @property
    def size(self) -> int:
        """Usable size in bytes."""
        return self._size

    @property
    def max_size(self) -> int:
        """Size up to which ``extend()`` cannot fail for lack of room (the headroom's end)."""
        return self._max_size

    @property
    def closed(self) -> bool:
        return self._closed

    _public_name = "aiopmem.sync.Reservation"

    def __repr__(self) -> str:
        return self._repr(self._public_name)

    def _repr(self, name: str) -> str:
        if self.closed:
            return f"<{name} closed>"
        return (
            f"<{name} address={self.address:#x} size={self.size:#x} "
            f"max_size={self.max_size:#x} mappings={self._count}>"
        )

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
        # Plain ints skip the coercion calls: this is the hot path.
        if type(offset) is not int:
            offset = as_int(offset, "offset")
        n = length if length is None or type(length) is int else as_int(length, "length")
        if type(file_offset) is not int:
            file_offset = as_int(file_offset, "file_offset")
        if type(protection) is not Protection:
            _check_protection(protection)
        if type(sharing) is not Sharing:
            _check_sharing(sharing)
        if self.closed:
            raise ClosedError("the reservation is closed")
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
        """map_file()'s argument checks (types, closed) before a path is opened by a job (the
        same as map_file() makes inline: there they skip the calls for plain ints, its hot
        path)."""
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
        shared = sharing is _SHARED
        kind = _FILE_SHARED if shared else _FILE_PRIVATE
        bits = _PROT_BITS[protection._value_]
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
        off = offset if -_I64 <= offset < _I64 else _int64(offset)  # no call on the hot path
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

    # -- keeping the range whole ---------------------------------------------------------------

    def _warn_hole(self, start: int, end: int) -> None:
        warnings.warn(
            f"aiopmem: [{start - self.address:#x}, {end - self.address:#x}) of the reservation "
            f"at {self.address:#x} could not be re-reserved; nothing is mapped there until "
            "it can be",
            RuntimeWarning,
            stacklevel=3,
        )

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Offset ranges that could not be re-reserved after an unmap at the kernel's VMA limit
        (normally empty). Nothing is mapped there until the range can be taken back."""
        base = self.address
        return [(s - base, e - base) for s, e in self._holes()]

    # -- extent --------------------------------------------------------------------------------

    # extend() and shrink() are the C base's: plain aligned ints on an open reservation go
    # straight to the transition (no Python frame on that path); every other call comes here.

    def _extend_checked(self, size: int) -> None:
        """extend() for anything but a plain aligned int on an open reservation."""
        n = as_int(size, "size")
        if self.closed:
            raise ClosedError("the reservation is closed")
        if n & _MASK:
            raise LengthUnalignedError(f"size {n} is not a multiple of {ALIGNMENT}")
        if n < 0:
            raise LengthOutOfRangeError(f"size {n} is negative")
        if n == 0:
            return
        if n >= ADDRESS_LIMIT:
            code = _ffi.C_PAST_ASPACE if not self.closed else _C_CLOSED
        else:
            code = self._extend(n)
        if code:
            self._extend_failed(n, code)

    def _extend_failed(self, n: int, code: int) -> None:
        """Raise what the code of a refused extend by ``n`` stands for."""
        if code == _C_CLOSED:
            raise ClosedError("the reservation is closed")
        if code == _ffi.C_PAST_ASPACE:
            raise LengthOutOfRangeError(
                f"extending by {n} bytes would pass the end of the address space"
            )
        if code == _ffi.C_EXTEND_EXISTS:
            raise MappingExistsError(
                f"cannot extend to {self.size + n} bytes: the address space after the "
                "reservation's headroom is in use"
            )
        raise os_error(code)

    def _shrink_checked(self, offset: int, size: int) -> None:
        """shrink() for anything but plain aligned ints on an open reservation."""
        off = as_int(offset, "offset")
        n = as_int(size, "size")
        if self.closed:
            raise ClosedError("the reservation is closed")
        if off & _MASK:
            raise OffsetUnalignedError(f"offset {off} is not a multiple of {ALIGNMENT}")
        if n & _MASK:
            raise LengthUnalignedError(f"size {n} is not a multiple of {ALIGNMENT}")
        code = self._shrink(_int64(off), _int64(n))
        if code:
            self._shrink_failed(off, n, code)

    def _shrink_failed(self, off: int, n: int, code: int) -> None:
        """Raise what the code of a refused shrink of ``[off, off + n)`` stands for."""
        cur = self.size
        if code == _C_CLOSED:
            raise ClosedError("the reservation is closed")
        if code == _ffi.C_OFF_RANGE:
            raise OffsetOutOfRangeError(f"offset {off} is outside the reservation [0, {cur})")
        if code == _ffi.C_LEN_NONPOS:
            raise LengthOutOfRangeError(f"size {n} is not positive")
        if code == _ffi.C_LEN_PAST:
            raise LengthOutOfRangeError(
                f"[{off}, {off + n}) reaches past the end of the reservation ({cur} bytes)"
            )
        if code == _ffi.C_MID:
            raise NotSupportedError("only the beginning or the end of a reservation can be shrunk")
        if code == _ffi.C_WHOLE:
            raise NotSupportedError("shrinking the whole reservation is not supported; close it")
        if code == _ffi.C_NOT_EMPTY:
            raise ReservationNotEmptyError(f"[{off:#x}, {off + n:#x}) holds a mapping")
        raise os_error(code)

    # -- close ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap every mapping and release all the address space, headroom included. Idempotent.

        Raises:
            BufferError: a view of some mapping is still alive; nothing is changed.
            OSError: the kernel refused to release (part of) the range. The reservation stays
                open; if some of it was released already, that part is a hole (see
                ``holes``) and the mappings that lay in it are closed. Call close() again.
        """
        self._closed_outcome(self._close())

    def _closed_outcome(self, code: int) -> None:
        """Raise what a close's code stands for (0: closed)."""
        if code:
            if code <= _C_BUSY_BASE:
                raise busy_error(code, "close the reservation")
            raise os_error(code)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        close_on_exit(self, self.close, exc)

    def __del__(self) -> None:
        # A reservation dropped without close(): release it (as an mmap object does) unless a
        # view still reaches into it, and warn as an unclosed file does.
        if self.closed:
            return
        try:
            warnings.warn(
                f"unclosed reservation {self!r}", ResourceWarning, stacklevel=2, source=self
            )
        finally:
            # Released even when the warning is an error (-W error): it then leaves __del__
            # and is reported as unraisable, as for an unclosed file.
            with contextlib.suppress(Exception):  # a view still reaches into it
                self.close()

    # -- views -------------------------------------------------------------------------------

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """One memoryview over ``[offset, offset+length)`` of the reservation (default: all of
        it), spanning every mapping in the range: the files mapped back to back read and write
        as one contiguous buffer. The range must be covered by mappings without a gap (a
        placeholder cannot be read); the view is read-only if any of them lacks WRITE.

        While the view (or a slice, or an object built on it) is alive, unmapping any mapping
        it covers, or closing the reservation, raises ``BufferError``.

        Raises:
            TypeError: offset or length is not an integer.
            ClosedError: the reservation is closed.
            OffsetOutOfRangeError: offset outside ``[0, size]``.
            LengthOutOfRangeError: length negative or reaching past the end.
            NoAccessError: part of the range is not mapped, or a mapping in it lacks READ.
        """
        lo, hi = self._span(offset, as_optional_int(length, "length"))
        if lo == hi:
            return memoryview(b"")
        base = self.address
        off, n = lo - base, hi - lo
        r = self._rview(lo, hi)
        if type(r) is memoryview:
            return r
        if r == _C_CLOSED:
            raise ClosedError("the reservation is closed")
        if r[0] == "noread":
            raise NoAccessError(f"{r[1]!r} lacks READ")
        raise NoAccessError(
            f"[{r[1] - base:#x}, {r[2] - base:#x}) of the reservation is not "
            f"mapped (the view asked for [{off:#x}, {off + n:#x}))"
        )

    # -- memory operations over a range -------------------------------------------------------

    def _span(self, offset: object, length: int | None) -> tuple[int, int]:
        """``[offset, offset+length)`` of the reservation (None: to the end), checked: absolute
        ``[lo, hi)``."""
        off = as_int(offset, "offset")
        if self.closed:
            raise ClosedError("the reservation is closed")
        size = self.size
        if off < 0 or off > size:
            raise OffsetOutOfRangeError(f"offset {off} is outside the reservation [0, {size}]")
        if length is None:
            length = size - off
        elif length < 0 or off + length > size:
            raise LengthOutOfRangeError(
                f"length {length} at offset {off} reaches outside the reservation of {size} bytes"
            )
        base = self.address
        return base + off, base + off + length

    def _write_args(self, offset: object, data: object) -> MemArgs:
        mv = bytes_view(data)
        lo, hi = self._span(offset, mv.nbytes)
        return _MEM_WRITE, 0, None, lo, hi, _ffi.PROT_WRITE, mv

    def _read_args(self, offset: object, length: object) -> MemArgs:
        lo, hi = self._span(offset, as_int(length, "length"))
        return _MEM_READ, 0, None, lo, hi, _ffi.PROT_READ, None

    def _read_into_args(self, buffer: object, offset: object) -> MemArgs:
        mv = bytes_view(buffer, writable=True)
        lo, hi = self._span(offset, mv.nbytes)
        return _MEM_READ, 0, None, lo, hi, _ffi.PROT_READ, mv

    def _populate_args(self, offset: object, length: object) -> MemArgs:
        lo, hi = self._span(offset, as_optional_int(length, "length"))
        return _MEM_POPULATE, 0, None, lo, hi, _ffi.PROT_READ, None

    def _persist_args(self, offset: object, length: object) -> MemArgs:
        lo, hi = self._span(offset, as_optional_int(length, "length"))
        return _MEM_PERSIST, 0, None, lo, hi, 0, None

    def write(self, offset: int, data: object) -> int:
        """Copy the bytes-like ``data`` to ``[offset, offset + len(data))`` of the reservation,
        across mappings that sit back to back; returns ``len(data)`` in bytes. The copy runs
        with the GIL released; every byte is checked before any is copied.

        Raises (in this order):
            TypeError: ``data`` is not a (C-contiguous) bytes-like object, or ``offset`` not an
                integer.
            ClosedError: the reservation is closed.
            OffsetOutOfRangeError: ``offset`` outside ``[0, size]``.
            LengthOutOfRangeError: the range reaches past the end.
            NoAccessError: a byte of the range is not mapped, or mapped without WRITE (the
                message names the first such offset).
        """
        args = self._write_args(offset, data)
        mem_outcome(self._mem(*args), "write", self)
        return args[4] - args[3]

    def read(self, offset: int, length: int) -> bytes:
        """A copy of ``[offset, offset+length)`` of the reservation, across mappings back to
        back. Raises: as ``write()`` (NoAccessError: not mapped, or mapped without READ)."""
        r = mem_outcome(self._mem(*self._read_args(offset, length)), "read", self)
        assert r is not None
        return r

    def read_into(self, buffer: object, offset: int) -> int:
        """Fill the writable ``buffer`` with ``len(buffer)`` bytes (in bytes) from ``offset``
        of the reservation; returns that number. Raises: as ``read()`` (TypeError: not a
        writable buffer)."""
        args = self._read_into_args(buffer, offset)
        mem_outcome(self._mem(*args), "read", self)
        return args[4] - args[3]

    def populate(self, offset: int = 0, length: int | None = None) -> None:
        """Fault in the pages of ``[offset, offset+length)`` of the reservation (default: all
        of it), each mapping for writing when it has WRITE, as ``Mapping.populate()``.

        Raises: TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError;
        NoAccessError: a byte of the range is not mapped or lacks READ; OSError.
        """
        mem_outcome(self._mem(*self._populate_args(offset, length)), "populate", self)

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make every shared file mapping in ``[offset, offset+length)`` of the reservation
        durable (msync of the covering pages). Private and anonymous mappings need no syscall;
        unmapped parts are skipped.

        Raises: TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError; OSError
        (e.g. EIO).
        """
        mem_outcome(self._mem(*self._persist_args(offset, length)), "persist", self)

    # -- describe (plain, never waits for a syscall) -------------------------------------------

    def describe(self, *, width: int = 64) -> str:
        """A picture of the reservation for people: a header line (address range, size,
        max_size, number of mappings), a one-line map of ``[address, address + max_size)`` in
        ``width`` columns (a symbol per mapping, ``.`` placeholder, ``~`` headroom past
        ``size``; when there is headroom, a second line maps ``[address, address + size)``
        alone), and a table of the mappings: offset, size, end, file_offset, protection,
        sharing, file (path, or ``anonymous``). A closed reservation gives one line.

        Drawn from a consistent snapshot of the library's state, like ``mappings()``: a mapping
        being made is not shown yet, one being unmapped still is.

        Raises:
            TypeError: width is not an integer.
            ValueError: width < 1.
        """
        columns = as_int(width, "width")
        if columns < 1:
            raise ValueError(f"width {columns} is not positive")
        snap = self._snapshot()
        if snap is None:
            layout = None
        else:
            base, size, max_size, mappings, holes = snap
            layout = Layout(
                base,
                size,
                max_size,
                # Public attributes only: the mapping's internals are the hot path's.
                tuple(
                    Row(m.address - base, m.size, m.file, m.file_offset, m.protection, m.sharing)
                    for m in mappings
                ),
                tuple((s - base, e - base) for s, e in holes),
            )
        return render(layout, columns)

    # -- lookups (plain, never wait for a syscall) ---------------------------------------------

    def find(self, offset: int, length: int = 0) -> Mapping | None:
        """The lowest mapping intersecting ``[offset, offset+length)``; with ``length == 0``
        the mapping containing ``offset``. None if there is none (out-of-range arguments and
        a closed reservation included). A mapping being made is not visible yet; one being
        unmapped still is."""
        off = offset if type(offset) is int else as_int(offset, "offset")
        n = length if type(length) is int else as_int(length, "length")
        if n < 0:
            return None
        lo = self.address + off
        hi = min(lo + (n or 1), ADDRESS_LIMIT - 1)
        lo = max(lo, 0)
        if lo >= hi:
            return None
        return self._find(lo, hi)  # type: ignore[no-any-return]

    def _check_mapping(self, mapping: object) -> Mapping:
        if not isinstance(mapping, Mapping):
            name = public_name(mapping)
            hint = " (use its .sync)" if name == "aiopmem.Mapping" else ""
            raise TypeError(f"expected an aiopmem.sync.Mapping, not {name}{hint}")
        return mapping

    def find_prev(self, mapping: Mapping) -> Mapping | None:
        """The mapping right before ``mapping`` in address order, or None."""
        m = self._check_mapping(mapping)
        return None if m._rsv is not self else self._step(m, -1)

    def find_next(self, mapping: Mapping) -> Mapping | None:
        """The mapping right after ``mapping`` in address order, or None."""
        m = self._check_mapping(mapping)
        return None if m._rsv is not self else self._step(m, 1)

    def find_first(self) -> Mapping | None:
        """The lowest mapping, or None."""
        return self._edge(-1)  # type: ignore[no-any-return]

    def find_last(self) -> Mapping | None:
        """The highest mapping, or None."""
        return self._edge(1)  # type: ignore[no-any-return]

    def mappings(self) -> list[Mapping]:
        """A snapshot of the live mappings, in address order."""
        return self._values()


def reserve(
    size: int,
    *,
    address: int | None = None,
    max_size: int | None = None,
    alignment: int | None = None,
) -> Reservation:
    """Reserve ``size`` bytes of address space as an inaccessible placeholder.

    With ``address``, the reservation is placed exactly there or not at all. ``max_size`` keeps
    ``[address, address + max_size)`` so that ``extend()`` up to it cannot fail; without it, a
    default headroom of ``max(size, 1 GiB)`` is taken where free (see ``docs/design.md``).
    ``alignment`` (a power of two multiple of ALIGNMENT, e.g. 2 MiB for transparent huge pages):
    the address is a multiple of it; the address space taken only to get there is given back at
    once.

    Raises (checked in this order):
        TypeError: an argument is not an integer.
        AddressUnalignedError: ``address`` unaligned.
        LengthUnalignedError: ``size`` unaligned.
        LengthOutOfRangeError: ``size <= 0``, or too large for the platform.
        LengthUnalignedError: ``max_size`` unaligned.
        LengthOutOfRangeError: ``max_size < size``, or too large for the platform.
        AlignmentError: ``alignment`` not a power of two, or not a multiple of ALIGNMENT.
        AddressUnalignedError: ``address`` not a multiple of ``alignment``.
        OSError(EINVAL): ``address`` negative, or the range would pass the end of the address space.
        MappingExistsError: with ``address``, part of the range is occupied.
        OSError: the kernel refused (e.g. ENOMEM above the user address space).
    """
    args = reserve_args(size, address, max_size, alignment)
    return reserved(_ffi.reserve(*args), args)


#: What ``_ffi.reserve`` (and ``reserve_job`` after its port and waiter) takes: the class,
#: address (or None), size, max_size (or None), default headroom, alignment (0: the page).
ReserveArgs: TypeAlias = "tuple[type[Reservation], int | None, int, int | None, int, int]"


def reserve_args(size: object, address: object, max_size: object, alignment: object) -> ReserveArgs:
    """reserve()'s checks, in the contract's order; what ``_ffi.reserve`` takes."""
    n = as_int(size, "size")
    addr = as_optional_int(address, "address")
    limit = as_optional_int(max_size, "max_size")
    if addr is not None and addr & _MASK:
        raise AddressUnalignedError(f"address {addr:#x} is not a multiple of {ALIGNMENT}")
    if n & _MASK:
        raise LengthUnalignedError(f"size {n} is not a multiple of {ALIGNMENT}")
    if n <= 0:
        raise LengthOutOfRangeError(f"size {n} is not positive")
    if n >= ADDRESS_LIMIT:
        raise LengthOutOfRangeError(f"size {n} is larger than the address space")
    if limit is not None:
        if limit & _MASK:
            raise LengthUnalignedError(f"max_size {limit} is not a multiple of {ALIGNMENT}")
        if limit < n:
            raise LengthOutOfRangeError(f"max_size {limit} is smaller than size {n}")
        if limit >= ADDRESS_LIMIT:
            raise LengthOutOfRangeError(f"max_size {limit} is larger than the address space")
    align = 0
    if alignment is not None:
        align = as_int(alignment, "alignment")
        if align <= 0 or align & (align - 1) or align & _MASK:
            raise AlignmentError(f"alignment {align} is not a power of two multiple of {ALIGNMENT}")
        if addr is not None and addr % align:
            raise AddressUnalignedError(f"address {addr:#x} is not a multiple of {align:#x}")
    held = n if limit is None else limit
    if addr is not None and (addr < 0 or addr + held > ADDRESS_LIMIT):
        raise os_error(errno.EINVAL)
    if align >= ADDRESS_LIMIT:
        raise os_error(errno.ENOMEM)  # no address but 0 is a multiple of it
    return Reservation, addr, n, limit, default_headroom(n), align


def reserved(r: object, args: ReserveArgs) -> Reservation:
    """The reservation ``_ffi.reserve(*args)`` (or its job) made, or the error its code stands
    for."""
    if type(r) is int:
        if r == _C_EXISTS:
            _, addr, n, limit, _, _ = args
            assert addr is not None
            held = n if limit is None else limit
            raise MappingExistsError(
                f"[{addr:#x}, {addr + held:#x}) is occupied by another mapping"
            )
        raise os_error(r)
    return r  # type: ignore[return-value]
