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

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["CLOSED", "OPEN", "UNMAPPING", "Mapping"]

OPEN: Final = 0
UNMAPPING: Final = 1
CLOSED: Final = 2


def close_windows(windows: list[_ffi.Window], what: str) -> None:
    """Close every window, or none: ``BufferError`` if one still has exported buffers."""
    for k, w in enumerate(windows):
        if not w.try_close():
            for done in windows[:k]:
                done.reopen()
            raise BufferError(
                f"cannot {what}: {w.exports} exported buffer(s) (views, slices of them or "
                "objects built on them, such as numpy arrays) are still alive"
            )


def reopen_windows(windows: list[_ffi.Window]) -> None:
    for w in windows:
        w.reopen()


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

    def __init__(
        self,
        rsv: Reservation,
        addr: int,
        size: int,
        file_offset: int,
        protection: Protection,
        sharing: Sharing,
        granularity: Granularity,
        file: str | None,
    ) -> None:
        self._rsv = rsv
        self._addr = addr
        self._size = size
        self._span = align_up(size)
        self._file_offset = file_offset
        self._protection = protection
        self._sharing = sharing
        self._granularity = granularity
        self._file = file
        self._state = OPEN
        self._pins = 0
        self._window: _ffi.Window | None = None
        #: Windows of reservation-wide views that cover (part of) this mapping.
        self._spans: list[_ffi.Window] | None = None
        #: The async layer's object for this mapping (set by it, opaque here).
        self._facade: object | None = None

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
        return self._file

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
        what = self._file if self._file is not None else "anonymous"
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
            if self._state == CLOSED:
                return
            gate.enter_shared()
            try:
                while self._state == UNMAPPING or self._pins:
                    gate.wait()
                if self._state == CLOSED:
                    gate.leave_shared()
                    return
                windows = self._windows()
                close_windows(windows, "unmap the mapping")
                self._state = UNMAPPING
            except BaseException:
                gate.leave_shared()
                raise
        try:
            hole = rsv._replace_with_placeholder(self._addr, self._span)
        except BaseException:
            with rsv._lock:
                self._state = OPEN
                reopen_windows(windows)
                gate.leave_shared()
                gate.wake()
            raise
        with rsv._lock:
            if hole:  # stays claimed, invisible, until repaired
                rsv._index.replace(self._addr, None)
            else:
                rsv._index.remove(self._addr)
            self._state = CLOSED
            self._spans = None
            gate.leave_shared()
            gate.wake()
        if hole:
            rsv._warn_hole(self._addr, self._addr + self._span)

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
