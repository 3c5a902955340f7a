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
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled as _anyio_checkpoint_if_cancelled

from .._core._gate import Abandoned, Ticket
from .._core._mapping import mem_outcome
from .._ffi import C_WOULD_BLOCK, aio_begin, aio_cancel_due, aio_configure, aio_configure_trio
from .._ffi import Job as _Job
from .._ffi import Port as JobPort
from ._workers import Job, Port, submit

__all__ = ["cancelled_job", "ki_protected", "late_cancel", "run_blocking", "run_job", "run_mem"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_get_running_loop = asyncio._get_running_loop


def _asyncio_checkpoint_if_cancelled() -> Callable[[], Any]:
    """anyio's ``checkpoint_if_cancelled`` of its asyncio backend, taken once: the public
    function finds the backend anew on every call (sniffio, a module lookup), a third of its
    cost, and the async API calls it up to twice per operation on the event loop. The public
    function where anyio's layout is not the one known here."""
    try:
        from anyio._core._eventloop import get_async_backend

        fn: Callable[[], Any] = get_async_backend("asyncio").checkpoint_if_cancelled
    except Exception:  # another anyio: the public function
        return _anyio_checkpoint_if_cancelled
    return fn


#: Used only where the running loop is asyncio's (not a trio guest run): see run_job.
checkpoint_if_cancelled = _asyncio_checkpoint_if_cancelled()


def _asyncio_current_task() -> Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]:
    """``current_task(loop)`` as a C call: asyncio's own from 3.12; before, its function is
    Python code around a lookup in the dictionary of current tasks, which is taken directly."""
    current = asyncio.current_task
    if isinstance(current, types.BuiltinFunctionType):
        return current
    current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(current_tasks, dict):
        return current_tasks.get
    return current


#: The running task of an asyncio loop (None in a trio guest run: trio's tasks are not
#: asyncio's).
current_task = _asyncio_current_task()


def _anyio_task_states() -> tuple[dict[Any, Any] | None, type | None, type | None]:
    """anyio's task states on asyncio (a weak dictionary's data, keyed by weak references to
    the tasks), where a task's innermost cancel scope is found, and the classes of its cancel
    scopes and task states (whose slots the C walk reads directly), or Nones where anyio's
    layout is not the one known here. With them, the C prologue (``aio_begin``) and
    ``cancel_due`` tell whether ``checkpoint_if_cancelled()`` would raise in a task by anyio's
    own walk (the innermost scope outwards, up to a shield) without making and awaiting a
    coroutine; without, they always say yes (the real checkpoint then decides)."""
    try:
        from anyio._backends._asyncio import CancelScope, TaskState, _task_states

        scope = CancelScope()
        if not (
            isinstance(_task_states, weakref.WeakKeyDictionary)
            and scope._cancel_called is False
            and scope._shield is False
            and scope._parent_scope is None
        ):
            raise LookupError
    except Exception:  # another anyio
        return None, None, None
    data: dict[Any, Any] = _task_states.data  # type: ignore[attr-defined]
    return data, CancelScope, TaskState


#: Whether the asyncio task (see above), or the trio task once trio's side of the prologue is
#: set up (see _trio_setup), would be cancelled at a checkpoint now (a C function).
cancel_due: Callable[[Any], bool] = aio_cancel_due
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
    if loop is not None and ((task := current_task(loop)) is not None or not _trio_guest()):
        if not always and cancel_due(task):
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
    """``owner.<method>`` without a strong reference to ``owner``: a port is held for its
    owner (a weak-keyed entry, or the run's RunVar), and a strong one would keep every event
    loop (or trio token) that ever used the pool alive. While a job is in flight its waiter
    (a future of the loop, a task of the run) keeps the owner alive."""
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
    return await _await_asyncio(loop, job, undo)


