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

import errno as _errno
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias, final

from .. import _ffi
from ._align import align_down, align_up, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit
from ._enums import Advice, Granularity, Protection, Sharing, prot_bits
from ._errors import ClosedError, LengthOutOfRangeError, NoAccessError, OffsetOutOfRangeError

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = [
    "CLOSED",
    "OPEN",
    "UNMAPPING",
    "Mapping",
    "MemArgs",
    "busy_error",
    "bytes_view",
    "check_range",
]

OPEN: Final = _ffi.ST_OPEN
UNMAPPING: Final = _ffi.ST_UNMAPPING
CLOSED: Final = _ffi.ST_CLOSED
_BUSY_BASE: Final = _ffi.C_BUSY_BASE
_C_CLOSED: Final = _ffi.C_CLOSED
_C_HOLE_NOTED: Final = _ffi.C_HOLE_NOTED
_C_NOACCESS: Final = _ffi.C_NOACCESS
_PROT_READ: Final = _ffi.PROT_READ
_PROT_WRITE: Final = _ffi.PROT_WRITE
_POPULATE: Final = _ffi.MEM_POPULATE
_ADVISE: Final = _ffi.MEM_ADVISE
_LOCK: Final = _ffi.MEM_LOCK
_UNLOCK: Final = _ffi.MEM_UNLOCK
_PROTECT: Final = _ffi.MEM_PROTECT
_WRITE: Final = _ffi.MEM_WRITE
_READ: Final = _ffi.MEM_READ
#: Protection by PROT_* bits (the same numbers: READ 1, WRITE 2, EXEC 4): the C core picks the
#: protection views get while a protect() is in flight from it.
_BY_BITS: Final = tuple(Protection(v) for v in range(8))
assert all(prot_bits(p) == p.value for p in _BY_BITS)

#: What ``ReservationBase._mem`` and ``_mem_job`` take: kind, arg, mapping (None: a range of
#: the reservation), absolute [lo, hi), the access needed, and the buffer (or protect's table).
MemArgs: TypeAlias = "tuple[int, int, Mapping | None, int, int, int, object]"

#: Granularity by the C code of the mapping (``_gran``).
_GRANULARITY: Final = (Granularity.BYTE, Granularity.CACHE_LINE, Granularity.PAGE)


def busy_error(code: int, what: str) -> BufferError:
    """The BufferError for a transition refused because views are alive (code from C)."""
    alive = _BUSY_BASE - code
    return BufferError(
        f"cannot {what}: {alive} view(s) of its memory (memoryviews, slices of them, "
        "view.obj, or objects built on them such as numpy arrays) are still alive"
    )


class RangeOwner(Protocol):
    """What a range operation's errors read of its reservation."""

    @property
    def address(self) -> int: ...
    def find(self, offset: int, length: int = 0) -> Mapping | None: ...


def bytes_view(data: object, writable: bool = False) -> memoryview:
    """``data`` as a flat memoryview of bytes (what the copies take): ``TypeError`` for an
    object without the buffer protocol, a non-contiguous buffer, or a read-only one when
    ``writable``."""
    try:
        mv = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        what = "a writable bytes-like object" if writable else "a bytes-like object"
        raise TypeError(f"{what} is required, not {type(data).__name__}") from None
    if writable and mv.readonly:
        raise TypeError(f"a writable buffer is required ({type(data).__name__} is read-only)")
    if not mv.c_contiguous:
        raise TypeError("a C-contiguous buffer is required")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def mem_outcome(r: object, what: str, rsv: RangeOwner | None = None) -> bytes | None:
    """Raise what a memory operation's outcome stands for; return read()'s bytes (or None).
    ``rsv``: the reservation whose range the operation covered (for NoAccessError's offset)."""
    if r == 0:
        return None
    if type(r) is bytes:
        return r
    if type(r) is tuple:  # (C_NOACCESS, address of the first byte without the access)
        raise no_access(r[1], what, rsv)
    assert type(r) is int
    if r == _C_CLOSED:
        raise ClosedError(
            "the reservation is closed" if rsv is not None else "the mapping is unmapped"
        )
    if r <= _BUSY_BASE:
        raise busy_error(r, f"{what} (it would take access away)")
    if r == _errno.EACCES:
        raise NoAccessError(f"the kernel refused to {what}: {_ffi.strerror(r)}")
    raise OSError(r, _ffi.strerror(r))


def no_access(address: int, what: str, rsv: RangeOwner | None) -> NoAccessError:
    if rsv is None:
        return NoAccessError(f"cannot {what}: the mapping lacks the access needed")
    off = address - rsv.address
    m = rsv.find(off)
    if m is None:
        return NoAccessError(f"cannot {what}: offset {off:#x} of the reservation is not mapped")
    return NoAccessError(
        f"cannot {what}: offset {off:#x} of the reservation is mapped with {m.protection}, "
        "without the access needed"
    )


