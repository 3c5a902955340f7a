"""The async ``Reservation`` and ``reserve()``: the core reservation behind anyio.

Ordering: every operation runs in a worker thread, admitted by the core reservation's
phase-fair gate (``aiopmem._core._gate``): maps, unmaps and persists share it, ``extend``,
``shrink`` and ``aclose`` hold it exclusively. One gate for every caller means tasks of several
event loops (in different threads) and threads of the sync API can share one reservation with
every guarantee.

Cancellation policy (each method's docstring says which case applies to it):
- every method is a checkpoint: a task already cancelled when it calls starts nothing (unmap
  and aclose excepted: they run, then deliver the cancellation);
- waiting for the gate is cancellable: a task cancelled there started nothing;
- the worker's call always runs to completion and its outcome is collected;
- a mapping or reservation made for a caller cancelled meanwhile is unmapped/closed again
  (shielded) before the cancellation propagates: the operation did not happen;
- extend, shrink and persist, once run, stand; the cancellation is delivered on return;
- unmap and aclose run shielded to the end, then deliver the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import Any, NoReturn, final

import anyio

from .. import _core
from .._core import Protection, Sharing
from .._core._construct import NoPublicConstructor, aclose_on_exit, public_name
from .._core._mapping import Mapping as _MAPPING
from .._core._maps import MapPlan, c_offset_length, file_bits_kind, file_refusal
from .._core._reservation import reserve_args, reserved
from .._core._source import FileSource, fd_error, open_error, path_flags, path_label
from .._ffi import C_CLOSED as _C_CLOSED
from .._ffi import C_WOULD_BLOCK, OwnedFd, aio_map_fd, reserve_job
from .._ffi import Job as _Job
from ._dispatch import (
    cancel_due,
    cancelled_job,
    ki_protected,
    late_cancel,
    run_blocking,
    run_job,
    run_mem,
)
from ._mapping import Mapping, facade_of
from ._opening import Opening

__all__ = ["Reservation", "reserve"]

_RW = Protection.READ | Protection.WRITE


@final
class Reservation(metaclass=NoPublicConstructor):
    """A range of virtual address space reserved as an inaccessible placeholder (async API).

    Made by ``aiopmem.reserve()``. Any number of tasks may map into one reservation at once.
    Lookups (``find*``, ``mappings``) and attributes are plain methods that never block and
    never wait for a syscall in flight.
    """

    __slots__ = ("__weakref__", "_core")

    def __init__(self, core: _core.Reservation) -> None:
        self._core = core
        core._facade = self

    # -- attributes ----------------------------------------------------------------------------

    @property
    def address(self) -> int:
        """Address of the first usable byte (moves up when the front is shrunk)."""
        return self._core.address

    @property
    def size(self) -> int:
        """Usable size in bytes."""
        return self._core.size

    @property
    def max_size(self) -> int:
        """Size up to which ``extend()`` cannot fail for lack of room."""
        return self._core.max_size

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Offset ranges that could not be re-reserved after an unmap (normally empty)."""
        return self._core.holes

    @property
    def sync(self) -> _core.Reservation:
        """The same reservation in the blocking API (``aiopmem.sync.Reservation``), for threads
        that share it with tasks."""
        return self._core

    _public_name = "aiopmem.Reservation"

    def __repr__(self) -> str:
        return self._core._repr(self._public_name)

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """One memoryview spanning the mappings of ``[offset, offset+length)``; plain and
        non-blocking. See ``aiopmem.sync.Reservation.view``.

        Raises:
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError, NoAccessError.
        """
        return self._core.view(offset, length)

    def describe(self, *, width: int = 64) -> str:
        """A picture of the reservation for people (header, one-line map, table of mappings);
        plain and non-blocking. See ``aiopmem.sync.Reservation.describe``.

        Raises:
            TypeError, ValueError: a bad ``width``.
        """
        return self._core.describe(width=width)

    # -- lookups (plain) -----------------------------------------------------------------------

    def _wrap(self, core: _core.Mapping | None) -> Mapping | None:
        return None if core is None else facade_of(core, self)

    def find(self, offset: int, length: int = 0) -> Mapping | None:
        """The lowest mapping intersecting ``[offset, offset+length)``; with ``length == 0``
        the mapping containing ``offset``; None if there is none."""
        return self._wrap(self._core.find(offset, length))

    def find_prev(self, mapping: Mapping) -> Mapping | None:
        """The mapping right before ``mapping`` in address order, or None."""
        return self._wrap(self._core.find_prev(_core_of(mapping)))

    def find_next(self, mapping: Mapping) -> Mapping | None:
        """The mapping right after ``mapping`` in address order, or None."""
        return self._wrap(self._core.find_next(_core_of(mapping)))

    def find_first(self) -> Mapping | None:
        """The lowest mapping, or None."""
        return self._wrap(self._core.find_first())

    def find_last(self) -> Mapping | None:
        """The highest mapping, or None."""
        return self._wrap(self._core.find_last())

    def mappings(self) -> list[Mapping]:
        """A snapshot of the live mappings, in address order."""
        wrap = self._wrap
        return [wrap(m) for m in self._core.mappings()]  # type: ignore[misc]

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
    ) -> Opening[Mapping]:
        """Map ``file`` at ``offset``; await the result, or use it with ``async with``.

        Arguments, placement and errors are those of ``aiopmem.sync.Reservation.map_file``.
        The checks that need no syscall run on the event loop; the open of a path and the
        descriptor's check, the mmap (and, with ``populate=True``, the faulting in) run in the
        executor's worker threads.

        Cancellation: a caller cancelled before its turn starts nothing; a mapping made for a
        caller cancelled meanwhile is unmapped again before the cancellation propagates, so
        either the mapping exists and the caller has it, or it does not exist. Leaving
        ``async with`` unmaps, shielded from cancellation.
        """
        args = (file, offset, length, file_offset, protection, sharing)
        if populate:
            return Opening(
                self._populated, (partial(self._map_file, *args),), "aiopmem.Reservation.map_file()"
            )
        return Opening(self._map_file, args, "aiopmem.Reservation.map_file()")

    def map_anonymous(
        self,
        offset: int,
        length: int,
        *,
        protection: Protection = _RW,
        sharing: Sharing = Sharing.SHARED,
        populate: bool = False,
    ) -> Opening[Mapping]:
        """Map ``length`` bytes of zero-filled memory at ``offset``; await the result, or use it
        with ``async with``. Errors as ``aiopmem.sync.Reservation.map_anonymous``.

        Cancellation: as ``map_file``.
        """
        args = (offset, length, protection, sharing)
        name = "aiopmem.Reservation.map_anonymous()"
        if populate:
            return Opening(self._populated, (partial(self._map_anonymous, *args),), name)
        return Opening(self._map_anonymous, args, name)

    @staticmethod
    async def _populated(make: Callable[[], Awaitable[Mapping]]) -> Mapping:
        """``populate=True``: the new mapping's pages faulted in (in the executor) as part of
        the map. If that fails, or the caller is cancelled meanwhile, the mapping is unmapped
        again: the map did not happen."""
        m = await make()
        try:
            await m.populate()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await m.unmap()
            raise
        return m

    @ki_protected
    async def _map_file(
        self,
        file: FileSource,
        offset: int,
        length: int | None,
        file_offset: int,
        protection: Protection,
        sharing: Sharing,
    ) -> Mapping:
        core = self._core
        # A plain descriptor (asyncio or trio): checks, prologue and begin in one C call, and
        # run_job's tail inline (this is the path of every such map).
        job = aio_map_fd(core, file, offset, length, file_offset, protection, sharing)
        if type(job) is _Job:
            try:
                r = await job
            except asyncio.CancelledError:
                given = (file, offset, length, file_offset, protection, sharing)
                await cancelled_job(job.waiter, job, _unmap_facade, partial(self._fd_mapped, given))
                raise
            if type(r) is _MAPPING:
                facade = facade_of(r, self)
            else:  # the error
                given = (file, offset, length, file_offset, protection, sharing)
                facade = self._fd_mapped(given, r)
            if cancel_due(job.task):
                await late_cancel(job, _unmap_facade, facade)
            return facade
        if job is not None and job != C_WOULD_BLOCK:  # refused: the blocking path reports
            await anyio.lowlevel.checkpoint()
        if type(file) is not int and isinstance(file, (str, bytes, os.PathLike)):
            m = await self._map_path(file, offset, length, file_offset, protection, sharing)
            if m is not None:
                return m
        elif job is None:
            plan = core._fd_plan(file, offset, length, file_offset, protection, sharing)
            if plan is not None:  # _map_job(plan, True), inline: the path of every fd map
                args, check = self._map_call(plan, True, None)
                r = await run_job(core._map_job, args, check, undo=_unmap_facade)
                if type(r) is Mapping:
                    return r
                self._map_begin_refused(r, plan, True)
        # The blocking path: a path to open, an argument to coerce, an error to report in
        # the contract's order, or a reservation whose gate would make the map wait.
        call = partial(
            core.map_file,
            file,
            offset,
            length=length,
            file_offset=file_offset,
            protection=protection,
            sharing=sharing,
        )
        mapped: _core.Mapping = await run_blocking(call, undo=_unmap_core)
        return self._wrap(mapped)  # type: ignore[return-value]

    async def _map_anonymous(
        self, offset: int, length: int, protection: Protection, sharing: Sharing
    ) -> Mapping:
        core = self._core
        plan = core._anon_plan(offset, length, protection, sharing)
        args, check = self._map_call(plan, False, None)  # _map_job(plan, False), inline
        r = await run_job(core._map_job, args, check, undo=_unmap_facade)
        if type(r) is Mapping:
            return r
        self._map_begin_refused(r, plan, False)
        call = partial(core.map_anonymous, offset, length, protection=protection, sharing=sharing)
        mapped: _core.Mapping = await run_blocking(call, undo=_unmap_core)
        return self._wrap(mapped)  # type: ignore[return-value]

    async def _map_path(
        self,
        file: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        offset: object,
        length: object,
        file_offset: object,
        protection: object,
        sharing: object,
    ) -> Mapping | None:
        """A map of a path as two jobs of the executor: the open with the descriptor's check,
        then (the file's size known: the claim needs it) the map, whose worker also closes the
        descriptor. When the map cannot begin without waiting at the gate, it waits in a
        worker of the blocking path, with the same descriptor."""
        core = self._core
        off, n, foff, prot, shar = core._path_args(offset, length, file_offset, protection, sharing)
        path = os.fspath(file)
        label = path_label(path)
        writable = shar is Sharing.SHARED and Protection.WRITE in prot

        def opened(r: Any) -> tuple[Any, int, int]:
            if type(r) is int:
                raise open_error(path, writable, OSError(r, os.strerror(r), path))
            owned, check, _ = r
            if check < 0:
                owned.close()
                raise fd_error(owned.fd, check, label)
            return r  # type: ignore[no-any-return]

        r = await run_job(core._open_job, (path, path_flags(writable)), opened, _close_owned)
        if type(r) is int:  # not begun (an open never waits: cannot happen)
            return None
        owned, size, dev = r
        try:
            plan = core._file_plan(off, n, foff, prot, shar, owned.fd, size, label, dev)
            m = await self._map_job(plan, False, owned)
            if m is None:  # the gate would make the map wait: in a worker, with this descriptor
                mapped: _core.Mapping = await run_blocking(core._map_at, *plan, undo=_unmap_core)
                m = self._wrap(mapped)
            return m
        finally:
            owned.close()  # unless the map job took it (then it is closed in the worker)

    async def _map_job(
        self, plan: MapPlan, check_fd: bool, owned: OwnedFd | None = None
    ) -> Mapping | None:
        """The map as a job of the executor; None when it did not begin and the blocking path
        must take over (the gate would wait; with ``check_fd``, any refusal of the begin but
        a closed reservation: the blocking path then reports the descriptor's errors first).
        A mapping made for a caller cancelled meanwhile is unmapped again (undo)."""
        args, check = self._map_call(plan, check_fd, owned)
        r = await run_job(self._core._map_job, args, check, undo=_unmap_facade)
        if type(r) is Mapping:
            return r
        self._map_begin_refused(r, plan, check_fd)
        return None

    def _map_call(
        self, plan: MapPlan, check_fd: bool, owned: OwnedFd | None
    ) -> tuple[tuple[Any, ...], Callable[[Any], Mapping]]:
        """What ``run_job`` takes for the map of ``plan``: the begin's arguments, and the check
        that turns the job's result into the caller's (the async mapping, or the error)."""
        offset, n, protection, sharing, bits, kind, fd, file_offset, dev, label = plan
        off, c_n = c_offset_length(offset, n)

        def check(r: Any) -> Mapping:
            if type(r) is tuple or type(r) is int:
                self._map_failed(r, offset, n, bits, kind, fd, file_offset)
            return self._wrap(r)  # type: ignore[return-value]

        args = (
            _MAPPING, off, c_n, bits, kind, fd, file_offset, dev, protection, sharing, label,
            check_fd, owned,
        )  # fmt: skip
        return args, check

    def _fd_mapped(self, given: tuple[Any, ...], r: Any) -> Mapping:
        """The result of aio_map_fd's job as the caller's: the async mapping, or the error.
        ``given``: map_file's arguments (file, offset, length, file_offset, protection,
        sharing), plain as aio_map_fd checked."""
        if type(r) is tuple or type(r) is int:
            file, offset, length, file_offset, protection, sharing = given
            # (Not _fd_plan again for the bits: the reservation may be closed by now.)
            bits, kind = file_bits_kind(protection, sharing)
            self._map_failed(r, offset, length, bits, kind, file, file_offset)
        return self._wrap(r)  # type: ignore[return-value]

    def _map_failed(
        self, r: int | tuple[int, int], offset: int, n: int, bits: int, kind: int, fd: int,
        file_offset: int,
    ) -> NoReturn:  # fmt: skip
        """Raise what a map job's code stands for (or the descriptor check's result, when the
        job returned ``(C_FILE, result)``)."""
        if type(r) is tuple:
            raise file_refusal(r[1], fd, file_offset, n)
        raise self._core._map_refusal(r, offset, n, bits, kind)  # type: ignore[arg-type]

    def _map_begin_refused(self, r: int, plan: MapPlan, check_fd: bool) -> None:
        """A map whose begin refused with code ``r`` (nothing began): returns when the blocking
        path is to take over, else raises the error."""
        if r == C_WOULD_BLOCK or (check_fd and r != _C_CLOSED):
            return
        offset, n, _, _, bits, kind = plan[:6]
        raise self._core._map_refusal(r, offset, n, bits, kind)

    # -- memory operations over a range (see aiopmem.sync.Reservation for the rules) ----------

    async def write(self, offset: int, data: object) -> int:
        """Copy the bytes-like ``data`` to ``[offset, offset + len(data))`` of the reservation,
        across mappings back to back, in a worker thread (the copy and its page faults never
        run on the event loop); returns ``len(data)`` in bytes.

        Cancellation: a caller cancelled before the call starts nothing; once begun the copy
        completes, and the cancellation is delivered when it returns (as for the methods below).

        Raises (in this order):
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError,
            NoAccessError (a byte not mapped or without WRITE; checked before any is copied).
        """
        core = self._core
        args = core._write_args(offset, data)
        await run_mem(core, args, "write", core)
        return args[4] - args[3]

    async def read(self, offset: int, length: int) -> bytes:
        """A copy of ``[offset, offset+length)`` of the reservation, made in a worker thread.

        Raises: as ``write()`` (NoAccessError: not mapped, or without READ).
        """
        core = self._core
        return await run_mem(core, core._read_args(offset, length), "read", core)  # type: ignore[no-any-return]

    async def read_into(self, buffer: object, offset: int) -> int:
        """Fill the writable ``buffer`` with ``len(buffer)`` bytes from ``offset`` of the
        reservation, in a worker thread; returns that number. Raises: as ``read()``."""
        core = self._core
        args = core._read_into_args(buffer, offset)
        await run_mem(core, args, "read", core)
        return args[4] - args[3]

    async def populate(self, offset: int = 0, length: int | None = None) -> None:
        """Fault in the pages of ``[offset, offset+length)`` (default: all of the reservation)
        in a worker thread, each mapping for writing when it has WRITE.

        Raises: TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError,
        NoAccessError (not mapped, or without READ), OSError.
        """
        core = self._core
        await run_mem(core, core._populate_args(offset, length), "populate", core)

    async def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make every shared file mapping in ``[offset, offset+length)`` durable (msync) from a
        worker thread; private and anonymous mappings and unmapped parts are skipped.

        Raises: TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError, OSError.
        """
        core = self._core
        await run_mem(core, core._persist_args(offset, length), "persist", core)

    # -- extent ----------------------------------------------------------------------------------

    async def extend(self, size: int) -> None:
        """Grow the reservation at its end by ``size`` bytes, from a worker thread; mappings and
        address stay put. Serialized with shrink and with in-flight maps and unmaps. Errors as
        ``aiopmem.sync.Reservation.extend``.

        Cancellation: a caller cancelled while waiting for its turn starts nothing; once the
        extend runs it completes (its effect stands) and the cancellation is delivered on return.
        """
        # Inside the headroom an extend makes no syscall: when the gate is free (and the size a
        # plain aligned int) it runs right here, after the checkpoint (a cancelled caller
        # starts nothing); otherwise in a worker, which checks the size.
        core = self._core
        await anyio.lowlevel.checkpoint()
        code = core._extend_nowait(size)
        if code == C_WOULD_BLOCK:  # past the headroom (a syscall), or the gate is busy
            code = await run_job(core._extend_job, (size,), int)
            if code == C_WOULD_BLOCK:
                await run_blocking(core.extend, size)
                return
        if code:
            core._extend_failed(size, code)

    async def shrink(self, offset: int, size: int) -> None:
        """Remove ``[offset, offset+size)`` at the beginning or the end, from a worker thread.
        Serialized with extend and with in-flight maps and unmaps. Errors (in libpmem2's order)
        as ``aiopmem.sync.Reservation.shrink``.

        Cancellation: as ``extend``.
        """
        # A shrink of the tail makes no syscall: as extend (a front shrink munmaps).
        core = self._core
        await anyio.lowlevel.checkpoint()
        code = core._shrink_nowait(offset, size)
        if code == C_WOULD_BLOCK:  # a front shrink (a munmap), or the gate is busy
            code = await run_job(core._shrink_job, (offset, size), int)
            if code == C_WOULD_BLOCK:
                await run_blocking(core.shrink, offset, size)
                return
        if code:
            core._shrink_failed(offset, size, code)

    async def aclose(self) -> None:
        """Unmap every mapping and release all the address space (headroom included), from a
        worker thread, once in-flight operations are done. Idempotent.

        Cancellation: runs to the end even when the calling task is cancelled (also when it
        was cancelled before the call); the cancellation is delivered when it returns. On a
        closed reservation it is a checkpoint and does nothing else.

        Raises:
            BufferError: a view of some mapping is still alive; nothing is changed.
            OSError: the kernel refused (see ``aiopmem.sync.Reservation.close``).
        """
        core = self._core
        if core.closed:
            await anyio.lowlevel.checkpoint()
            return
        # A job of the executor when the gate is free; else (or with holes to repair) the
        # blocking path, which waits for its turn in a worker.
        r = await run_job(core._close_job, (), core._closed_outcome, always=True)
        if r == C_WOULD_BLOCK:
            await run_blocking(core.close, always=True)
        elif r:
            core._closed_outcome(r)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await aclose_on_exit(self, self.aclose, exc)


def _core_of(mapping: object) -> Any:
    if isinstance(mapping, Mapping):
        return mapping._core
    name = public_name(mapping)
    hint = " (an async one is made by aiopmem.Reservation.map_*)" if "sync" in name else ""
    raise TypeError(f"expected an aiopmem.Mapping, not {name}{hint}")


def reserve(
    size: int,
    *,
    address: int | None = None,
    max_size: int | None = None,
    alignment: int | None = None,
) -> Opening[Reservation]:
    """Reserve ``size`` bytes of address space as an inaccessible placeholder.

    Use as ``async with aiopmem.reserve(size) as rsv:`` or ``rsv = await aiopmem.reserve(size)``
    (then ``await rsv.aclose()``). Arguments, validation order and errors are those of
    ``aiopmem.sync.reserve``; the mmap runs in a worker thread.

    Cancellation: a caller cancelled before the call starts gets nothing; a reservation made for
    a caller cancelled meanwhile is closed again before the cancellation propagates.
    """
    return Opening(_reserve, (size, address, max_size, alignment), "aiopmem.reserve()")


def _unmap_core(mapping: _core.Mapping) -> None:
    mapping.unmap()


def _unmap_facade(mapping: Mapping) -> None:
    mapping._core.unmap()


def _close_owned(opened: tuple[OwnedFd, int, int]) -> None:
    opened[0].close()


def _close_core(rsv: _core.Reservation) -> None:
    rsv.close()


async def _reserve(
    size: int, address: int | None, max_size: int | None, alignment: int | None
) -> Reservation:
    args = reserve_args(size, address, max_size, alignment)
    core: _core.Reservation = await run_job(
        reserve_job, args, partial(reserved, args=args), undo=_close_core
    )
    return Reservation._create(core)
