"""Views and copies over a range of a reservation, across the mappings that sit back to back
in it: ``view()``, and the memory operations ``write/read/read_into/populate/persist`` (the
windows themselves are the C core's, ``_ffi/_core_window.h``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import _ffi
from ._align import as_int, as_optional_int
from ._base import ReservationFields
from ._errors import (
    ClosedError,
    NoAccessError,
)
from ._mapping import Mapping, MemArgs, bytes_view, check_range, mem_outcome

__all__ = ["Views"]


_C_CLOSED: Final = _ffi.C_CLOSED
_MEM_PERSIST: Final = _ffi.MEM_PERSIST
_MEM_POPULATE: Final = _ffi.MEM_POPULATE
_MEM_WRITE: Final = _ffi.MEM_WRITE
_MEM_READ: Final = _ffi.MEM_READ


class Views(ReservationFields):
    """The views and range operations of a reservation (a part of ``Reservation``)."""

    __slots__ = ()

    if TYPE_CHECKING:  # of Reservation, which this is a part of

        def find(self, offset: int, length: int = 0) -> Mapping | None: ...

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
        off, n = check_range(off, length, self.size, "reservation")
        base = self.address
        return base + off, base + off + n

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