def check_range(off: int, n: int | None, size: int, what: str = "mapping") -> tuple[int, int]:
    """Check ``(offset, length)`` against ``what`` (a mapping, or a reservation) of ``size``
    bytes; ``n`` None: to the end. Returns ``(offset, length)``."""
    if off < 0 or off > size:
        raise OffsetOutOfRangeError(f"offset {off} is outside the {what} [0, {size}]")
    if n is None:
        return off, size - off
    if n < 0 or off + n > size:
        raise LengthOutOfRangeError(
            f"length {n} at offset {off} reaches outside the {what} of {size} bytes"
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
        _locked: int
        _views: list[object]
        #: The async layer's object for this mapping (set by it, opaque here).
        _facade: object | None

    # -- attributes (plain, non-blocking) ----------------------------------------------------
    # address, size, file_offset, reservation, protection, sharing and closed are the C
    # base's own descriptors (read-only; no Python call per read).

    if TYPE_CHECKING:

        @property
        def address(self) -> int:
            """Absolute address of the first mapped byte (never changes)."""

        @property
        def size(self) -> int:
            """Bytes mapped (the length asked for; the last page may be partial)."""

        @property
        def file_offset(self) -> int:
            """Offset in the file of the first mapped byte (0 for anonymous mappings)."""

        @property
        def reservation(self) -> Reservation: ...

        @property
        def protection(self) -> Protection: ...

        @property
        def sharing(self) -> Sharing: ...

        @property
        def closed(self) -> bool:
            """True once unmapped (by ``unmap()`` or by closing the reservation)."""

    @property
    def offset(self) -> int:
        """Current offset inside the reservation (drops when the reservation's front is shrunk)."""
        return self._addr - self._rsv.address

    @property
    def file(self) -> str | None:
        """What was mapped: the path, ``"file descriptor N"``, or None for anonymous memory."""
        f = self._file
        return f"file descriptor {f}" if type(f) is int else f  # type: ignore[return-value]

    @property
    def granularity(self) -> Granularity:
        """The coarsest store granularity ``persist()`` guarantees (see ``Granularity``)."""
        return _GRANULARITY[self._gran]

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
        off, n = check_range(off, n, self._size)
        view = self._rsv._mview(self, off, n, Protection.WRITE not in self._protection)
        if type(view) is int:
            if view == _C_NOACCESS:  # a protect() in another thread took READ away meanwhile
                raise NoAccessError(f"the mapping's protection {self._protection} lacks READ")
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
        off, n = check_range(off, n, self._size)
        return align_down(self._addr + off), align_up(self._addr + off + n)

    def _persisted(self, err: int) -> None:
        """Raise what a persist's code stands for (0: done)."""
        if err:
            if err == _C_CLOSED:
                raise ClosedError("the mapping is unmapped")
            raise OSError(err, _ffi.strerror(err))

    # -- memory operations -------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """True while the mapping is locked in memory by ``lock()`` (False once unmapped)."""
        return bool(self._locked) and self._state != CLOSED

    def _open_range(
        self, offset: object, length: object, access: Protection | None
    ) -> tuple[int, int]:
        """A memory operation's checks as ``view()``'s (closed, access, range): absolute
        ``[lo, hi)``."""
        off, n = as_int(offset, "offset"), as_optional_int(length, "length")
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        if access is not None and access not in self._protection:
            raise NoAccessError(f"the mapping's protection {self._protection} lacks {access.name}")
        off, n = check_range(off, n, self._size)
        return self._addr + off, self._addr + off + n

    def _copy_range(self, offset: object, n: int | None, access: Protection) -> tuple[int, int]:
        """The copies' checks, in the contract's order: closed, offset, length, access
        (``n`` None: to the end)."""
        off = as_int(offset, "offset")
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        off, n = check_range(off, n, self._size)
        if access not in self._protection:
            raise NoAccessError(f"the mapping's protection {self._protection} lacks {access.name}")
        return self._addr + off, self._addr + off + n

    def _populate_args(self, offset: object = 0, length: object = None) -> MemArgs:
        lo, hi = self._open_range(offset, length, Protection.READ)
        return _POPULATE, 0, self, lo, hi, _PROT_READ, None

    def _advise_args(self, advice: object, offset: object = 0, length: object = None) -> MemArgs:
        if type(advice) is not Advice:
            raise TypeError(f"advice must be an aiopmem.Advice, not {type(advice).__name__}")
        lo, hi = self._open_range(offset, length, None)
        return _ADVISE, advice.value, self, lo, hi, 0, None

    def _protect_args(self, protection: object) -> MemArgs:
        if type(protection) is not Protection:
            raise TypeError(
                f"protection must be an aiopmem.Protection, not {type(protection).__name__}"
            )
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        bits = prot_bits(protection)
        return _PROTECT, bits, self, self._addr, self._addr + self._size, 0, (protection, _BY_BITS)

    def _lock_args(self, lock: bool) -> MemArgs:
        if self._state != OPEN:
            raise ClosedError("the mapping is unmapped")
        return (_LOCK if lock else _UNLOCK), 0, self, self._addr, self._addr + self._size, 0, None

    def _write_args(self, offset: object, data: object) -> MemArgs:
        mv = bytes_view(data)
        lo, hi = self._copy_range(offset, mv.nbytes, Protection.WRITE)
        return _WRITE, 0, self, lo, hi, _PROT_WRITE, mv

    def _read_args(self, offset: object = 0, length: object = None) -> MemArgs:
        lo, hi = self._copy_range(offset, as_optional_int(length, "length"), Protection.READ)
        return _READ, 0, self, lo, hi, _PROT_READ, None

    def _read_into_args(self, buffer: object, offset: object = 0) -> MemArgs:
        mv = bytes_view(buffer, writable=True)
        lo, hi = self._copy_range(offset, mv.nbytes, Protection.READ)
        return _READ, 0, self, lo, hi, _PROT_READ, mv

    def populate(self, offset: int = 0, length: int | None = None) -> None:
        """Fault the pages of ``[offset, offset+length)`` in now (for writing when the mapping
        has WRITE, else for reading), so that later loads and stores through views do not
        page-fault. Uses MADV_POPULATE_WRITE/READ (Linux 5.14+), else touches each page.

        Raises:
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError: as ``view()``.
            NoAccessError: the mapping lacks READ.
            OSError: the kernel refused (e.g. ENOMEM, EFAULT past the end of a truncated file).
        """
        mem_outcome(self._rsv._mem(*self._populate_args(offset, length)), "populate")

    def advise(self, advice: Advice, offset: int = 0, length: int | None = None) -> None:
        """madvise() ``[offset, offset+length)`` (rounded out to whole pages) with ``advice``.

        Raises:
            TypeError: ``advice`` is not an ``Advice`` (or an argument not an integer).
            ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError: as ``view()``.
            OSError: the kernel refused (e.g. EINVAL: HUGEPAGE without THP support).
        """
        mem_outcome(self._rsv._mem(*self._advise_args(advice, offset, length)), "advise")

    def protect(self, protection: Protection) -> None:
        """Change the protection of the whole mapping (mprotect). ``protection`` then reports
        the new value and later views follow it; views already made keep their access.

        Raises:
            TypeError: ``protection`` is not a ``Protection``.
            ClosedError: the mapping is unmapped.
            BufferError: it takes READ or WRITE away while a view (or an object built on one)
                is alive; nothing changed.
            NoAccessError: WRITE on a shared mapping of a file opened read-only.
            OSError: the kernel refused; nothing changed.
        """
        mem_outcome(self._rsv._mem(*self._protect_args(protection)), "change the protection")

    def lock(self) -> None:
        """Lock the mapping in memory (mlock): resident now, never swapped. Idempotent.

        Raises:
            ClosedError: the mapping is unmapped.
            OSError: beyond RLIMIT_MEMLOCK (EPERM or ENOMEM), or EAGAIN; still unlocked.
        """
        mem_outcome(self._rsv._mem(*self._lock_args(True)), "lock the mapping")

    def unlock(self) -> None:
        """Undo ``lock()`` (munlock). Idempotent.

        Raises:
            ClosedError: the mapping is unmapped.
            OSError: the kernel refused.
        """
        mem_outcome(self._rsv._mem(*self._lock_args(False)), "unlock the mapping")

    def write(self, offset: int, data: object) -> int:
        """Copy the bytes-like ``data`` into the mapping at ``offset``; returns ``len(data)``
        in bytes. The copy runs with the GIL released.

        Raises (in this order):
            TypeError: ``data`` is not a (C-contiguous) bytes-like object, or ``offset`` not an
                integer.
            ClosedError: the mapping is unmapped.
            OffsetOutOfRangeError: ``offset`` outside ``[0, size]``.
            LengthOutOfRangeError: ``offset + len(data) > size``.
            NoAccessError: the mapping lacks WRITE.
        """
        args = self._write_args(offset, data)
        mem_outcome(self._rsv._mem(*args), "write")
        return args[4] - args[3]

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """A copy of ``[offset, offset+length)`` of the mapping (default: to the end).

        Raises: as ``write()`` (NoAccessError: the mapping lacks READ).
        """
        r = mem_outcome(self._rsv._mem(*self._read_args(offset, length)), "read")
        assert r is not None
        return r

    def read_into(self, buffer: object, offset: int = 0) -> int:
        """Fill the writable buffer ``buffer`` with ``len(buffer)`` bytes (in bytes) from
        ``offset``; returns that number.

        Raises: as ``write()`` (TypeError: not a writable buffer; NoAccessError: no READ).
        """
        args = self._read_into_args(buffer, offset)
        mem_outcome(self._rsv._mem(*args), "read")
        return args[4] - args[3]

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