async def _await_asyncio(
    loop: asyncio.AbstractEventLoop, job: Job, undo: Callable[[Any], object] | None
) -> Any:
    """Wait for a submitted pool ``Job`` on asyncio; see the module. (A C job is awaited
    itself: ``run_job``.)"""
    try:
        await job.waiter
    except asyncio.CancelledError:
        await _cancelled_asyncio(loop, job, undo)
        raise
    return job.outcome()


async def _cancelled_asyncio(
    loop: asyncio.AbstractEventLoop, job: Job, undo: Callable[[Any], object] | None
) -> None:
    """The caller of ``job`` was cancelled while it ran: never abandon it. A job still waiting
    for its turn gives up; wait for its outcome shielded and undo its result; the caller then
    lets the cancellation continue (an error of the job is raised instead: it is more
    informative)."""
    ticket = job.ticket
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
            result = job.outcome()
            if undo is not None:
                await _undo_asyncio(loop, undo, result)


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
        _protect_from_ki(trio)
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
    return await _await_trio(job, undo)


def _abort_failed(_: Any) -> Any:
    import trio

    # A cancellation cannot interrupt this wait (Abort.FAILED); it is delivered afterwards.
    return trio.lowlevel.Abort.FAILED


async def _await_trio(job: Job, undo: Callable[[Any], object] | None) -> Any:
    """Wait for a submitted pool ``Job`` on trio; see the module. (A C job: ``run_job``.)"""
    import trio

    ticket = job.ticket
    abort = _abort_failed
    if ticket is not None:

        def abort(_: Any) -> Any:
            ticket.abandon()  # a job still waiting for its turn gives up meanwhile
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
            await _undo_trio(undo, result)
        raise
    return result


async def _undo_trio(undo: Callable[[Any], object], result: Any) -> None:
    import trio

    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await _run_trio(undo, (result,), None, True)  # see _undo_asyncio


# -- jobs of the C core ----------------------------------------------------------------------
#
# A map, unmap or persist of the async API is begun on the event loop's thread by one C call
# (admission without waiting, the checks, the claim), which also hands its syscalls to the
# executor; the executor's workers never take the GIL. The finished job waits in the loop's
# ``Port`` (an eventfd, written once per batch) until the loop drains it: the commit runs there,
# then the task resumes. A begin that would have to wait at the gate returns C_WOULD_BLOCK and
# the caller takes the blocking path (``run_blocking``) instead.

_asyncio_job_ports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobPort] = (
    weakref.WeakKeyDictionary()
)
#: Every port alive (each holds an eventfd while its event loop lives).
ports: weakref.WeakSet[JobPort] = weakref.WeakSet()


def _asyncio_job_port(loop: asyncio.AbstractEventLoop) -> JobPort:
    """The loop's port, made on first use. It reaches the loop only weakly (the loop holds
    it, through its reader): a loop that is gone takes its port and eventfd with it. The C
    prologue keeps the last one used, weakly."""
    port = _asyncio_job_ports.get(loop)
    if port is None:
        port = JobPort("job", _weakly(loop, "call_soon"))
        ports.add(port)
        loop.add_reader(port.fileno(), port.drain)
        _asyncio_job_ports[loop] = port
    return port


_states, _scope_type, _state_type = _anyio_task_states()
aio_configure(_get_running_loop, current_task, _states, _asyncio_job_port, _scope_type, _state_type)


async def cancelled_job(
    loop: asyncio.AbstractEventLoop,
    job: Any,
    undo: Callable[[Any], object] | None,
    check: Callable[[Any], Any],
) -> None:
    """The caller of a C job awaited itself was cancelled (the job's cancel() woke it, or the
    cancellation came in at the await once the job was delivered): never abandon the job. Wait
    for it shielded (a plain task.cancel() meanwhile is absorbed too, as in
    ``_cancelled_asyncio``), then its result is checked (an error of the job wins) and undone;
    the caller then lets the cancellation continue."""
    with anyio.CancelScope(shield=True):
        while not job.delivered:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        result = check(job.outcome())
        if undo is not None:
            await _undo_asyncio(loop, undo, result)


