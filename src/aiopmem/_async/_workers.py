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
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

from .._core._gate import Ticket, set_ticket

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
    """

    __slots__ = ("deliver", "done", "lock", "pending", "schedule")

    def __init__(
        self, schedule: Callable[[Callable[[], None]], object], deliver: Callable[[Job], None]
    ) -> None:
        self.schedule = schedule
        self.deliver = deliver
        self.done: deque[Job] = deque()
        self.lock = threading.Lock()
        self.pending = False

    def finished(self, job: Job) -> None:
        """Called by a worker: queue ``job`` for the loop, waking it unless a wake is pending."""
        self.done.append(job)
        with self.lock:
            if self.pending:
                return
            self.pending = True
        try:
            self.schedule(self._deliver_all)
        except Exception:
            # The loop is gone (a closed asyncio loop, a finished trio run): nobody can take
            # this outcome any more. The worker must survive this: a dead worker would count
            # as "about to look at the queue" forever and strand every later job.
            with self.lock:
                self.pending = False
            self.done.clear()  # for good: do not keep the loop alive through the jobs

    def _deliver_all(self) -> None:
        """Runs on the event loop: hand every finished job to its waiting task."""
        with self.lock:
            self.pending = False
        done = self.done
        deliver = self.deliver
        while done:
            deliver(done.popleft())


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


class _LifoCondition(threading.Condition):
    """A condition whose ``notify`` wakes the most recent waiter, not the oldest: the worker
    that went idle last is the one whose stack and caches are still warm, and waking in LIFO
    order keeps bursts of jobs on the same thread instead of rotating through the idle ones.
    (Relies on ``threading.Condition`` keeping its waiters' locks in ``_waiters``, as it has
    since Python 3.2.)"""

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters  # type: ignore[attr-defined]
        while waiters and n > 0:
            waiter = waiters.pop()
            try:
                waiter.release()
            except RuntimeError:  # already released by a timeout racing with us
                continue
            n -= 1


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
        "_names",
        "_queue",
        "_running",
        "_spare",
        "_spare_cond",
        "_threads",
        "_waking",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle_cond = _LifoCondition(self._lock)
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

    def submit(self, job: Job) -> None:
        job.submitted = time.monotonic()
        with self._lock:
            self._queue.append(job)
            if self._waking or self._threads > self._running + self._idle + self._spare:
                return  # a worker is about to look at the queue
            if self._running:
                # The running worker takes the job when it is done; a spare must watch in case
                # it is slow. Fast jobs thus stay on one thread.
                if self._spare:
                    return
            elif self._spare:
                self._spare_cond.notify()
                self._waking = True
                return
            try:
                self._wake_or_start()
            except Exception:
                if not self._running:  # no worker at all: the job would never run
                    self._queue.remove(job)
                    raise
                # A running worker takes the job when it is done; only the spare is missing.

    def _wake_or_start(self) -> None:
        """Get one more worker to look at the queue (lock held; may release it to start)."""
        if self._idle:
            self._idle_cond.notify()
            self._waking = True
        elif self._threads < MAX_WORKERS:
            self._threads += 1
            name = f"aiopmem-worker-{next(self._names)}"
            try:
                threading.Thread(target=self._work, name=name, daemon=True).start()
            except Exception:  # e.g. "can't start new thread": no phantom worker
                self._threads -= 1
                raise

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
