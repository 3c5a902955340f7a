"""A reservation: a range of address space held as an inaccessible placeholder, into which
files and anonymous memory are mapped at fixed offsets.

Layout. The reservation holds ``[address, address + max_size)``: ``[address, address + size)``
is the usable part, the rest is headroom kept for ``extend()``. Every byte of the held range is
always either a placeholder or one of the reservation's mappings; unmapping lays a placeholder
back (MAP_FIXED replaces atomically), so no other mapping of the process can slip in.

Guarantees (thread-shared state):
- ``_lock`` (a plain ``threading.Lock``) guards every field, the index of mappings and every
  mapping's state. It is never held across a syscall, so lookups (``find*``, ``mappings``,
  attributes) never wait for one.
- Operations are admitted by ``_gate``: maps, unmaps and persists share it, extend, shrink and
  close hold it exclusively; ``address``, ``size`` and ``max_size`` only change under the
  exclusive gate, so a shared operation may use them without the lock once admitted.
- Check-then-act is atomic: a map validates its range and claims it in the index in one locked
  section, makes the syscall outside the lock, then commits (or drops) the claim. A claim
  blocks overlapping maps but is invisible to lookups until the map completes.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import warnings
from types import TracebackType
from typing import Final, final

from .. import _ffi
from ._align import ADDRESS_LIMIT, ALIGNMENT, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit, public_name
from ._describe import Layout, Row, render
from ._enums import Granularity, Protection, Sharing, prot_bits
from ._errors import (
    AddressUnalignedError,
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
from ._gate import Gate
from ._intervals import IntervalIndex
from ._mapping import CLOSED, OPEN, Mapping, check_unpinned, new_mapping
from ._placement import (
    PLACEHOLDER_FIXED,
    default_headroom,
    fill_hole,
    take_headroom_after,
    take_range,
    take_range_with_headroom,
)
from ._procmaps import covered
from ._source import WRITE_HINT, FileSource, Source, fd_error, open_source

__all__ = ["Reservation", "reserve"]

_MASK: Final = ALIGNMENT - 1
_RW: Final = Protection.READ | Protection.WRITE

#: How a mapping is made (see _FLAGS_OF_KIND).
_FILE_SHARED: Final = 0
_FILE_PRIVATE: Final = 1
_ANON_SHARED: Final = 2
_ANON_PRIVATE: Final = 3
_SHARED: Final = Sharing.SHARED
_FD_MAX: Final = 2**31 - 1
#: PROT_* bits by Protection value (indexing by the int value avoids hashing a Flag member).
_PROT_BITS: Final = tuple(prot_bits(Protection(v)) for v in range(8))

_MAP_SHARED_FIXED: Final = _ffi.MAP_SHARED | _ffi.MAP_FIXED
_MAP_SYNC_FIXED: Final = _ffi.MAP_SHARED_VALIDATE | _ffi.MAP_SYNC | _ffi.MAP_FIXED
_MAP_PRIVATE_FIXED: Final = _ffi.MAP_PRIVATE | _ffi.MAP_FIXED
_ANON_SHARED_FIXED: Final = _ffi.MAP_SHARED | _ffi.MAP_ANONYMOUS | _ffi.MAP_FIXED
_ANON_PRIVATE_FIXED: Final = _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS | _ffi.MAP_FIXED
_FLAGS_OF_KIND: Final = (
    _MAP_SHARED_FIXED,
    _MAP_PRIVATE_FIXED,
    _ANON_SHARED_FIXED,
    _ANON_PRIVATE_FIXED,
)
try_mmap = _ffi.try_mmap_fixed
_raw_mmap = _ffi.raw_mmap_fixed
_fdcheck = _ffi.fdcheck
_raw_fdcheck = _ffi.raw_fdcheck
_last_dev = _ffi.last_dev
_new_view = _ffi.new_view
_INJECTING: Final = _ffi.INJECTING
_NEG_EINTR: Final = -errno.EINTR
_PAGE: Final = Granularity.PAGE
_CACHE_LINE: Final = Granularity.CACHE_LINE
_BYTE: Final = Granularity.BYTE

#: Whether shared mappings of files on a device (st_dev) accept MAP_SYNC (DAX file systems).
#: Learned from the first shared map of a file on that device, then reused: on a non-DAX file
#: system the refused MAP_SYNC attempt would otherwise cost a syscall on every map.
_map_sync_by_dev: dict[int, bool] = {}


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


@final
class Reservation(metaclass=NoPublicConstructor):
    """A range of virtual address space, reserved as an inaccessible placeholder.

    Made by ``aiopmem.sync.reserve()``. Map files or anonymous memory into it with
    ``map_file()`` / ``map_anonymous()``; grow it with ``extend()``, cut it with ``shrink()``,
    release it all with ``close()`` (or by leaving ``with``). Thread-safe: any number of threads
    may use one reservation at once.
    """

    __slots__ = (
        "__weakref__",
        "_address",
        "_closed",
        "_facade",
        "_gate",
        "_holes",
        "_index",
        "_lock",
        "_max_size",
        "_size",
    )

    def __init__(self, address: int, size: int, max_size: int) -> None:
        self._lock = threading.Lock()
        self._gate = Gate(self._lock)
        self._address = address
        self._size = size
        self._max_size = max_size
        self._closed = False
        self._index: IntervalIndex[Mapping] = IntervalIndex()
        #: Ranges (start -> end) where the placeholder could not be laid back; each is also a
        #: claim in the index so that nothing is mapped there blindly. See _note_hole().
        self._holes: dict[int, int] = {}
        #: The async layer's object for this reservation (set by it, opaque here).
        self._facade: object | None = None

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
        if self._closed:
            return f"<{name} closed>"
        return (
            f"<{name} address={self._address:#x} size={self._size:#x} "
            f"max_size={self._max_size:#x} mappings={len(self._index) - len(self._holes)}>"
        )

    # -- admission helpers ---------------------------------------------------------------------

    def _enter_exclusive(self) -> bool:
        """Admit an extend/shrink/close; False if the reservation is (or became) closed."""
        with self._lock:
            if self._closed:
                return False
            self._gate.enter_exclusive()
            if self._closed:
                self._gate.leave_exclusive()
                return False
            return True

    def _leave_exclusive(self) -> None:
        with self._lock:
            self._gate.leave_exclusive()

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
    ) -> Mapping:
        """Map ``length`` bytes of ``file`` from ``file_offset`` at ``offset`` of the reservation.

        ``file`` is a path (opened read-write, or read-only when the mapping cannot write to the
        file, with O_CLOEXEC, and closed once mapped), an open file descriptor (not closed) or an
        object with ``fileno()``. ``length=None`` or ``0`` maps to the end of the file; a file
        whose size is not a multiple of ALIGNMENT then gets a partial last page. The mapping is
        placed exactly at ``address + offset`` and occupies ``[offset, offset +
        round_up(length))`` of the reservation.

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
        if self._closed:
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
            if file_offset & _MASK:
                raise OffsetUnalignedError(
                    f"file_offset {file_offset} is not a multiple of {ALIGNMENT}"
                )
            if file_offset < 0:
                raise MapRangeError(f"file_offset {file_offset} is negative")
            if size == 0:
                raise SourceEmptyError(f"{_label(label)} is empty")
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
                    raise MapRangeError(
                        f"[{file_offset}, {file_offset + n}) is beyond the end of "
                        f"{_label(label)} ({size} bytes)"
                    )
            kind = _FILE_SHARED if shared else _FILE_PRIVATE
            return self._map(offset, n, protection, sharing, bits, kind, fd, file_offset, label)
        finally:
            if src is not None:
                src.close()

    def map_anonymous(
        self,
        offset: int,
        length: int,
        *,
        protection: Protection = _RW,
        sharing: Sharing = Sharing.SHARED,
    ) -> Mapping:
        """Map ``length`` bytes of zero-filled memory at ``offset`` of the reservation.

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
        if type(offset) is not int:
            offset = as_int(offset, "offset")
        n = length if type(length) is int else as_int(length, "length")
        if type(protection) is not Protection:
            _check_protection(protection)
        if type(sharing) is not Sharing:
            _check_sharing(sharing)
        if self._closed:
            raise ClosedError("the reservation is closed")
        if n & _MASK:
            raise LengthUnalignedError(f"length {n} is not a multiple of {ALIGNMENT}")
        if n <= 0:
            raise LengthOutOfRangeError(f"length {n} is not positive")
        kind = _ANON_SHARED if sharing is _SHARED else _ANON_PRIVATE
        bits = _PROT_BITS[protection._value_]
        return self._map(offset, n, protection, sharing, bits, kind, -1, 0, None)

    def _map(
        self,
        offset: int,
        length: int,
        protection: Protection,
        sharing: Sharing,
        bits: int,
        kind: int,
        fd: int,
        file_offset: int,
        label: str | int | None,
    ) -> Mapping:
        """Steps 6-9 of map validation, the claim, the syscall and the commit."""
        span = (length + _MASK) & ~_MASK
        gate = self._gate
        index = self._index
        with self._lock:
            if self._closed:
                raise ClosedError("the reservation is closed")
            if not gate.try_enter_shared():
                gate.enter_shared()
                if self._closed:
                    gate.leave_shared()
                    raise ClosedError("the reservation is closed")
            if offset & _MASK or offset < 0 or offset + span > self._size:
                gate.leave_shared()
                if offset & _MASK:
                    raise OffsetUnalignedError(f"offset {offset} is not a multiple of {ALIGNMENT}")
                if offset < 0:  # libpmem2 reports it as a length error; the fault is the offset's
                    raise LengthOutOfRangeError(f"offset {offset} is negative")
                raise LengthOutOfRangeError(
                    f"[{offset}, {offset + span}) does not fit in the reservation of "
                    f"{self._size} bytes"
                )
            addr = self._address + offset
            if not index.claim(addr, addr + span):
                gate.leave_shared()
                raise MappingExistsError(
                    f"[{offset:#x}, {offset + span:#x}) overlaps a mapping of the reservation"
                )
        try:
            if kind == _FILE_SHARED:
                dev = _last_dev()
                sync = _map_sync_by_dev.get(dev)
                granularity = _PAGE
                err = 0
                if sync is not False:
                    err = try_mmap(addr, length, bits, _MAP_SYNC_FIXED, fd, file_offset)
                    if not err:
                        _map_sync_by_dev[dev] = True
                        granularity = _CACHE_LINE
                    elif err in (errno.EOPNOTSUPP, errno.EINVAL):
                        _map_sync_by_dev[dev] = False
                if sync is False or err:
                    flags = _MAP_SHARED_FIXED
                    err = (
                        try_mmap(addr, length, bits, flags, fd, file_offset)
                        if _INJECTING
                        else _raw_mmap(addr, length, bits, flags, fd, file_offset)
                    )
            else:
                granularity = _BYTE
                flags = _FLAGS_OF_KIND[kind]
                err = (
                    try_mmap(addr, length, bits, flags, fd, file_offset)
                    if _INJECTING
                    else _raw_mmap(addr, length, bits, flags, fd, file_offset)
                )
            if err == errno.EINTR:
                err = try_mmap(addr, length, bits, flags, fd, file_offset)
            if err:
                self._mend_after_failed_map(addr, span)
                raise _map_error(err, bits, kind)
            m = new_mapping(
                self, addr, length, span, file_offset, protection, sharing, granularity, label
            )
        except BaseException:
            with self._lock:
                if addr not in self._holes:
                    index.remove(addr)
                gate.leave_shared()
            raise
        with self._lock:
            index.replace(addr, m)  # the claim becomes the mapping
            gate.leave_shared()
        return m

    # -- keeping the range whole ---------------------------------------------------------------

    def _mend_after_failed_map(self, addr: int, span: int) -> None:
        """After a failed MAP_FIXED mmap, make sure the range is still held.

        Current kernels leave the old placeholder in place when such an mmap fails; older ones
        could leave a hole. Laying a placeholder with MAP_FIXED_NOREPLACE tells the two apart
        at the cost of one syscall on the failure path only: EEXIST means the range is intact.
        """
        try:
            fill_hole(addr, span)
        except MappingExistsError:
            return
        except OSError:
            if covered(addr, addr + span):
                return
            self._note_hole(addr, addr + span)
            self._warn_hole(addr, addr + span)

    def _replace_with_placeholder(self, addr: int, span: int, err: int) -> bool:
        """The rest of an unmap whose placeholder overlay (MAP_FIXED over the mapping) failed
        with ``err``. Raises with nothing changed, or succeeds; returns True if the range could
        only be freed, not re-held: it is then noted as a hole and the caller warns once its own
        state is consistent.
        """
        if err == errno.EINTR:
            err = try_mmap(addr, span, _ffi.PROT_NONE, PLACEHOLDER_FIXED)
            if not err:
                return False
        if err != errno.ENOMEM:
            raise os_error(err)
        # At the VMA limit (vm.max_map_count) the kernel refuses the overlay, which needs an
        # extra VMA for a moment, while munmap + a MAP_FIXED_NOREPLACE placeholder (which merges
        # with its neighbours) goes through. Between the two calls the range is free: if
        # something else takes it, the reservation notes the hole instead of clobbering it.
        _ffi.munmap(addr, span)
        try:
            fill_hole(addr, span)
        except (MappingExistsError, OSError):
            self._note_hole(addr, addr + span)
            return True
        return False

    def _note_hole(self, start: int, end: int) -> None:
        """Record that ``[start, end)`` is no longer held by a placeholder. It stays claimed in the
        index (nothing is mapped there, ``shrink`` treats it as occupied, ``close`` leaves it
        alone since something else may live there now) until ``_repair_holes`` re-takes it."""
        with self._lock:
            self._holes[start] = end
            if not self._index.overlaps(start, end):
                self._index.insert(start, end, None)

    def _warn_hole(self, start: int, end: int) -> None:
        warnings.warn(
            f"aiopmem: [{start - self._address:#x}, {end - self._address:#x}) of the reservation "
            f"at {self._address:#x} could not be re-reserved; nothing is mapped there until "
            "it can be",
            RuntimeWarning,
            stacklevel=3,
        )

    def _repair_holes(self) -> None:
        """Try to re-take every hole (called under the exclusive gate)."""
        for start, end in list(self._holes.items()):
            try:
                fill_hole(start, end - start)
            except (OSError, MappingExistsError):  # still in use by someone else: keep it
                continue
            with self._lock:
                del self._holes[start]
                self._index.remove(start)

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Offset ranges that could not be re-reserved after an unmap at the kernel's VMA limit
        (normally empty). Nothing is mapped there until the range can be taken back."""
        with self._lock:
            return [(s - self._address, e - self._address) for s, e in sorted(self._holes.items())]

    # -- extent --------------------------------------------------------------------------------

    def extend(self, size: int) -> None:
        """Grow the reservation at its end by ``size`` bytes; mappings and address stay put.

        Up to ``max_size`` this cannot fail for lack of room. Past it, the space right after the
        reservation is taken if free, and ``max_size`` becomes the new size.

        Raises:
            TypeError: size is not an integer.
            ClosedError: the reservation is closed.
            LengthUnalignedError: size is not a multiple of ALIGNMENT.
            LengthOutOfRangeError: size is negative, or the result would pass the end of the
                address space.
            MappingExistsError: the range after the end (past ``max_size``) is occupied.
            OSError: the kernel refused (ENOMEM, EAGAIN); nothing is changed.
        """
        n = as_int(size, "size")
        if self._closed:
            raise ClosedError("the reservation is closed")
        if n & _MASK:
            raise LengthUnalignedError(f"size {n} is not a multiple of {ALIGNMENT}")
        if n < 0:
            raise LengthOutOfRangeError(f"size {n} is negative")
        if n == 0:
            return
        if not self._enter_exclusive():
            raise ClosedError("the reservation is closed")
        try:
            if self._holes:
                self._repair_holes()
            new_size = self._size + n
            if self._address + new_size > ADDRESS_LIMIT:
                raise LengthOutOfRangeError(
                    f"extending by {n} bytes would pass the end of the address space"
                )
            if new_size > self._max_size:
                end = self._address + self._max_size
                try:
                    fill_hole(end, self._address + new_size - end)
                except MappingExistsError:
                    raise MappingExistsError(
                        f"cannot extend to {new_size} bytes: the address space after the "
                        "reservation's headroom is in use"
                    ) from None
                with self._lock:
                    self._size = self._max_size = new_size
            else:
                with self._lock:
                    self._size = new_size
        finally:
            self._leave_exclusive()

    def shrink(self, offset: int, size: int) -> None:
        """Remove ``[offset, offset+size)``, which must touch the beginning or the end of the
        reservation and hold no mapping.

        A removed head is returned to the system: ``address`` moves up by ``size``, ``max_size``
        drops by ``size``, and every mapping's ``offset`` drops by ``size`` (mappings never
        move). A removed tail stays reserved as headroom: ``max_size`` is unchanged and
        ``extend()`` can grow back into it.

        Raises (checked in this order, libpmem2's):
            TypeError: an argument is not an integer.
            ClosedError: the reservation is closed.
            OffsetUnalignedError: offset unaligned.
            LengthUnalignedError: size unaligned.
            OffsetOutOfRangeError: ``offset < 0`` or ``offset >= self.size``.
            LengthOutOfRangeError: ``size <= 0``.
            LengthOutOfRangeError: ``offset + size > self.size``.
            NotSupportedError: the region is in the middle, or is the whole reservation.
            ReservationNotEmptyError: the region holds (part of) a mapping.
            OSError: the kernel refused to release the head; nothing is changed.
        """
        off = as_int(offset, "offset")
        n = as_int(size, "size")
        if self._closed:
            raise ClosedError("the reservation is closed")
        if off & _MASK:
            raise OffsetUnalignedError(f"offset {off} is not a multiple of {ALIGNMENT}")
        if n & _MASK:
            raise LengthUnalignedError(f"size {n} is not a multiple of {ALIGNMENT}")
        if not self._enter_exclusive():
            raise ClosedError("the reservation is closed")
        try:
            cur = self._size
            if off < 0 or off >= cur:
                raise OffsetOutOfRangeError(f"offset {off} is outside the reservation [0, {cur})")
            if n <= 0:
                raise LengthOutOfRangeError(f"size {n} is not positive")
            if off + n > cur:
                raise LengthOutOfRangeError(
                    f"[{off}, {off + n}) reaches past the end of the reservation ({cur} bytes)"
                )
            if off != 0 and off + n != cur:
                raise NotSupportedError(
                    "only the beginning or the end of a reservation can be shrunk"
                )
            if off == 0 and n == cur:
                raise NotSupportedError(
                    "shrinking the whole reservation is not supported; close it"
                )
            if self._holes:
                self._repair_holes()
            lo = self._address + off
            with self._lock:
                occupied = self._index.overlaps(lo, lo + n)
            if occupied:
                raise ReservationNotEmptyError(f"[{off:#x}, {off + n:#x}) holds a mapping")
            if off == 0:
                _ffi.munmap(lo, n)
                with self._lock:
                    self._address += n
                    self._size -= n
                    self._max_size -= n
            else:
                with self._lock:
                    self._size -= n
        finally:
            self._leave_exclusive()

    # -- close ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap every mapping and release all the address space, headroom included. Idempotent.

        Raises:
            BufferError: a view of some mapping is still alive; nothing is changed.
            OSError: the kernel refused to release (part of) the range. The reservation stays
                open; if some of it was released already, that part is a hole (see
                ``holes``) and the mappings that lay in it are closed. Call close() again.
        """
        if not self._enter_exclusive():
            return
        try:
            if self._holes:
                self._repair_holes()
            with self._lock:
                mappings = self._index.values()
                check_unpinned(tuple(m._views for m in mappings), "close the reservation")
                for m in mappings:  # no new view while the memory goes away
                    m._state = CLOSED
            failed = self._release_all()
            if failed is not None:
                released, exc = failed
                self._keep_after_failed_close(mappings, released)
                raise exc
            with self._lock:
                self._index.clear()
                self._holes.clear()
                self._closed = True
        finally:
            self._leave_exclusive()

    def _release_all(self) -> tuple[list[tuple[int, int]], OSError] | None:
        """munmap the whole held range except holes (something else may live there now).

        Returns None once all of it is released; if a munmap fails, the pieces released
        before it and the error (a munmap either releases its whole range or nothing)."""
        pos = self._address
        end = self._address + self._max_size
        pieces = []
        for start, stop in sorted(self._holes.items()):
            if start > pos:
                pieces.append((pos, start))
            pos = stop
        if end > pos:
            pieces.append((pos, end))
        for i, (start, stop) in enumerate(pieces):
            try:
                _ffi.munmap(start, stop - start)
            except OSError as exc:
                return pieces[:i], exc
        return None

    def _keep_after_failed_close(
        self, mappings: list[Mapping], released: list[tuple[int, int]]
    ) -> None:
        """The partial outcome of a close whose munmap failed: the pieces already released
        become holes of the reservation (nothing is held there any more) and the mappings that
        lay in them stay closed; every other mapping is open again. A later close() releases
        the rest."""
        with self._lock:
            for m in mappings:
                if any(start <= m._addr < stop for start, stop in released):
                    self._index.remove(m._addr)
                else:
                    m._state = OPEN
        for start, stop in released:
            self._note_hole(start, stop)

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
        try:
            closed = self._closed
        except AttributeError:  # __init__ did not run to the end
            return
        if closed:
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
        off = as_int(offset, "offset")
        n = as_optional_int(length, "length")
        with self._lock:
            if self._closed:
                raise ClosedError("the reservation is closed")
            size = self._size
            if off < 0 or off > size:
                raise OffsetOutOfRangeError(f"offset {off} is outside the reservation [0, {size}]")
            if n is None:
                n = size - off
            elif n < 0 or off + n > size:
                raise LengthOutOfRangeError(
                    f"length {n} at offset {off} reaches outside the reservation of {size} bytes"
                )
            if n == 0:
                return memoryview(b"")
            lo = self._address + off
            hi = lo + n
            pos = lo
            covered_by: list[Mapping] = []
            readonly = False
            gap_end = hi
            for start, end, m in self._index.between(lo, hi):
                if start > pos:
                    gap_end = start
                    break
                if m is None or m._state != OPEN:  # being mapped, a hole, being unmapped
                    gap_end = end
                    break
                if Protection.READ not in m._protection:
                    raise NoAccessError(f"{m!r} lacks READ")
                readonly = readonly or Protection.WRITE not in m._protection
                covered_by.append(m)
                pos = end
            if pos < hi:
                base = self._address
                raise NoAccessError(
                    f"[{pos - base:#x}, {min(gap_end, hi) - base:#x}) of the reservation is not "
                    f"mapped (the view asked for [{off:#x}, {off + n:#x}))"
                )
            return _new_view(self, tuple(m._views for m in covered_by), lo, n, readonly)

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
        with self._lock:
            if self._closed:
                layout = None
            else:
                base = self._address
                layout = Layout(
                    base,
                    self._size,
                    self._max_size,
                    # Public attributes only: the mapping's internals are the hot path's.
                    tuple(
                        Row(
                            m.address - base,
                            m.size,
                            m.file,
                            m.file_offset,
                            m.protection,
                            m.sharing,
                        )
                        for m in self._index.values()
                    ),
                    tuple((s - base, e - base) for s, e in sorted(self._holes.items())),
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
        with self._lock:
            if self._closed:
                return None
            lo = self._address + off
            return self._index.find(lo, lo + (n or 1))

    def _located(self, mapping: object) -> int | None:
        if not isinstance(mapping, Mapping):
            name = public_name(mapping)
            hint = " (use its .sync)" if name == "aiopmem.Mapping" else ""
            raise TypeError(f"expected an aiopmem.sync.Mapping, not {name}{hint}")
        if mapping._rsv is not self or mapping._state == CLOSED or self._closed:
            return None
        return mapping._addr

    def find_prev(self, mapping: Mapping) -> Mapping | None:
        """The mapping right before ``mapping`` in address order, or None."""
        with self._lock:
            addr = self._located(mapping)
            return None if addr is None else self._index.prev(addr)

    def find_next(self, mapping: Mapping) -> Mapping | None:
        """The mapping right after ``mapping`` in address order, or None."""
        with self._lock:
            addr = self._located(mapping)
            return None if addr is None else self._index.next(addr)

    def find_first(self) -> Mapping | None:
        """The lowest mapping, or None."""
        with self._lock:
            return None if self._closed else self._index.first()

    def find_last(self) -> Mapping | None:
        """The highest mapping, or None."""
        with self._lock:
            return None if self._closed else self._index.last()

    def mappings(self) -> list[Mapping]:
        """A snapshot of the live mappings, in address order."""
        with self._lock:
            return [] if self._closed else self._index.values()


def reserve(size: int, *, address: int | None = None, max_size: int | None = None) -> Reservation:
    """Reserve ``size`` bytes of address space as an inaccessible placeholder.

    With ``address``, the reservation is placed exactly there or not at all. ``max_size`` keeps
    ``[address, address + max_size)`` so that ``extend()`` up to it cannot fail; without it, a
    default headroom of ``max(size, 1 GiB)`` is taken where free (see ``docs/design.md``).

    Raises (checked in this order):
        TypeError: an argument is not an integer.
        AddressUnalignedError: ``address`` unaligned.
        LengthUnalignedError: ``size`` unaligned.
        LengthOutOfRangeError: ``size <= 0``, or too large for the platform.
        LengthUnalignedError: ``max_size`` unaligned.
        LengthOutOfRangeError: ``max_size < size``, or too large for the platform.
        OSError(EINVAL): ``address`` negative, or the range would pass the end of the address space.
        MappingExistsError: with ``address``, part of the range is occupied.
        OSError: the kernel refused (e.g. ENOMEM above the user address space).
    """
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
    held = n if limit is None else limit
    if addr is not None:
        if addr < 0 or addr + held > ADDRESS_LIMIT:
            raise os_error(errno.EINVAL)
        fill_hole(addr, held)
        if limit is None:
            try:
                held += take_headroom_after(addr + n, default_headroom(n))
            except BaseException:
                # The headroom's failure is the one to report. Should giving the range back
                # fail too, nothing else can be done with it: do not mask the first error.
                with contextlib.suppress(OSError):
                    _ffi.munmap(addr, n)
                raise
        return Reservation._create(addr, n, held)
    if limit is None:
        addr, held = take_range_with_headroom(n, default_headroom(n))
    else:
        addr = take_range(held)
    return Reservation._create(addr, n, held)
