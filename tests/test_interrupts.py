"""Asynchronous exceptions (API.md v1.1, "Liveness, interrupts"): a KeyboardInterrupt arriving
anywhere inside a call leaves the reservation consistent, and every later call, close()
included, works; nothing leaks.

The sweep: a trace function raises KeyboardInterrupt at the k-th line the library executes
during one public call, for every k until the call runs to its end; after each interrupted
call the reservation must agree with the kernel, a mapping must exist entirely or not at all,
no file descriptor may be left open, and new maps, an extend and close() must work (close()
runs in a thread, so a torn gate shows as a hang, not a stuck suite).

Why it holds: every transition is one C call (``_ffi/_core.c``), so the trace function (like a
signal handler) can only run before it, when nothing has changed, or after it, when it is
complete; descriptors the library opens close when their owner dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import aiopmem
import kernel
from aiopmem.sync import Advice, Protection, Reservation, Sharing, reserve
from reliability import TALLY
from sizes import P

LIBRARY = str(Path(aiopmem.__file__).resolve().parent)

#: Every line is swept on the default interpreter (make test); CI's runs on the other
#: interpreters (AIOPMEM_MATRIX=1) sweep every other line, to fit CI's time budget.
STRIDE = 2 if os.environ.get("AIOPMEM_MATRIX") else 1


#: Library functions no KeyboardInterrupt can reach: ``__del__`` (an exception there is only
#: reported, not the subject) and ``_pump``, trio's side of a job port, which runs as a trio
#: system task (trio defers a SIGINT's KeyboardInterrupt there to the main task).
SHELTERED = frozenset({"__del__", "_pump"})


class Interrupt:
    """A trace function raising KeyboardInterrupt at the k-th library line it sees."""

    def __init__(self, k: int, ki_protection: Callable[[], bool] | None = None) -> None:
        self.k = k
        self.seen = 0
        self.fired = False
        self.ki_protection = ki_protection

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(LIBRARY) or code.co_name in SHELTERED:
            return None
        if self.ki_protection is not None and self.ki_protection():
            return self  # trio defers a signal's KeyboardInterrupt out of protected code
        if event == "line" and not self.fired:
            self.seen += 1
            if self.seen == self.k:
                self.fired = True
                raise KeyboardInterrupt
        return self


def interrupted_at(
    k: int, call: Callable[[], object], ki_protection: Callable[[], bool] | None = None
) -> bool:
    """Run ``call`` with an interrupt at its k-th library line; whether it fired. With
    ``ki_protection`` (trio's ``currently_ki_protected``), lines a signal's KeyboardInterrupt
    cannot reach under trio are not counted."""
    tracer = Interrupt(k, ki_protection)
    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt:
        pass
    except Exception:  # the call's own error (e.g. BufferError) is a valid outcome
        pass
    finally:
        sys.settrace(None)
    return tracer.fired


def still_works(rsv: Reservation, fds: set[int]) -> None:
    gc.collect()  # what the interrupted call dropped (a Source, a view) is gone now
    assert kernel.open_fds() == fds, "a file descriptor leaked"
    kernel.assert_matches_kernel(rsv)
    for m in rsv.mappings():  # listed means mapped, entirely
        assert not m.closed
        assert kernel.coverage(m.address, m.address + P)[0][2].perms != "---p", m
    done = threading.Event()
    errors: list[BaseException] = []

    def use_and_close() -> None:
        try:
            rsv.map_anonymous(12 * P, P).unmap()
            rsv.extend(P)
            rsv.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=use_and_close, daemon=True).start()
    assert done.wait(2), "the reservation hangs after an interrupted call"
    assert not errors, errors
    assert rsv.closed


def _setup(tmp_path: Path) -> tuple[Reservation, aiopmem.sync.Mapping, Path]:
    path = tmp_path / "f"
    path.write_bytes(b"f" * 4 * P)
    rsv = reserve(16 * P)
    m = rsv.map_anonymous(0, P)
    return rsv, m, path


CALLS: dict[str, Callable[[Reservation, Any, Path], object]] = {
    "map_anonymous": lambda rsv, m, path: rsv.map_anonymous(4 * P, P),
    "map_file": lambda rsv, m, path: rsv.map_file(path, 4 * P),
    "map_file (read-only, private)": lambda rsv, m, path: rsv.map_file(
        path, 4 * P, length=2 * P, protection=Protection.READ, sharing=Sharing.PRIVATE
    ),
    "map_file (open descriptor)": lambda rsv, m, path: _map_fd(rsv, path),
    "map over a mapping (refused)": lambda rsv, m, path: rsv.map_anonymous(0, P),
    "unmap": lambda rsv, m, path: m.unmap(),
    "persist": lambda rsv, m, path: m.persist(),
    "extend": lambda rsv, m, path: rsv.extend(P),
    "shrink": lambda rsv, m, path: rsv.shrink(rsv.size - P, P),
    "close": lambda rsv, m, path: rsv.close(),
    "view": lambda rsv, m, path: m.view(),
    "reservation view": lambda rsv, m, path: rsv.view(0, P),
    "persist of a file mapping": lambda rsv, m, path: _persist_file(rsv, path),
    "shrink of the front": lambda rsv, m, path: _shrink_front(rsv),
    "unmap with a view alive (refused)": lambda rsv, m, path: _unmap_pinned(m),
    "write": lambda rsv, m, path: m.write(0, b"abc"),
    "read_into": lambda rsv, m, path: m.read_into(bytearray(8), 8),
    "reservation write": lambda rsv, m, path: rsv.write(0, b"xyz"),
    "reservation read (not mapped: refused)": lambda rsv, m, path: rsv.read(0, 2 * P),
    "populate": lambda rsv, m, path: m.populate(),
    "advise": lambda rsv, m, path: m.advise(Advice.RANDOM),
    "protect": lambda rsv, m, path: m.protect(Protection.READ),
    "lock": lambda rsv, m, path: m.lock(),
    "map with populate": lambda rsv, m, path: rsv.map_file(path, 4 * P, populate=True),
    # (describe() is left out: it formats one C snapshot and changes nothing, and its many
    # lines made this sweep the suite's slowest, run on every interpreter of CI.)
    "lookups": lambda rsv, m, path: (
        rsv.find(0),
        rsv.find_next(m),
        rsv.find_prev(m),
        rsv.mappings(),
        rsv.holes,
        repr(rsv),
    ),
}


def _map_fd(rsv: Reservation, path: Path) -> None:
    with path.open("r+b") as f:
        rsv.map_file(f, 4 * P)


def _persist_file(rsv: Reservation, path: Path) -> None:
    m = rsv.find(8 * P) or rsv.map_file(path, 8 * P, length=P)
    m.persist()


def _shrink_front(rsv: Reservation) -> None:
    rsv.find(0).unmap()  # type: ignore[union-attr]
    rsv.shrink(0, P)


def _unmap_pinned(m: aiopmem.sync.Mapping) -> None:
    view = m.view()
    try:
        m.unmap()
    finally:
        view.release()


@pytest.mark.parametrize("name", list(CALLS))
def test_an_interrupt_at_any_line_leaves_the_reservation_usable(name: str, tmp_path: Path) -> None:
    call = CALLS[name]
    for k in range(1, 5000, STRIDE):
        rsv, m, path = _setup(tmp_path)
        fds = kernel.open_fds()
        try:
            fired = interrupted_at(k, partial(call, rsv, m, path))
            if not rsv.closed:
                still_works(rsv, fds)
            else:
                gc.collect()
                assert kernel.open_fds() == fds, "a file descriptor leaked"
        finally:
            if not rsv.closed:
                # Torn: its close() would wait forever, and so would the garbage collector
                # (__del__ closes) or the interpreter's exit. Abandon it, range and all.
                rsv._abandon()
        TALLY["interrupts: interrupted calls"] += fired
        if not fired:
            return  # the call ran to its end before the k-th line
    raise AssertionError("the call never ran to its end")


def _reserve_into(got: list[Reservation], size: int, addr: int | None) -> None:
    got.append(reserve(size, address=addr, max_size=size))


def _placeholder_bytes() -> int:
    return sum(v.end - v.start for v in kernel.vmas() if v.perms == "---p" and not v.inode)


@pytest.mark.parametrize("fixed", [False, True], ids=["anywhere", "at an address"])
def test_an_interrupt_inside_reserve_leaks_no_address_space(fixed: bool) -> None:
    """reserve() interrupted at any line: either no reservation exists, or the caller got it,
    or the object was dropped and released its range (with the ResourceWarning of an unclosed
    reservation); the range is never held by nobody."""
    size = 64 * P
    for k in range(1, 5000, STRIDE):
        addr = kernel.quiet_address(size) if fixed else None
        before = _placeholder_bytes()
        got: list[Reservation] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            fired = interrupted_at(k, partial(_reserve_into, got, size, addr))
            gc.collect()
        if got:
            assert not fired
            got.pop().close()
        if addr is not None:
            assert kernel.is_free(addr, addr + size), f"interrupted at line {k}: range still held"
        # Other placeholders (thread stacks' guards) may only have gone meanwhile.
        assert _placeholder_bytes() - before < size, f"interrupted at line {k}: range leaked"
        TALLY["interrupts: interrupted calls"] += fired
        if not fired:
            return
    raise AssertionError("the call never ran to its end")


class Storm(Exception):
    """Raised by the signal handler of the storm test."""


def test_a_signal_storm_never_tears_the_reservation(tmp_path: Path) -> None:
    """Real signals: SIGALRM every 200 us, whose handler raises in about half the cases where
    it interrupts library code, while the main thread maps, persists and unmaps and another
    thread loops extend+shrink (so the main thread also waits for admission, where signals
    are taken and the wait backs out). Afterwards every mapping listed is whole, the counts
    are at rest, and close() works."""
    import random
    import signal
    import time

    rng = random.Random(7)
    path = tmp_path / "f"
    path.write_bytes(b"s" * 4 * P)
    raised = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        while frame is not None and not frame.f_code.co_filename.startswith(LIBRARY):
            if frame.f_code.co_name == "body":
                break
            frame = frame.f_back
        if frame is not None and rng.random() < 0.5:
            raised += 1
            raise Storm

    rsv = reserve(64 * P)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            rsv.extend(P)
            rsv.shrink(rsv.size - P, P)

    def body() -> None:
        off = rng.randrange(8) * P
        try:
            m = rsv.map_file(path, off, length=P) if off % (2 * P) else rsv.map_anonymous(off, P)
        except aiopmem.sync.MappingExistsError:
            return
        m.persist()
        m.unmap()

    other = threading.Thread(target=churn, daemon=True)
    other.start()
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    ops = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                body()
                ops += 1
            except Storm:
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        other.join(10)
    assert raised > 20 and ops > 20, (raised, ops)
    TALLY["interrupts: raised by signal handlers"] += raised
    kernel.assert_gate_at_rest(rsv)
    for m in rsv.mappings():  # maps whose caller was interrupted after they were made
        m.unmap()
    still_works(rsv, kernel.open_fds())


#: An event loop stopped by an interrupt leaves objects of the backend (trio's nursery and
#: runner, an asyncio selector) whose finalizers complain when collected; those reports are
#: the backend's. One that passes through aiopmem's code still fails the test.
BACKEND_GARBAGE = pytest.mark.filterwarnings(
    "ignore:(?s)(?!.*aiopmem).*:pytest.PytestUnraisableExceptionWarning"
)


@BACKEND_GARBAGE
@pytest.mark.parametrize(
    ("backend", "options"),
    [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True}), ("trio", {})],
    ids=["asyncio", "uvloop", "trio"],
)
def test_ctrl_c_at_random_moments_of_async_calls(backend: str, options: dict[str, Any]) -> None:
    """Real Ctrl-C (SIGINT) at random moments while tasks of the async API map, persist,
    unmap, extend and shrink, one event loop run after another: each run ends with the
    KeyboardInterrupt, and afterwards, from a new event loop, every mapping listed unmaps and
    maps, extend and aclose() work (asyncio turns Ctrl-C into the cancellation of the main
    task; trio raises it in the main task; both must leave the library usable)."""
    import os
    import random
    import signal

    import anyio

    rng = random.Random(5)
    holder: list[aiopmem.Reservation] = []

    async def setup() -> None:
        holder.append(await aiopmem.reserve(64 * P))

    anyio.run(setup, backend=backend, backend_options=options)
    [rsv] = holder

    async def mapper() -> None:
        while True:
            try:
                m = await rsv.map_anonymous(rng.randrange(16) * P, P)
            except aiopmem.MappingExistsError:
                await anyio.lowlevel.checkpoint()
                continue
            await m.persist()
            await m.unmap()

    async def extender() -> None:
        while True:
            await rsv.extend(P)
            await rsv.shrink(rsv.size - P, P)

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(mapper)
            tg.start_soon(extender)

    outcomes: list[BaseException] = []
    for _ in range(25):
        timer = threading.Timer(rng.uniform(0.002, 0.03), os.kill, (os.getpid(), signal.SIGINT))
        try:  # (on a loaded machine the timer may fire even before Timer.start() returns)
            timer.start()
            anyio.run(body, backend=backend, backend_options=options)
        except BaseException as exc:  # KeyboardInterrupt, alone or in a group (trio)
            outcomes.append(exc)
        while timer.ident is not None and timer.is_alive():  # (never started: nothing to wait)
            # A signal that comes after the run ended is not the test's subject.
            with contextlib.suppress(KeyboardInterrupt):
                timer.join()
    # Python 3.10's asyncio.run can end such a run with the main task's CancelledError.
    expected = (
        (KeyboardInterrupt, asyncio.CancelledError) if backend == "asyncio" else KeyboardInterrupt
    )
    for outcome in outcomes:
        leaves = getattr(outcome, "exceptions", (outcome,))
        assert all(isinstance(e, expected) for e in leaves), outcome
    assert len(outcomes) >= 20
    TALLY["interrupts: Ctrl-C in async runs"] += len(outcomes)
    _still_works_async(rsv, backend, options, "after the interrupted runs")
    gc.collect()  # the backends' leftovers are reported here, not in a later test


ASYNC_CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "map_anonymous": lambda rsv, m: rsv.map_anonymous(4 * P, P),
    "unmap": lambda rsv, m: m.unmap(),
    "persist": lambda rsv, m: m.persist(),
    # One memory operation stands for all (they share run_mem); protect changes the mapping.
    "write": lambda rsv, m: m.write(0, b"abc"),
    "protect": lambda rsv, m: m.protect(Protection.READ),
    "map with populate": lambda rsv, m: rsv.map_anonymous(4 * P, P, populate=True),
    "extend": lambda rsv, m: rsv.extend(P),
    "aclose": lambda rsv, m: rsv.aclose(),
}


def _at_rest(rsv: aiopmem.Reservation) -> None:
    """Wait until no job of the reservation is in flight (an interrupted run does not wait
    for the job it submitted: the job still ends, in its worker)."""
    import time

    deadline = time.monotonic() + 5
    while rsv.sync._gate_state()[:4] != (0, False, 0, 0):
        assert time.monotonic() < deadline, "a job never ended"
        time.sleep(0.001)


async def _reserve_and_map() -> tuple[aiopmem.Reservation, aiopmem.Mapping]:
    rsv = await aiopmem.reserve(16 * P)
    return rsv, await rsv.map_anonymous(0, P)


async def _awaiting(call: Callable[[Any, Any], Any], rsv: Any, m: Any) -> None:
    await call(rsv, m)


def _still_works_async(
    rsv: aiopmem.Reservation, backend: str, options: dict[str, Any], when: str
) -> None:
    """From a new event loop (in a thread, so that a hang fails instead of sticking): unmap
    what is listed (mappings made for callers an interrupt stopped), map, extend, aclose."""
    import anyio

    errors: list[BaseException] = []

    async def go() -> None:
        with anyio.fail_after(5):
            for listed in rsv.mappings():
                await listed.unmap()
            new = await rsv.map_anonymous(12 * P, P)
            await new.unmap()
            await rsv.extend(P)
            await rsv.aclose()

    def run() -> None:
        try:
            anyio.run(go, backend=backend, backend_options=options)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        rsv.sync._abandon()
        raise AssertionError(f"{when}: the reservation hangs")
    assert not errors, (when, errors)
    assert rsv.closed


@BACKEND_GARBAGE
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("name", list(ASYNC_CALLS))
def test_an_interrupt_at_any_line_of_an_async_call(backend: str, name: str) -> None:
    """The sweep on the async API: KeyboardInterrupt at the k-th library line run on the event
    loop's thread during one call (the trace function is the loop thread's; the workers run
    the core). Afterwards, from a new event loop, the reservation agrees with the kernel and
    works: the call took effect entirely (a mapping is then listed) or not at all, and no lock
    of the worker pool was left held (every later call would hang)."""
    import anyio

    call = ASYNC_CALLS[name]
    protected = None
    if backend == "trio":
        import trio

        protected = trio.lowlevel.currently_ki_protected
    for k in range(1, 2000, STRIDE):
        rsv, m = anyio.run(_reserve_and_map, backend=backend)

        with warnings.catch_warnings():  # an interrupted call may leave an un-awaited Opening
            warnings.simplefilter("ignore", RuntimeWarning)
            fired = interrupted_at(
                k, partial(anyio.run, _awaiting, call, rsv, m, backend=backend), protected
            )
            gc.collect()
        _at_rest(rsv)
        if not rsv.closed:
            kernel.assert_matches_kernel(rsv.sync)
            _still_works_async(rsv, backend, {}, f"interrupted at line {k}")
        TALLY["interrupts: interrupted async calls"] += fired
        if not fired:
            gc.collect()  # the backends' leftovers are reported here, not in a later test
            return
    raise AssertionError("the call never ran to its end")
