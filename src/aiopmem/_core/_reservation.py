"""A reservation: a range of address space held as an inaccessible placeholder, into which
files and anonymous memory are mapped at fixed offsets.

Parts. ``Reservation`` is made of ``Maps`` (``_maps.py``: map_file, map_anonymous), ``Views``
(``_views.py``: view and the memory operations over a range) and ``Holes``
(``_placement.py``), over the fields of ``ReservationFields`` (``_base.py``); this module has
the extent (extend, shrink), close, the lookups, describe, and ``reserve()``.

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
from typing import Final, TypeAlias, final

from .. import _ffi
from ._align import ADDRESS_LIMIT, ALIGNMENT, as_int, as_optional_int
from ._construct import NoPublicConstructor, close_on_exit, public_name
from ._describe import Layout, Row, render
from ._errors import (
    AddressUnalignedError,
    AlignmentError,
    ClosedError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    MappingExistsError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    ReservationNotEmptyError,
    os_error,
)
from ._mapping import Mapping, busy_error
from ._maps import Maps, int64
from ._placement import default_headroom
from ._views import Views

__all__ = ["Reservation", "reserve"]

_MASK: Final = ALIGNMENT - 1


_C_CLOSED: Final = _ffi.C_CLOSED
_C_EXISTS: Final = _ffi.C_EXISTS
_C_BUSY_BASE: Final = _ffi.C_BUSY_BASE


@final
class Reservation(Maps, Views, metaclass=NoPublicConstructor):
    """A range of virtual address space, reserved as an inaccessible placeholder.

    Made by ``aiopmem.sync.reserve()``. Map files or anonymous memory into it with
    ``map_file()`` / ``map_anonymous()``; grow it with ``extend()``, cut it with ``shrink()``,
    release it all with ``close()`` (or by leaving ``with``). Thread-safe: any number of threads
    may use one reservation at once.

    """

    __slots__ = ()

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
        code = self._shrink(int64(off), int64(n))
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