#: Functions that begin a job and wait for it (see _protect_from_ki): run_job, run_blocking,
#: and the callers with run_job's tail inline.
_ki_protected: list[Callable[..., Any]] = []


def ki_protected(fn: F) -> F:
    """Mark ``fn`` (a coroutine function that begins a job and waits for it) to be protected
    from KeyboardInterrupt under trio (see _protect_from_ki)."""
    _ki_protected.append(fn)
    return fn


def _protect_from_ki(trio: Any) -> None:
    """Under trio, a KeyboardInterrupt from a signal must not land between the submission of a
    job and the wait for it: the task would be gone when the job's delivery reschedules it.
    Trio defers it out of KI-protected code (to the main task's next checkpoint), and the
    waits here cannot be interrupted anyway (Abort.FAILED). Registering a function is idempotent
    and costs nothing per call."""
    for fn in (run_job, run_blocking, _run_job_trio, *_ki_protected):
        trio.lowlevel.enable_ki_protection(fn)


#: Set on the first use under trio (trio is imported lazily): trio.lowlevel, and the RunVar
#: that holds each run's port (it goes with its run: the run's pump closes it at the end).
_trio_lowlevel: Any = None
_trio_port_var: Any = None


def _always_due(task: Any) -> bool:
    return True


#: Whether a checkpoint would raise in the trio task now (set up with the rest: _trio_due).
_trio_cancel_due: Callable[[Any], bool] = _always_due


def _trio_due(lowlevel: Any) -> Callable[[Any], bool]:
    """A plain function that tells whether trio's ``checkpoint_if_cancelled()`` would raise in
    ``task`` (trio's own test: the task's cancel status, or a KeyboardInterrupt pending for the
    main task), without making and awaiting a coroutine. When it says no, it counts the cancel
    point as trio does (``trio.testing.assert_checkpoints`` reads the count). Where trio's
    layout is not the one known here, it always says yes (the real checkpoint then decides)."""
    try:
        task = lowlevel.current_task()
        runner = task._runner
        if not (
            type(task._cancel_status.effectively_cancelled) is bool
            and type(runner.ki_pending) is bool
            and type(task._cancel_points) is int
            and runner.main_task is not None
        ):
            raise LookupError
    except Exception:  # another trio
        return _always_due

    def due(task: Any) -> bool:
        if task._cancel_status.effectively_cancelled:
            return True
        runner = task._runner
        if runner.ki_pending and task is runner.main_task:
            return True
        task._cancel_points += 1
        return False

    return due


_trio_setup_lock = threading.Lock()


#: A trio port's ``how`` (set up with the rest): ("trio", reschedule, the WaitTaskRescheduled
#: message, CancelShieldedCheckpoint) where trio's layout is the one known here (each job is
#: then awaited itself, begun by the C prologue); else (reschedule, outcome.Value).
_trio_how: Any = None


def _trio_self_await(lowlevel: Any) -> tuple[Any, ...] | None:
    """What a job awaited itself on trio needs, checked against the running trio (called in a
    task of a run): its run context (the running task, and the runner with the RunVars'
    values), the messages a task yields to wait and to yield, and the classes of its tasks,
    cancel statuses and runner (whose slots the C prologue reads directly); None where trio's
    layout is not the one known here. (What is not checked here is trio's resume protocol: that the
    value given to ``reschedule`` reaches ``coro.send`` as it is, and that a
    CancelShieldedCheckpoint is told by identity; both hold for every trio this supports.)"""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT
        from trio._core._traps import CancelShieldedCheckpoint, WaitTaskRescheduled

        task = lowlevel.current_task()
        if not (
            GLOBAL_RUN_CONTEXT.task is task
            and task._runner is GLOBAL_RUN_CONTEXT.runner
            and type(task._runner._locals) is dict
            and WaitTaskRescheduled(_abort_failed).abort_func is _abort_failed
            and type(task) is lowlevel.Task
        ):
            raise LookupError
    except Exception:  # another trio
        return None
    classes = (lowlevel.Task, type(task._cancel_status), type(task._runner))
    return GLOBAL_RUN_CONTEXT, WaitTaskRescheduled(_abort_failed), CancelShieldedCheckpoint, classes


