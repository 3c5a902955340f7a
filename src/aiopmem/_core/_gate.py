"""Admission of operations to a reservation: shared for maps, unmaps, persists (and the memory
operations), exclusive for extend, shrink and close.

A front shrink moves the reservation's base and so every offset; extend and close change its
extent. Those must not interleave with a map computing its address or an unmap laying its
placeholder, so they wait until no shared operation is in flight.

Phase-fair admission (API.md, "Liveness"). A shared operation that arrives while an exclusive
one runs or waits is queued; when the exclusive operation finishes, *every* queued shared
operation is admitted at once (a new phase), before the next exclusive one, which waits only
for the shared operations admitted before it. So a shared operation waits behind at most one
exclusive operation, and a stream of shared operations cannot starve an exclusive one, however
many threads (or the worker threads of several event loops) loop on either kind.

Abandoning a wait. A thread that waits here on behalf of an async caller carries a ``Ticket``
(``tickets``); when that caller is cancelled, ``Ticket.abandon()`` wakes the thread, which
raises ``Abandoned`` with the counters as they were: the operation did not start.

Guarantees: every method is called with the reservation's state lock held (the lock the
condition is built on); waiting releases that lock, so lookups never wait behind a syscall.
Waking is skipped when nobody sleeps, which keeps the uncontended path to a few integer updates.
"""

from __future__ import annotations

import threading
from typing import Final, final

__all__ = ["Abandoned", "Gate", "Ticket", "tickets"]


class Abandoned(Exception):
    """The caller of an operation waiting for its turn was cancelled: it did not start."""


@final
class Ticket:
    """What a thread waiting on behalf of an async caller carries (see ``tickets``)."""

    __slots__ = ("_cond", "abandoned")

    def __init__(self) -> None:
        self.abandoned = False
        #: The condition the thread sleeps on right now, if any.
        self._cond: threading.Condition | None = None

    def abandon(self) -> None:
        """Called from the caller's side (an event loop): make the waiting thread give up."""
        self.abandoned = True
        cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()


#: ``tickets.ticket``: the Ticket of the call this thread runs now, or None. Set by whoever
#: runs a call on behalf of an async caller (the worker pool) around the call.
tickets: Final = threading.local()
tickets.ticket = None


@final
class Gate:
    __slots__ = ("_cond", "_exclusive", "_phase", "_queued", "_shared", "_sleepers", "_waiting")

    def __init__(self, lock: threading.Lock) -> None:
        self._cond = threading.Condition(lock)
        #: Shared operations admitted and not finished.
        self._shared = 0
        #: Whether an exclusive operation runs.
        self._exclusive = False
        #: Exclusive operations waiting for their turn.
        self._waiting = 0
        #: Shared operations waiting for the current exclusive phase to end.
        self._queued = 0
        #: Bumped each time the queued shared operations are admitted together.
        self._phase = 0
        self._sleepers = 0

    def wait(self) -> None:
        """Sleep until some state changes (lock held; released while asleep).

        Raises ``Abandoned`` if this thread waits for a caller that is gone."""
        ticket: Ticket | None = getattr(tickets, "ticket", None)
        self._sleepers += 1
        try:
            if ticket is None:
                self._cond.wait()
                return
            ticket._cond = self._cond
            try:
                if not ticket.abandoned:
                    self._cond.wait()
            finally:
                ticket._cond = None
            if ticket.abandoned:
                raise Abandoned("the caller was cancelled while the operation waited its turn")
        finally:
            self._sleepers -= 1

    def wake(self) -> None:
        """Wake every sleeper so each can re-check what it waits for."""
        if self._sleepers:
            self._cond.notify_all()

    def try_enter_shared(self) -> bool:
        """Admit a shared operation if nothing exclusive runs or waits (the fast path)."""
        if self._exclusive or self._waiting:
            return False
        self._shared += 1
        return True

    def enter_shared(self) -> None:
        if self._exclusive or self._waiting:
            phase = self._phase
            self._queued += 1
            try:
                while self._phase == phase:
                    self.wait()
            except BaseException:
                if self._phase == phase:
                    self._queued -= 1
                else:  # admitted meanwhile: give the place back
                    self.leave_shared()
                raise
        else:
            self._shared += 1

    def leave_shared(self) -> None:
        self._shared -= 1
        if not self._shared:
            self.wake()

    def leave_shared_waking(self) -> None:
        """``leave_shared`` for an operation that another may be waiting on (an unmap or a
        persist of a mapping): wakes whenever anybody sleeps."""
        self._shared -= 1
        self.wake()

    def enter_exclusive(self) -> None:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                self.wait()
        except BaseException:
            # Interrupted while waiting: shared operations queued behind us may go on.
            self._waiting -= 1
            if not self._waiting and not self._exclusive:
                self._admit_queued()
            raise
        self._waiting -= 1
        self._exclusive = True

    def leave_exclusive(self) -> None:
        self._exclusive = False
        if self._queued:
            self._admit_queued()
        else:  # an exclusive operation may be waiting
            self.wake()

    def _admit_queued(self) -> None:
        """Start a shared phase: every queued shared operation is admitted now (and woken)."""
        if self._queued:
            self._shared += self._queued
            self._queued = 0
            self._phase += 1
            self.wake()
