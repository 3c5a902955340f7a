"""How the async layer runs a blocking core call: in a worker thread, never on the event loop.

Every call goes through ``run_blocking``: one job on the worker pool (``_workers``) per logical
operation, its outcome handed back to the waiting task by the backend's own machinery: an
asyncio future, or trio's ``wait_task_rescheduled``/``reschedule``.

Cancellation: a caller already cancelled when it calls starts nothing (every async function
is a checkpoint). A submitted job is never abandoned: the caller waits for its outcome even if
cancelled meanwhile (a mutation must not be left running unobserved). A job still waiting for
its turn at the reservation's gate when its caller is cancelled gives up there (its
``Ticket`` is abandoned) and did not start. If the caller was cancelled before it could
receive the outcome, the cancellation propagates from ``run_blocking`` once the job is done,
after the result has been given to ``undo`` (a map is unmapped again, a new reservation
closed); without ``undo`` the job's effect stands. The caller resumes with the result only
when it was not cancelled by then, so a result never falls between the worker and the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .._core._gate import Abandoned, Ticket
from ._workers import Job, Port, submit

__all__ = ["run_blocking"]

T = TypeVar("T")

_get_running_loop = asyncio._get_running_loop
_modules = sys.modules
_asyncio_ports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Port] = (
    weakref.WeakKeyDictionary()
)


async def run_blocking(
    fn: Callable[..., T],
    *args: Any,
    undo: Callable[[T], object] | None = None,
    always: bool = False,
) -> T:
    """Run ``fn(*args)`` in a worker thread and return its result (or raise its exception).

    Cancellation: a caller cancelled before the call starts nothing, unless ``always`` (unmap
    and close run to the end whatever happens). Once submitted, the call is always waited for
    to the end; a call that still waits for its turn at the gate gives up (unless ``always``).
    If the caller is cancelled by then, the result is passed to ``undo`` (in a worker,
    shielded) and the cancellation propagates; otherwise the result is returned.
    """
    loop = _get_running_loop()
    if loop is not None and not _trio_guest():
        if not always:
            await checkpoint_if_cancelled()
        return await _run_asyncio(loop, fn, args, undo, always)  # type: ignore[no-any-return]
    return await _run_trio(fn, args, undo, always)  # type: ignore[no-any-return]


def _trio_guest() -> bool:
    """Whether this is a trio task run as a guest of the asyncio loop (``start_guest_run``):
    the loop is then running, but only trio's primitives work. Trio marks the steps of its
    tasks in sniffio's thread-local (sniffio is loaded when trio is)."""
    sniffio = _modules.get("sniffio")
    return sniffio is not None and getattr(sniffio.thread_local, "name", None) == "trio"


# -- asyncio -------------------------------------------------------------------------------------


def _weakly(owner: Any, method: str) -> Callable[[Callable[[], None]], object]:
    """``owner.<method>`` without a strong reference to ``owner``: a port is the value of a
    weak-keyed entry whose key is ``owner``, and a strong one would keep every event loop (or
    trio token) that ever used the pool alive. While a job is in flight its waiter (a future
    of the loop, a task of the run) keeps the owner alive."""
    ref = weakref.ref(owner)

    def call(callback: Callable[[], None]) -> object:
        obj = ref()
        if obj is None:
            raise RuntimeError("the event loop is gone")
        return getattr(obj, method)(callback)

    return call


def _asyncio_port(loop: asyncio.AbstractEventLoop) -> Port:
    port = _asyncio_ports.get(loop)
    if port is None:
        port = _asyncio_ports[loop] = Port(_weakly(loop, "call_soon_threadsafe"), None)
    return port


async def _run_asyncio(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Any],
    args: Any,
    undo: Callable[[Any], object] | None,
    always: bool,
) -> Any:
    ticket = None if always else Ticket()
    job = Job(fn, args, _asyncio_port(loop), ticket)
    job.waiter = loop.create_future()
    submit(job)
    try:
        await job.waiter
    except asyncio.CancelledError:
        # Cancelled while the job runs: never abandon it. A job still waiting for its turn
        # gives up; wait for its outcome shielded, then let the cancellation continue.
        if ticket is not None:
            ticket.abandon()
        with anyio.CancelScope(shield=True):
            while not job.delivered:
                job.waiter = loop.create_future()
                # The shield keeps anyio's scopes out, not a plain task.cancel() (a second
                # asyncio.timeout, TaskGroup abort...): that one is absorbed too, or the job
                # would be abandoned and its result never undone.
                with contextlib.suppress(asyncio.CancelledError):
                    await job.waiter
            error = job.error
            if type(error) is Abandoned:  # it did not start: only the cancellation remains
                job.error = None
            else:
                result = job.outcome()  # an error of the job is more informative
                if undo is not None:
                    await _undo_asyncio(loop, undo, result)
        raise
    return job.outcome()


async def _undo_asyncio(
    loop: asyncio.AbstractEventLoop, undo: Callable[[Any], object], result: Any
) -> None:
    # If the undo fails (a new mapping is already visible to lookups, and someone took a view
    # of it before it could be unmapped again), the cancellation still wins: the caller was
    # cancelled and must see that. What could not be undone stays in its reservation, which
    # releases it on close.
    with contextlib.suppress(Exception):
        await _run_asyncio(loop, undo, (result,), None, True)


# -- trio ----------------------------------------------------------------------------------------

_trio_ports: weakref.WeakKeyDictionary[object, Port] = weakref.WeakKeyDictionary()


def _trio_port() -> Port:
    import outcome
    import trio

    token = trio.lowlevel.current_trio_token()
    port = _trio_ports.get(token)
    if port is None:
        how = (trio.lowlevel.reschedule, outcome.Value)
        port = _trio_ports[token] = Port(_weakly(token, "run_sync_soon"), how)
    return port


async def _run_trio(
    fn: Callable[..., Any], args: Any, undo: Callable[[Any], object] | None, always: bool
) -> Any:
    import trio

    ticket = None
    if not always:
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller starts nothing
        ticket = Ticket()
    job = Job(fn, args, _trio_port(), ticket)
    job.waiter = trio.lowlevel.current_task()
    submit(job)

    def abort(_: Any) -> Any:
        # A cancellation cannot interrupt this wait (Abort.FAILED); it is delivered afterwards.
        # A job still waiting for its turn gives up meanwhile.
        if ticket is not None:
            ticket.abandon()
        return trio.lowlevel.Abort.FAILED

    await trio.lowlevel.wait_task_rescheduled(abort)
    try:
        result = job.outcome()
    except Abandoned:
        await trio.lowlevel.checkpoint_if_cancelled()  # abandoned: the cancellation is due
        raise  # (not reached: only a cancelled caller's ticket is abandoned)
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        if undo is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await _run_trio(undo, (result,), None, True)  # see _undo_asyncio
        raise
    return result