def _trio_setup() -> Any:
    """Once per process (trio runs in two threads may start together): the RunVar is made
    once, and published after trio.lowlevel, which the callers read once they see it. Called
    in a task of a run."""
    global _trio_lowlevel, _trio_port_var, _trio_cancel_due, _trio_how
    with _trio_setup_lock:
        if _trio_port_var is None:
            import outcome
            import trio

            lowlevel = trio.lowlevel
            _protect_from_ki(trio)
            _trio_cancel_due = _trio_due(lowlevel)
            var: Any = lowlevel.RunVar("aiopmem job port")
            known = _trio_self_await(lowlevel)
            if known is not None and _trio_cancel_due is not _always_due:
                context, wait, yield_, classes = known
                _trio_how = ("trio", lowlevel.reschedule, wait, yield_)
            else:
                _trio_how = (lowlevel.reschedule, outcome.Value)
            _trio_lowlevel = lowlevel
            _trio_port_var = var
            if len(_trio_how) == 4:  # last: the C prologue may make a port at once
                aio_configure_trio(context, var, _trio_job_port, *classes)
        return _trio_port_var


def _trio_job_port() -> JobPort:
    """The run's port, made on first use with the system task that drains it."""
    lowlevel = _trio_lowlevel
    token = lowlevel.current_trio_token()
    port = JobPort(_trio_how, _weakly(token, "run_sync_soon"))
    ports.add(port)
    lowlevel.spawn_system_task(_pump, port, name="aiopmem job completions")
    _trio_port_var.set(port)
    return port


async def _pump(port: JobPort) -> None:
    """Trio's side of a port: drain it whenever its eventfd is readable (a system task, so
    KeyboardInterrupt never lands in a drain; it ends with the run, when no task can wait)."""
    import trio

    fd = port.fileno()
    wait_readable = trio.lowlevel.wait_readable
    try:
        while True:
            await wait_readable(fd)
            port.drain()
    finally:
        trio.lowlevel.notify_closing(fd)
        port.close()


async def run_job(
    begin: Callable[..., Any],
    args: tuple[Any, ...],
    check: Callable[[Any], Any],
    undo: Callable[[Any], object] | None = None,
    always: bool = False,
) -> Any:
    """``begin(port, waiter, *args)`` and wait for the job it submitted; returns
    ``check(result)`` of the job's committed result (``check`` raises what a code stands for),
    or what ``begin`` returned instead of a job (an int code or a tuple: nothing began).

    Cancellation as ``run_blocking``: a caller cancelled before the call begins nothing (unless
    ``always``); a begun job is always waited for, and when the caller was cancelled by then,
    ``check`` still runs (an error of the job wins), its value is given to ``undo`` and the
    cancellation propagates.
    """
    # One C call: the loop (on trio: the run), the task, the check for a due cancellation, the
    # port, the begin. None: not a task of either, or a cancellation due: decided below.
    job = aio_begin(begin, args, always)
    if job is None:
        loop = _get_running_loop()
        if loop is None or (current_task(loop) is None and _trio_guest()):  # trio
            return await _run_job_trio(begin, args, check, undo, always)
        if not always and cancel_due(current_task(loop)):
            await checkpoint_if_cancelled()
        job = begin(_asyncio_job_port(loop), loop, *args)
    if type(job) is not _Job:
        if job != C_WOULD_BLOCK:
            await anyio.lowlevel.checkpoint()
        return job
    # The job is awaited itself (see Port "job"): the port's drain wakes the task, and the
    # await returns the committed result. On asyncio, a cancellation wakes the task at once
    # (the job's cancel()); cancelled_job then waits for the job, shielded. On trio nothing
    # interrupts the wait (its abort fails).
    try:
        result = await job
    except asyncio.CancelledError:
        await cancelled_job(job.waiter, job, undo, check)
        raise
    result = check(result)
    # A cancellation due while the job ran but not delivered yet (the result may reach the
    # task first: the order of the loop's callbacks decides, and uvloop's differs from
    # asyncio's; on trio, always) is taken here: the result is undone (if it can be) and the
    # cancellation propagates.
    if cancel_due(job.task):
        await late_cancel(job, undo, result)
    return result


