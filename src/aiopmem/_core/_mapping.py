"""A mapping: a file region or anonymous memory placed at a fixed offset of a reservation.

Guarantees (thread-shared state): a mapping's state lives in its C base (``_ffi._core``,
``MappingBase``): address, size, state (open, being unmapped, closed), the persists in flight
and the weak references to every buffer exporter over its memory. It changes only inside the
reservation's transitions, each one C call (see ``_ffi/_core.c``), so no interruption can tear
it. Memory is handed out only through views whose exporters the mapping tracks: ``unmap()``
goes ahead only when none is alive, and marks the mapping in the same call, so no Python
object can reach unmapped memory.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from .. import _ffi
from ._align import align_down, align_up, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit
from ._enums import Granularity, Protection, Sharing
from ._errors import ClosedError, LengthOutOfRangeError, NoAccessError, OffsetOutOfRangeError

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["CLOSED", "OPEN", "UNMAPPING", "Mapping", "busy_error"]

OPEN: Final = _ffi.ST_OPEN
UNMAPPING: Final = _ffi.ST_UNMAPPING
CLOSED: Final = _ffi.ST_CLOSED
_BUSY_BASE: Final = _ffi.C_BUSY_BASE
_C_CLOSED: Final = _ffi.C_CLOSED
_C_HOLE_NOTED: Final = _ffi.C_HOLE_NOTED
#: Granularity by the C code of the mapping (``_gran``).
_GRANULARITY: Final = (Granularity.BYTE, Granularity.CACHE_LINE, Granularity.PAGE)


def busy_error(code: int, what: str) -> BufferError:
    """The BufferError for a transition refused because views are alive (code from C)."""
    alive = _BUSY_BASE - code
    return BufferError(
        f"cannot {what}: {alive} view(s) of its memory (memoryviews, slices of them, "
        "view.obj, or objects built on them such as numpy arrays) are still alive"
    )


def _range(off: int, n: int | None, size: int) -> tuple[int, int]:
    """Check ``(offset, length)`` against a mapping of ``size`` bytes (view and persist)."""
    if off < 0 or off > size:
        raise OffsetOutOfRangeError(f"offset {off} is outside the mapping [0, {size}]")
    if n is None:
        return off, size - off
    if n < 0 or off + n > size:
        raise LengthOutOfRangeError(
            f"length {n} at offset {off} reaches outside the mapping of {size} bytes"
        )
    return off, n


@final
class Mapping(_ffi.MappingBase, metaclass=NoPublicConstructor):
    """A file region or anonymous memory mapped into a reservation.

    Made by ``Reservation.map_file()`` or ``Reservation.map_anonymous()``; unmapped by
    ``unmap()`` (alias ``close()``, or leaving ``with``), which leaves an inaccessible
    placeholder in its place.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # the fields of the C base (read-only from Python)
        _rsv: Reservation
        _addr: int
        _size: int
        _span: int
        _file_offset: int
        _protection: Protection
        _sharing: Sharing
        _gran: int
        #: A path, a descriptor number (formatted on demand), or None for anonymous memory.
        _file: str | int | None
        _state: int
        _pins: int
        _views: list[object]
        #: The async layer's object for this mapping (set by it, opaque here).
        _facade: object | None

    # -- attributes (plain, non-blocking) ----------------------------------------------------

    @property
    def address(self) -> int:
        """Absolute address of the first mapped byte (never changes)."""
        return self._addr

    @property
    def size(self) -> int:
        """Bytes mapped (the length asked for; the last page may be partial)."""
        return self._size

    @property
    def offset(self) -> int:
        """Current offset inside the reservation (drops when the reservation's front is shrunk)."""
        return self._addr - self._rsv.address

    @property
    def reservation(self) -> Reservation:
        return self._rsv

    @property
    def file_offset(self) -> int:
        """Offset in the file of the first mapped byte (0 for anonymous mappings)."""
        return self._file_offset

    @property
    def file(self) -> str | None:
        """What was mapped: the path, ``"file descriptor N"``, or None for anonymous memory."""
        f = self._file
        return f"file descriptor {f}" if type(f) is int else f  # type: ignore[return-value]

    @property
    def protection(self) -> Protection:
        return self._protection

    @property
    def sharing(self) -> Sharing:
        return self._sharing

    @property
    def granularity(self) -> Granularity:
        """The coarsest store granularity ``persist()`` guarantees (see ``Granularity``)."""
        return _GRANULARITY[self._gran]

    @property
    def closed(self) -> bool:
        """True once unmapped (by ``unmap()`` or by closing the reservation)."""
        return self._state == CLOSED

    _public_name = "aiopmem.sync.Mapping"

    def __repr__(self) -> str:
        return self._repr(self._public_name)

    def _repr(self, name: str) -> str:
        state = "closed" if self._state == CLOSED else f"offset={self.offset:#x}"
        what = self.file if self._file is not None else "anonymous"
        return (
            f"<{name} {what} {state} size={self._size:#x} "
            f"address={self._addr:#x} {self._protection} {self._sharing.name}>"
        )

    # -- views ---------------------------------------------------------------------------------

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A memoryview of the mapped bytes ``[offset, offset+length)`` (default: all of them).

        The view is read-only when the mapping lacks WRITE. While the view, a slice of it or an
        object built on it (a numpy array...) is alive, ``unmap()`` and closing the reservation
        raise ``BufferError``; release views with ``view.release()`` or by dropping them.

        Raises:
            TypeError: offset or length is not an integer.
            ClosedError: the mapping is unmapped (or being unmapped).
            NoAccessError: the mapping's protection lacks READ.
            OffsetOutOfRangeError: offset outside ``[0, size]``.
            LengthOutOfRangeError: length negative or reaching past the end.
        """
        off, n = as_int(offset, "offset"), as_optional_int(length, "length")
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        if Protection.READ not in self._protection:
            raise NoAccessError(f"the mapping's protection {self._protection} lacks READ")
        off, n = _range(off, n, self._size)
        view = self._rsv._mview(self, off, n, Protection.WRITE not in self._protection)
        if type(view) is int:
            raise ClosedError("the mapping is unmapped")
        return view  # type: ignore[no-any-return]

    # -- persist ------------------------------------------------------------------------------

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make ``[offset, offset+length)`` durable: msync(MS_SYNC) of the pages covering it.

        Returns once the data is on stable storage for shared file mappings (a no-op in effect
        for private and anonymous ones). The mapping cannot be unmapped while this runs.

        Raises:
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError: as ``view()``.
            OSError: msync failed (e.g. EIO: the data could not be written back).
        """
        start, end = self._persist_range(offset, length)
        self._persisted(self._rsv._persist(self, start, end))

    def _persist_range(self, offset: int, length: int | None) -> tuple[int, int]:
        """persist()'s checks: the page-aligned address range ``[start, end)`` to msync."""
        off, n = as_int(offset, "offset"), as_optional_int(length, "length")
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        off, n = _range(off, n, self._size)
        return align_down(self._addr + off), align_up(self._addr + off + n)

    def _persisted(self, err: int) -> None:
        """Raise what a persist's code stands for (0: done)."""
        if err:
            if err == _C_CLOSED:
                raise ClosedError("the mapping is unmapped")
            raise OSError(err, _ffi.strerror(err))

    # -- unmap ---------------------------------------------------------------------------------

    def unmap(self) -> None:
        """Unmap: the range becomes an inaccessible placeholder of the reservation again (never
        a hole another mapping could take). Idempotent. Waits for a ``persist()`` in flight.

        Raises:
            BufferError: a view of the mapping (or an object built on one) is still alive;
                nothing is changed.
            OSError: the kernel refused; nothing is changed.
        """
        self._unmapped(self._rsv._unmap(self))

    def _unmapped(self, code: int) -> None:
        """Raise (or warn of) what an unmap's code stands for (0: done)."""
        if code:
            rsv = self._rsv
            if code == _C_HOLE_NOTED:
                rsv._warn_hole(self._addr, self._addr + self._span)
            elif code <= _BUSY_BASE:
                raise busy_error(code, "unmap the mapping")
            else:
                raise OSError(code, _ffi.strerror(code))

    close = unmap

    def __enter__(self) -> Mapping:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        close_on_exit(self, self.unmap, exc)
