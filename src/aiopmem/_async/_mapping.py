"""The async ``Mapping``: the core mapping's attributes and ``view()`` as they are, ``persist()``
and ``unmap()`` as coroutines run in a worker thread."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio

from .._core import Granularity, Protection, Sharing
from .._core import Mapping as CoreMapping
from .._core._construct import NoPublicConstructor, aclose_on_exit
from .._ffi import C_WOULD_BLOCK
from ._dispatch import run_blocking, run_job

if TYPE_CHECKING:
    from ._reservation import Reservation

__all__ = ["Mapping"]


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
        r = await run_job(core._rsv._unmap_job, (core,), core._unmapped, always=True)
        if r == C_WOULD_BLOCK:  # a persist or the gate would make it wait: wait in a worker
            await run_blocking(core.unmap, always=True)
        elif r is not None:
            core._unmapped(r)

    aclose = unmap

    async def __aenter__(self) -> Mapping:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await aclose_on_exit(self, self.unmap, exc)
