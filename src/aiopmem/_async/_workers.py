"""The worker threads behind the async API, and how their results reach the event loop.

Why not ``anyio.to_thread.run_sync``: most of an offloaded map+unmap was the hop itself (a
future, a capacity limiter, one event-loop wake-up per call). Here a process-wide pool runs
queued jobs back to back, and the event loop is woken once per *batch* of finished jobs with
the backend's own primitive (asyncio ``call_soon_threadsafe``, trio ``run_sync_soon``).

Scheduling. Normally one worker drains the queue in order, which keeps the hop cheap under
load. A job must not wait behind a slow one, though (a 0.4 s msync must not delay an unrelated
map by 0.4 s), so whenever jobs are queued a *spare* worker watches the running ones: when
every running job has been running for ``STALL`` seconds (the workers are stuck, not merely
busy), the spare takes the next job and another spare takes its place. Slow jobs therefore run
in parallel, each starting at most ``STALL`` late, and fast jobs queued behind slow ones run
at full speed on the extra worker; a long queue of fast jobs stays on one thread.

Guarantees: the queue, the counters and every port's ``pending`` flag are guarded by their
locks; a job is run exactly once and its outcome delivered exactly once, on the event loop
that submitted it. Workers are daemon threads: a job is only ever submitted by a task that then
waits for it, so none is in flight when the interpreter exits normally.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

from .._core._gate import Ticket, set_ticket
from .._ffi import deliver_all, pool_submit, wake_or_start

__all__ = ["Job", "Port", "submit"]

#: How long a queued job may wait for the busy worker before a spare takes it (seconds).
#: Far below anything a user would call slow, far above the ~5 us a map takes, so fast jobs
#: practically never start a second thread.
STALL: Final = 0.002
#: Idle workers beyond the first exit after this long without work (seconds).
IDLE_EXIT: Final = 10.0
#: Upper bound on worker threads (anyio's default limiter allows 40 to_thread calls at once).
MAX_WORKERS: Final = 64


@final
class Port:
    """Where finished jobs of one event loop wait until the loop picks them up.

    ``schedule(callback)`` is the backend's thread-safe "call soon" primitive; it is called at
    most once per batch: while a delivery is pending, more finished jobs just join the batch.
    The batch is handed over on the loop by one C call (``_ffi.deliver_all``), which no
    interrupt can stop halfway with the port's lock held; ``how`` says how a job reaches its
    task: None for an asyncio future (its result is set), ``(reschedule, Value)`` for a trio
    task (``trio.lowlevel.reschedule(task, outcome.Value(None))``), or a callable taking the
    job (a port with no event loop behind it).
    """

    __slots__ = ("_callback", "done", "how", "lock", "pending", "schedule")

    def __init__(
        self,
        schedule: Callable[[Callable[[], None]], object],
        how: tuple[Any, Any] | Callable[[Job], object] | None,
    ) -> None:
        self.schedule = schedule
        self.how = how
        self.done: deque[Job] = deque()
        self.lock = threading.Lock()
        self.pending = False
        self._callback = functools.partial(deliver_all, self)

    def finished(self, job: Job) -> None:
        """Called by a worker: queue ``job`` for the loop, waking it unless a wake is pending."""
        self.done.append(job)
        with self.lock:
            if self.pending:
                return
            self.pending = True
        try:
            self.schedule(self._callback)
        except Exception:
            # The loop is gone (a closed asyncio loop, a finished trio run): nobody can take
            # this outcome any more. The worker must survive this: a dead worker would count
            # as "about to look at the queue" forever and strand every later job.
            with self.lock:
                self.pending = False
            self.done.clear()  # for good: do not keep the loop alive through the jobs


@final
class Job:
    """One blocking call: ``fn(*args)``, run once by a worker, its outcome kept here."""

    __slots__ = (
        "args",
        "delivered",
        "error",
        "fn",
        "port",
        "result",
        "submitted",
        "ticket",
        "waiter",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        port: Port,
        ticket: Ticket | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.port = port
        #: Abandoned when the caller is cancelled: the call's gate waits then give up.
        self.ticket = ticket
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiter: Any = None
        self.delivered = False
        self.submitted = 0.0

    def execute(self) -> None:
        """Run the call, keeping its outcome (the worker then hands it to the port)."""
        ticket = self.ticket
        if ticket is not None:
            set_ticket(ticket)
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:
            self.error = exc
        finally:
            if ticket is not None:
                set_ticket(None)
        self.fn = self.args = None  # type: ignore[assignment]  # drop references early

    def outcome(self) -> Any:
        error = self.error
        if error is not None:
            self.error = None  # no reference cycle through the traceback
            raise error
        return self.result


@final
class _Pool:
    """Counters (under ``_lock``): ``_threads`` workers exist; ``_running`` of them run a job,
    ``_idle`` wait for work, ``_spare`` watch a queued job for a stall; the rest are in
    transit (just started, or between two jobs) and look at the queue before they wait.
    ``_waking``: a waiting worker has been notified and has not looked at the queue yet, so
    a burst of submissions wakes one thread, not one each."""

    __slots__ = (
        "_busy",
        "_idle",
        "_idle_cond",
        "_lock",
        "_max_workers",
        "_names",
        "_queue",
        "_running",
        "_spare",
        "_spare_cond",
        "_thread_type",
        "_threads",
        "_waking",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Notified newest waiter first (by ``_ffi.wake_or_start``): the worker that went idle
        #: last is the one whose stack and caches are still warm, and waking in LIFO order
        #: keeps bursts of jobs on the same thread instead of rotating through the idle ones.
        self._idle_cond = threading.Condition(self._lock)
        self._spare_cond = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._threads = 0
        self._running = 0
        self._idle = 0
        self._spare = 0
        self._waking = False
        #: Start time of each running job, by worker.
        self._busy: dict[int, float] = {}
        self._names = itertools.count(1)
        self._max_workers = MAX_WORKERS
        self._thread_type = threading.Thread

    def submit(self, job: Job) -> None:
        """Queue ``job`` and make sure a worker looks at it: one C call (``_ffi.submit``), so
        that an interrupt on the event loop's thread can never leave the pool's lock held.
        What it does, under the lock: if a worker is about to look at the queue (woken, or in
        transit), nothing more; if one runs a job, it takes this one when done, and a spare
        is woken or started to watch in case it is slow (fast jobs stay on one thread); else
        an idle worker is woken (``_wake_or_start``), or a new one started. If no worker can
        be had at all, the job is taken back and the error raised."""
        pool_submit(self, job)

    def _wake_or_start(self) -> None:
        """Get one more worker to look at the queue (lock held): the idle one that waited
        last, or a new thread (``_ffi.wake_or_start``)."""
        wake_or_start(self)

    def _take(self, me: int) -> Job | None:
        """Wait for a job this worker should run (lock held); None: retire the thread."""
        queue = self._queue
        busy = self._busy
        arriving = True  # from a finished job, or just started: first in line for the queue
        while True:
            if queue:
                now = time.monotonic()
                newest = max(busy.values()) if busy else None
                stuck = newest is None or now - newest >= STALL
                # Back from waiting, leave the job to a worker in transit (between two jobs):
                # it is about to take it, and taking it here would only move work between
                # threads.
                if stuck and (
                    arriving or self._threads - self._running - self._idle - self._spare <= 1
                ):
                    busy[me] = now
                    break
                self._spare += 1
                self._spare_cond.wait(STALL if newest is None or stuck else newest + STALL - now)
                self._spare -= 1
                self._waking = False
                arriving = False
            else:
                self._idle += 1
                woken = self._idle_cond.wait(IDLE_EXIT)
                self._idle -= 1
                self._waking = False
                arriving = False
                if not woken and not queue and self._threads > 1:
                    self._threads -= 1
                    return None
        self._running += 1
        return queue.popleft()

    def _work(self) -> None:
        lock = self._lock
        me = threading.get_ident()
        while True:
            with lock:
                job = self._take(me)
                if job is None:
                    return
                # Keep a spare watching whatever is still queued behind this job.
                if (
                    self._queue
                    and not (self._spare or self._waking)
                    and self._threads == self._running + self._idle
                ):
                    # Best effort: without a spare this worker still comes back to the queue.
                    with contextlib.suppress(Exception):
                        self._wake_or_start()
            job.execute()
            with lock:
                self._running -= 1
                del self._busy[me]
            # Only now wake the event loop: the task it resumes may submit its next job at
            # once, and this worker must already count as in transit, or another would be woken.
            job.port.finished(job)
            # Waiting for the next one, keep nothing of this job alive: its result (a dropped
            # reservation would not be released), its waiter and through it its event loop.
            del job

    def _reset_after_fork(self) -> None:
        # The child has none of the parent's threads: start from an empty pool.
        self.__init__()


_pool = _Pool()
submit = _pool.submit
os.register_at_fork(after_in_child=_pool._reset_after_fork)
