"""The async ``Mapping``: the core mapping's attributes and ``view()`` as they are, ``persist()``
and ``unmap()`` as coroutines run in a worker thread."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio

from .._core import Advice, Granularity, Protection, Sharing
from .._core import Mapping as CoreMapping
from .._core._construct import NoPublicConstructor, aclose_on_exit
from .._ffi import C_WOULD_BLOCK, aio_unmap
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

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["Mapping"]

_new = object.__new__


@final
class Mapping(metaclass=NoPublicConstructor):
    """A file region or anonymous memory mapped into a reservation (async API).

    Made by ``await rsv.map_file(...)`` / ``await rsv.map_anonymous(...)``. Attributes and
    ``view()`` are plain and never block; ``persist()`` and ``unmap()`` (alias ``aclose()``,
    or leaving ``async with``) run their syscall in a worker thread.
    """

    __slots__ = ("__weakref__", "_core", "_rsv")

    def __init__(self, core: CoreMapping, rsv: Reservation) -> None:
        self._core = core
        self._rsv = rsv

    # -- attributes (plain, non-blocking) ----------------------------------------------------

    @property
    def address(self) -> int:
        """Absolute address of the first mapped byte (never changes)."""
        return self._core.address

    @property
    def size(self) -> int:
        """Bytes mapped (the length asked for; the last page may be partial)."""
        return self._core.size

    @property
    def offset(self) -> int:
        """Current offset inside the reservation (drops when its front is shrunk)."""
        return self._core.offset

    @property
    def reservation(self) -> Reservation:
        return self._rsv

    @property
    def file_offset(self) -> int:
        """Offset in the file of the first mapped byte (0 for anonymous mappings)."""
        return self._core.file_offset

    @property
    def file(self) -> str | None:
        """What was mapped: the path, ``"file descriptor N"``, or None for anonymous memory."""
        return self._core.file

    @property
    def protection(self) -> Protection:
        return self._core.protection

    @property
    def sharing(self) -> Sharing:
        return self._core.sharing

    @property
    def granularity(self) -> Granularity:
        """The coarsest store granularity ``persist()`` guarantees (see ``Granularity``)."""
        return self._core.granularity

    @property
    def closed(self) -> bool:
        """True once unmapped (by ``unmap()`` or by closing the reservation)."""
        return self._core.closed

    @property
    def sync(self) -> CoreMapping:
        """The same mapping in the blocking API (``aiopmem.sync.Mapping``), for threads."""
        return self._core

    _public_name = "aiopmem.Mapping"

    def __repr__(self) -> str:
        return self._core._repr(self._public_name)

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A memoryview of ``[offset, offset+length)`` of the mapped bytes; plain and
        non-blocking (no syscall). See ``aiopmem.sync.Mapping.view`` for the rules: read-only
        without WRITE, ``BufferError`` on unmap while any view or object built on one lives.

        Raises:
            TypeError, ClosedError, NoAccessError, OffsetOutOfRangeError, LengthOutOfRangeError.
        """
        return self._core.view(offset, length)

    # -- blocking operations -------------------------------------------------------------------

    async def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make ``[offset, offset+length)`` durable (msync MS_SYNC of the covering pages) from
        a worker thread; returns once the data is on stable storage for shared file mappings.

        Cancellation: a caller cancelled before the call, or while waiting for its turn (an
        extend or shrink of the reservation in flight), starts nothing. Once the msync runs it
        completes, and the cancellation is delivered when it returns.

        Raises:
            TypeError, ClosedError (also while an unmap is in flight), OffsetOutOfRangeError,
            LengthOutOfRangeError, OSError (e.g. EIO).
        """
        core = self._core
        start, end = core._persist_range(offset, length)
        r = await run_job(core._rsv._persist_job, (core, start, end), core._persisted)
        if r == C_WOULD_BLOCK:  # an extend or shrink holds the gate: wait for it in a worker
            await run_blocking(core.persist, offset, length)
        elif r is not None:
            core._persisted(r)

    @ki_protected
    async def unmap(self) -> None:
        """Unmap from a worker thread: the range becomes an inaccessible placeholder of the
        reservation again (never a hole). Idempotent; waits for ``persist()`` calls in flight.

        Cancellation: runs to the end even when the calling task is cancelled (also when it
        was cancelled before the call); the cancellation is delivered when it returns. On an
        unmapped mapping it is a checkpoint and does nothing else.

        Raises:
            BufferError: a view (or an object built on one) is still alive; nothing changed.
            OSError: the kernel refused; nothing changed.
        """
        core = self._core
        if core.closed:
            await anyio.lowlevel.checkpoint()
            return
        job = aio_unmap(core)  # aio_begin(core._rsv._unmap_job, (core,), True)
        if type(job) is _Job:  # run_job's tail, inline (every async unmap)
            try:
                r = await job
            except asyncio.CancelledError:
                await cancelled_job(job.waiter, job, None, core._unmapped)
                raise
            if r:
                core._unmapped(r)
            # Unmapped: nothing finds the core again, so it lets go of this face (the two
            # would otherwise be a cycle that only the garbage collector frees, per mapping).
            core._facade = None
            if cancel_due(job.task):
                await late_cancel(job, None, None)
            return
        if job is None:  # the Python path decides (see run_job)
            r = await run_job(core._rsv._unmap_job, (core,), core._unmapped, always=True)
        else:  # a code: nothing began
            r = job
            if r != C_WOULD_BLOCK:
                await anyio.lowlevel.checkpoint()
        if r == C_WOULD_BLOCK:  # a persist or the gate would make it wait: wait in a worker
            await run_blocking(core.unmap, always=True)
        elif r is not None:
            core._unmapped(r)
        core._facade = None  # unmapped (see above)

    aclose = unmap

    # -- memory operations (in the executor; see aiopmem.sync.Mapping for the rules) ----------

    @property
    def locked(self) -> bool:
        """True while the mapping is locked in memory by ``lock()``."""
        return self._core.locked

    async def populate(self, offset: int = 0, length: int | None = None) -> None:
        """Fault the pages of ``[offset, offset+length)`` in from a worker thread (for writing
        when the mapping has WRITE), so that later loads and stores through views do not
        page-fault on the event loop.

        Cancellation: a caller cancelled before the call starts nothing; once begun it
        completes, and the cancellation is delivered when it returns (as for every memory
        operation below).

        Raises:
            TypeError, ClosedError, NoAccessError (no READ), OffsetOutOfRangeError,
            LengthOutOfRangeError, OSError.
        """
        core = self._core
        await run_mem(core._rsv, core._populate_args(offset, length), "populate")

    async def advise(self, advice: Advice, offset: int = 0, length: int | None = None) -> None:
        """madvise() the range with ``advice``, from a worker thread.

        Raises:
            TypeError (not an ``Advice``), ClosedError, OffsetOutOfRangeError,
            LengthOutOfRangeError, OSError.
        """
        core = self._core
        await run_mem(core._rsv, core._advise_args(advice, offset, length), "advise")

    async def protect(self, protection: Protection) -> None:
        """Change the protection of the whole mapping (mprotect) from a worker thread; waits
        for memory operations in flight that need the access it takes away.

        Raises:
            TypeError, ClosedError, BufferError (it would take access away from a live view),
            NoAccessError (WRITE on a file opened read-only), OSError.
        """
        core = self._core
        await run_mem(core._rsv, core._protect_args(protection), "change the protection")

    async def lock(self) -> None:
        """Lock the mapping in memory (mlock) from a worker thread. Idempotent.

        Raises:
            ClosedError, OSError (beyond RLIMIT_MEMLOCK: EPERM or ENOMEM; still unlocked).
        """
        core = self._core
        await run_mem(core._rsv, core._lock_args(True), "lock the mapping")

    async def unlock(self) -> None:
        """Undo ``lock()`` (munlock) from a worker thread. Idempotent.

        Raises:
            ClosedError, OSError.
        """
        core = self._core
        await run_mem(core._rsv, core._lock_args(False), "unlock the mapping")

    async def write(self, offset: int, data: object) -> int:
        """Copy the bytes-like ``data`` into the mapping at ``offset`` in a worker thread (the
        copy and its page faults never run on the event loop); returns ``len(data)`` in bytes.

        Raises (in this order):
            TypeError, ClosedError, OffsetOutOfRangeError, LengthOutOfRangeError,
            NoAccessError (no WRITE).
        """
        core = self._core
        args = core._write_args(offset, data)
        await run_mem(core._rsv, args, "write")
        return args[4] - args[3]

    async def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """A copy of ``[offset, offset+length)`` of the mapping, made in a worker thread.

        Raises: as ``write()`` (NoAccessError: no READ).
        """
        core = self._core
        return await run_mem(core._rsv, core._read_args(offset, length), "read")  # type: ignore[no-any-return]

    async def read_into(self, buffer: object, offset: int = 0) -> int:
        """Fill the writable ``buffer`` with ``len(buffer)`` bytes from ``offset``, in a worker
        thread; returns that number.

        Raises: as ``read()`` (TypeError: not a writable buffer).
        """
        core = self._core
        args = core._read_into_args(buffer, offset)
        await run_mem(core._rsv, args, "read")
        return args[4] - args[3]

    async def __aenter__(self) -> Mapping:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await aclose_on_exit(self, self.unmap, exc)


def facade_of(core: CoreMapping, rsv: Reservation) -> Mapping:
    """The async face of ``core``: the one it keeps (until it is unmapped), else one made now,
    without the metaclass's ``_create`` (this is on the path of every async map). One face per
    mapping: a lookup may make it between a map's commit and its task's resumption."""
    face = core._facade
    if face is not None:
        return face  # type: ignore[return-value]
    m: Mapping = _new(Mapping)
    m._core = core
    m._rsv = rsv
    core._facade = m
    return m