async def _run_job_trio(
    begin: Callable[..., Any],
    args: tuple[Any, ...],
    check: Callable[[Any], Any],
    undo: Callable[[Any], object] | None,
    always: bool,
) -> Any:
    """run_job on trio where the C prologue did not begin the job: the first job of the
    process under trio (which sets the prologue up), a cancellation due, or a trio whose
    layout is not the one known here (its jobs are then waited for with
    ``wait_task_rescheduled``)."""
    var = _trio_port_var
    if var is None:
        var = _trio_setup()
    lowlevel = _trio_lowlevel
    task = lowlevel.current_task()
    due = _trio_cancel_due
    if not always and due(task):
        await lowlevel.checkpoint_if_cancelled()
    port = var.get(None)
    if port is None:
        port = _trio_job_port()
    job = begin(port, task, *args)
    if type(job) is not _Job:
        if job != C_WOULD_BLOCK:
            await lowlevel.checkpoint()
        return job
    if len(port.how) == 4:  # awaited itself
        result = check(await job)
    else:  # _await_trio, inline, for a job without a ticket (it never waits at the gate)
        if job.delivered:  # by the caller's wait (see op_wait): still a schedule point
            await lowlevel.cancel_shielded_checkpoint()
        else:
            await lowlevel.wait_task_rescheduled(_abort_failed)
        result = check(job.outcome())
    if due(task):
        await _trio_late_cancel(undo, result)
    return result


async def _trio_late_cancel(undo: Callable[[Any], object] | None, result: Any) -> None:
    """trio's checkpoint after a job whose task is to be cancelled; if it raises (a
    cancellation, or KeyboardInterrupt for the main task), ``result`` is undone first."""
    try:
        await _trio_lowlevel.checkpoint_if_cancelled()
    except BaseException:
        if undo is not None:
            await _undo_trio(undo, result)
        raise


async def late_cancel(job: Any, undo: Callable[[Any], object] | None, result: Any) -> None:
    """After a job whose task ``cancel_due`` says is to be cancelled: the checkpoint, and if it
    raises, ``result`` undone (shielded) before the cancellation propagates."""
    if job.waiter is job.task:  # trio's (an asyncio job's waiter is its loop)
        await _trio_late_cancel(undo, result)
        return
    try:
        await checkpoint_if_cancelled()
    except asyncio.CancelledError:
        if undo is not None:
            with anyio.CancelScope(shield=True):
                await _undo_asyncio(job.waiter, undo, result)
        raise


async def run_mem(rsv: Any, args: tuple[Any, ...], what: str, whole: Any = None) -> Any:
    """A memory operation of the core reservation ``rsv`` (``args``: what ``_mem`` takes) as a
    job of the executor, or in a worker when it would wait (at the gate, or for a change of
    the mapping in flight); returns read()'s bytes or None. ``whole``: the core reservation
    when the operation covers a range of it (for the error's offset)."""

    def check(r: Any) -> Any:
        return mem_outcome(r, what, whole)

    r = await run_job(rsv._mem_job, args, check)
    if r is None or type(r) is bytes:
        return r
    if r == C_WOULD_BLOCK:
        r = await run_blocking(rsv._mem, *args)
    return check(r)
