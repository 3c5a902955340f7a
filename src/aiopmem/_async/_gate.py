"""The event-loop side of a reservation's admission: the same shared/exclusive rule as the
core's gate (``aiopmem._core._gate``), enforced among tasks with anyio primitives *before* an
operation is sent to a worker thread, so worker threads never sit waiting for an operation of
another task. The core gate still runs in the worker, uncontended unless threads of the sync
API share the reservation.

Guarantees: used only from the event loop thread that owns the reservation's tasks; the
uncontended paths do not yield to the event loop. Waiting is cancellable and leaves the
counters as they were.
"""

from __future__ import annotations

from typing import final

import anyio

__all__ = ["AsyncGate", "Signal"]


class Signal:
    """Wakes every task waiting for some state to change; each re-checks its own condition.
    The event is only made when a task actually waits."""

    __slots__ = ("_changed",)

    def __init__(self) -> None:
        self._changed: anyio.Event | None = None

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


@final
class AsyncGate(Signal):
    __slots__ = ("_exclusive", "_shared", "_waiting")

    def __init__(self) -> None:
        super().__init__()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    async def enter_shared(self) -> None:
        while self._exclusive or self._waiting:
            await self._wait()
        self._shared += 1

    def leave_shared(self) -> None:
        self._shared -= 1
        if not self._shared:
            self._notify()

    async def enter_exclusive(self) -> None:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._wait()
        except BaseException:
            self._waiting -= 1
            self._notify()
            raise
        self._waiting -= 1
        self._exclusive = True

    def leave_exclusive(self) -> None:
        self._exclusive = False
        self._notify()
