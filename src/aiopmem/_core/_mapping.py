"""A mapping: a file region or anonymous memory placed at a fixed offset of a reservation.

Guarantees (thread-shared state): a mapping's state (``_state``, ``_pins``, ``_views``)
changes only under its reservation's state lock. Memory is handed out only through views whose
buffer exporters the mapping tracks weakly in ``_views`` (its own views and the reservation-wide
views that cover it): an exporter is alive exactly while something outside the library can
reach the memory through it (a memoryview, a slice, ``view.obj``, a numpy array...).
``unmap()`` goes ahead only when none is alive, and sets the state that refuses new views in the
same locked section, so no Python object can reach unmapped memory (see ``_ffi/_window.c``).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from .. import _ffi
from ._align import align_down, align_up, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit
from ._enums import Granularity, Protection, Sharing
from ._errors import ClosedError, LengthOutOfRangeError, NoAccessError, OffsetOutOfRangeError
from ._placement import PLACEHOLDER_FIXED

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["CLOSED", "OPEN", "UNMAPPING", "Mapping"]

OPEN: Final = 0
UNMAPPING: Final = 1
CLOSED: Final = 2


def check_unpinned(lists: tuple[list[object], ...], what: str) -> None:
    """``BufferError`` if a view over any of these mappings is alive (state lock held)."""
    alive = _live_views(lists)
    if alive:
        raise BufferError(
            f"cannot {what}: {alive} view(s) of its memory (memoryviews, slices of them, "
            "view.obj, or objects built on them such as numpy arrays) are still alive"
        )


def new_mapping(
    rsv: Reservation,
    addr: int,
    size: int,
    span: int,
    file_offset: int,
    protection: Protection,
    sharing: Sharing,
    granularity: Granularity,
    file: str | int | None,
) -> Mapping:
    """A new open mapping (the library's constructor; ``Mapping()`` is refused to users)."""
    m = _new(Mapping)
    m._rsv = rsv
    m._addr = addr
    m._size = size
    m._span = span
    m._file_offset = file_offset
    m._protection = protection
    m._sharing = sharing
    m._granularity = granularity
    m._file = file
    m._state = OPEN
    m._pins = 0
    m._views = []
    m._facade = None
    return m


_new = object.__new__
_new_view = _ffi.new_view
_live_views = _ffi.live_views
try_mmap = _ffi.try_mmap_fixed
_raw_mmap = _ffi.raw_mmap_fixed
_INJECTING: Final = _ffi.INJECTING
_PROT_NONE: Final = _ffi.PROT_NONE


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
class Mapping(metaclass=NoPublicConstructor):
    """A file region or anonymous memory mapped into a reservation.

    Made by ``Reservation.map_file()`` or ``Reservation.map_anonymous()``; unmapped by
    ``unmap()`` (alias ``close()``, or leaving ``with``), which leaves an inaccessible
    placeholder in its place.
    """

    __slots__ = (
        "__weakref__",
        "_addr",
        "_facade",
        "_file",
        "_file_offset",
        "_granularity",
        "_pins",
        "_protection",
        "_rsv",
        "_sharing",
        "_size",
        "_span",
        "_state",
        "_views",
    )

    # Built by new_mapping(): no __init__, so that the metaclass refuses user construction.
    _rsv: Reservation
    _addr: int
    _size: int
    _span: int
    _file_offset: int
    _protection: Protection
    _sharing: Sharing
    _granularity: Granularity
    #: A path, a descriptor number (formatted on demand), or None for anonymous memory.
    _file: str | int | None
    _state: int
    #: persist() calls in flight; unmap() waits for them.
    _pins: int
    #: Weak references to the buffer exporters of every view over this mapping's memory (its
    #: own and the reservation-wide ones that cover it); dead ones are pruned as it goes.
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
        return self._addr - self._rsv._address

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
        return self._granularity

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
        rsv = self._rsv
        with rsv._lock:  # against an unmap checking for live views
            if self._state != OPEN:
                raise ClosedError("the mapping is unmapped")
            return _new_view(
                rsv,
                (self._views,),
                self._addr + off,
                n,
                Protection.WRITE not in self._protection,
            )

    # -- persist ------------------------------------------------------------------------------

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make ``[offset, offset+length)`` durable: msync(MS_SYNC) of the pages covering it.

        Returns once the data is on stable storage for shared file mappings (a no-op in effect
        for private and anonymous ones). The mapping cannot be unmapped while this runs.

        Raises:
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError: as ``view()``.
            OSError: msync failed (e.g. EIO: the data could not be written back).
        """
        off, n = as_int(offset, "offset"), as_optional_int(length, "length")
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        off, n = _range(off, n, self._size)
        rsv = self._rsv
        gate = rsv._gate
        with rsv._lock:
            if self._state != OPEN:
                raise ClosedError("the mapping is unmapped")
            gate.enter_shared()
            if self._state != OPEN:
                gate.leave_shared()
                raise ClosedError("the mapping is unmapped")
            self._pins += 1
        try:
            start = align_down(self._addr + off)
            end = align_up(self._addr + off + n)
            if end > start:
                _ffi.msync(start, end - start, _ffi.MS_SYNC)
        finally:
            with rsv._lock:
                self._pins -= 1
                if self._pins:
                    gate.leave_shared()
                else:  # an unmap may wait for the last one
                    gate.leave_shared_waking()

    # -- unmap ---------------------------------------------------------------------------------

    def unmap(self) -> None:
        """Unmap: the range becomes an inaccessible placeholder of the reservation again (never
        a hole another mapping could take). Idempotent. Waits for a ``persist()`` in flight.

        Raises:
            BufferError: a view of the mapping (or an object built on one) is still alive;
                nothing is changed.
            OSError: the kernel refused; nothing is changed.
        """
        rsv = self._rsv
        gate = rsv._gate
        with rsv._lock:
            if self._state != OPEN or self._pins or not gate.try_enter_shared():
                if self._state == CLOSED:
                    return
                gate.enter_shared()
                try:
                    while self._state == UNMAPPING or self._pins:
                        gate.wait()
                except BaseException:
                    gate.leave_shared_waking()
                    raise
                if self._state == CLOSED:
                    gate.leave_shared()
                    return
            if self._views:
                try:
                    check_unpinned((self._views,), "unmap the mapping")
                except BaseException:
                    gate.leave_shared()
                    raise
            self._state = UNMAPPING
        addr = self._addr
        # The common case in one call; failures (and the VMA-limit fallback) take the slow path.
        hole = False
        err = (
            try_mmap(addr, self._span, _PROT_NONE, PLACEHOLDER_FIXED)
            if _INJECTING
            else _raw_mmap(addr, self._span, _PROT_NONE, PLACEHOLDER_FIXED, -1, 0)
        )
        if err:
            try:
                hole = rsv._replace_with_placeholder(addr, self._span, err)
            except BaseException:
                with rsv._lock:
                    self._state = OPEN
                    gate.leave_shared_waking()
                raise
        with rsv._lock:
            if hole:  # stays claimed, invisible, until repaired
                rsv._index.replace(addr, None)
            else:
                rsv._index.remove(addr)
            self._state = CLOSED
            gate.leave_shared_waking()
        if hole:
            rsv._warn_hole(addr, addr + self._span)

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
