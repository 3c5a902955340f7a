"""Admission of operations to a reservation: shared for maps, unmaps, persists (and the memory
operations), exclusive for extend, shrink and close. The gate itself is part of the C state of
a reservation (``_ffi/_core.c``), so that admission, the operation and leaving are one call
that no interruption can tear; this module documents the policy and holds its Python names.

A front shrink moves the reservation's base and so every offset; extend and close change its
extent. Those must not interleave with a map computing its address or an unmap laying its
placeholder, so they wait until no shared operation is in flight.

Phase-fair admission (API.md, "Liveness"). A shared operation that arrives while an exclusive
one runs or waits is queued; when the exclusive operation finishes, *every* queued shared
operation is admitted at once (a new phase), before the next exclusive one, which waits only
for the shared operations admitted before it. So a shared operation waits behind at most one
exclusive operation, and a stream of shared operations cannot starve an exclusive one, however
many threads (or the worker threads of several event loops) loop on either kind.

Waiting. A waiting thread sleeps without the GIL and wakes at least every 50 ms to take
signals: a KeyboardInterrupt while waiting backs the wait out (nothing started) and is raised.

Abandoning a wait. A thread that waits on behalf of an async caller carries a ``Ticket``
(``set_ticket``); when that caller is cancelled, ``Ticket.abandon()`` wakes the thread, which
raises ``Abandoned`` with the counters as they were: the operation did not start.
"""

from __future__ import annotations

from .._ffi import Abandoned, Ticket, set_ticket

__all__ = ["Abandoned", "Ticket", "set_ticket"]
