"""Admission of operations to a reservation: shared for maps, unmaps and persists, exclusive
for extend, shrink and close.

A front shrink moves the reservation's base and so every offset; extend and close change its
extent. Those must not interleave with a map computing its address or an unmap laying its
placeholder, so they wait until no shared operation is in flight, and new shared operations
wait while one of them is waiting or running (writer preference: a steady stream of maps cannot
starve an extend).

Guarantees: every method is called with the reservation's state lock held (the lock the
condition is built on); waiting releases that lock, so lookups never wait behind a syscall.
Waking is skipped when nobody sleeps, which keeps the uncontended path to a few integer updates.
"""

from __future__ import annotations

import threading
from typing import final

__all__ = ["Gate"]


@final
class Gate:
    __slots__ = ("_cond", "_exclusive", "_shared", "_sleepers", "_waiting")

    def __init__(self, lock: threading.Lock) -> None:
        self._cond = threading.Condition(lock)
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._sleepers = 0

    def wait(self) -> None:
        """Sleep until some state changes (lock held; released while asleep)."""
        self._sleepers += 1
        try:
            self._cond.wait()
        finally:
            self._sleepers -= 1

    def wake(self) -> None:
        """Wake every sleeper so each can re-check what it waits for."""
        if self._sleepers:
            self._cond.notify_all()

    def enter_shared(self) -> None:
        while self._exclusive or self._waiting:
            self.wait()
        self._shared += 1

    def leave_shared(self) -> None:
        self._shared -= 1
        if not self._shared:
            self.wake()

    def enter_exclusive(self) -> None:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                self.wait()
        except BaseException:
            # Interrupted while waiting: shared operations held back for us may go on.
            self._waiting -= 1
            self.wake()
            raise
        self._waiting -= 1
        self._exclusive = True

    def leave_exclusive(self) -> None:
        self._exclusive = False
        self.wake()
