"""A mapping: a file region or anonymous memory placed at a fixed offset of a reservation.

Guarantees (thread-shared state): a mapping's state (``_state``, ``_pins``, ``_window``,
``_spans``) changes only under its reservation's state lock. Memory is handed out only through
``Window`` objects, which count their exported buffers: the mapping's own (``view()``) and those
of reservation-wide views that cover it (``Reservation.view()``, listed in ``_spans``).
``unmap()`` closes every one of them atomically (under the GIL) before the memory goes away and
fails with ``BufferError`` if any buffer is still exported, so no Python object can reach
unmapped memory.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from .. import _ffi
from ._align import align_down, align_up, as_int, as_optional_int
from ._construct import NoPublicConstructor
from ._enums import Granularity, Protection, Sharing
from ._errors import ClosedError, LengthOutOfRangeError, NoAccessError, OffsetOutOfRangeError
from ._placement import PLACEHOLDER_FIXED

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["CLOSED", "OPEN", "UNMAPPING", "Mapping"]

OPEN: Final = 0
UNMAPPING: Final = 1
CLOSED: Final = 2


def close_windows(windows: list[_ffi.Window], what: str) -> None:
    """Close every window, or none: ``BufferError`` if one still has exported buffers.

    A window already closed stays closed whatever happens: a reservation-wide view's window is
    closed by the unmap of any mapping it covers, and reopening it (for the unmap of another
    one that then fails) would hand out the unmapped memory again to whoever holds the window
    (``view.obj``)."""
    closed: list[_ffi.Window] = []
    for w in windows:
        if w.closed:
            continue
        if not w.try_close():
            reopen_windows(closed)
            raise BufferError(
                f"cannot {what}: {w.exports} exported buffer(s) (views, slices of them or "
                "objects built on them, such as numpy arrays) are still alive"
            )
        closed.append(w)


def reopen_windows(windows: list[_ffi.Window]) -> None:
    for w in windows:
        w.reopen()


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
    m._window = None
    m._spans = None
    m._facade = None
    return m


_new = object.__new__
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
        "_spans",
        "_state",
        "_window",
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
    #: The mapping's own buffer exporter, made by the first view().
    _window: _ffi.Window | None
    #: Windows of reservation-wide views that cover (part of) this mapping.
    _spans: list[_ffi.Window] | None
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

    def __repr__(self) -> str:
        state = "closed" if self._state == CLOSED else f"offset={self.offset:#x}"
        what = self.file if self._file is not None else "anonymous"
        return (
            f"<aiopmem.Mapping {what} {state} size={self._size:#x} "
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
        window = self._window
        if window is None or self._state != OPEN:
            with self._rsv._lock:
                if self._state != OPEN:
                    raise ClosedError("the mapping is unmapped")
                window = self._window
                if window is None:
                    window = self._window = _ffi.Window(
                        self._addr, self._size, Protection.WRITE not in self._protection
                    )
        try:
            mv = memoryview(window)
        except ValueError:
            raise ClosedError("the mapping is unmapped") from None
        if off == 0 and n == self._size:
            return mv
        with mv:
            return mv[off : off + n]

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
                gate.leave_shared()
                if not self._pins:
                    gate.wake()

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
            if self._state != OPEN or self._pins or gate._exclusive or gate._waiting:
                if self._state == CLOSED:
                    return
                gate.enter_shared()
                while self._state == UNMAPPING or self._pins:
                    gate.wait()
                if self._state == CLOSED:
                    gate.leave_shared()
                    return
            else:
                gate._shared += 1
            if self._window is not None or self._spans is not None:
                try:
                    close_windows(self._windows(), "unmap the mapping")
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
                    # Only the mapping's own window: a reservation-wide view's window may
                    # cover another mapping unmapped meanwhile (its buffers were all
                    # released, so keeping it closed costs nothing).
                    if self._window is not None:
                        self._window.reopen()
                    gate.leave_shared()
                    gate.wake()
                raise
        with rsv._lock:
            if hole:  # stays claimed, invisible, until repaired
                rsv._index.replace(addr, None)
            else:
                rsv._index.remove(addr)
            self._state = CLOSED
            self._spans = None
            gate._shared -= 1
            if gate._sleepers:
                gate.wake()
        if hole:
            rsv._warn_hole(addr, addr + self._span)

    close = unmap

    def _windows(self) -> list[_ffi.Window]:
        """Every window that reaches this mapping's memory (state lock held)."""
        own = [] if self._window is None else [self._window]
        return own if self._spans is None else own + self._spans

    def _add_span(self, window: _ffi.Window) -> None:
        """Register a reservation-wide view's window (state lock held). Released windows are
        closed and dropped on the way, so the list does not grow with every view taken."""
        spans = self._spans
        if spans is None:
            self._spans = [window]
            return
        spans[:] = [w for w in spans if not (w.exports == 0 and w.try_close())]
        spans.append(window)

    def __enter__(self) -> Mapping:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmap()
