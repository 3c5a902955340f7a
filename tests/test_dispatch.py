"""Running core calls for the async API (``_async/_dispatch.py`` and ``_async/_workers.py``):
the worker pool, the delivery of outcomes to event loops (asyncio, trio, trio as an asyncio
guest), cancellation while a job runs and the undo of its result; stress tests with several
event loops, threads, slow jobs and errors guard the pool's guarantees as a whole."""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import threading
import time
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem._async import _workers
from aiopmem._async._dispatch import run_blocking
from aiopmem.testing import inject

A = aiopmem.ALIGNMENT
ASYNCIO_BACKENDS = [
    pytest.param({"use_uvloop": False}, id="asyncio"),
    pytest.param({"use_uvloop": True}, id="uvloop"),
]


def _direct_port(done: threading.Event) -> _workers.Port:
    """A port without an event loop: the worker delivers in place and sets ``done``."""
    return _workers.Port(lambda callback: callback(), lambda job: done.set())


def _check_pool_counters(pool: _workers._Pool) -> None:
    """No job running or queued, and no counted worker that does not exist, once the workers
    have come back from their last jobs (a worker uncounts itself a moment after its job's
    outcome is delivered: on a loaded machine that moment can be long)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            _pool_at_rest(pool)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _pool_at_rest(pool: _workers._Pool) -> None:
    with pool._lock:
        assert pool._running == 0 and not pool._busy and not pool._queue
        alive = sum(t.name.startswith("aiopmem-worker-") for t in threading.enumerate())
        # A worker retiring has already uncounted itself; one counted but dead is a phantom
        # that submit() takes for "about to look at the queue" forever.
        assert 0 <= pool._idle + pool._spare <= pool._threads <= alive


# -- the pool survives what it cannot control ----------------------------------------------------


def test_worker_survives_delivery_to_a_closed_loop() -> None:
    """The loop of a job in flight is closed: handing the outcome over fails. Before the fix the
    worker thread died of the RuntimeError while still counted, every later submit() took it
    for a worker about to look at the queue, and every later job in the process stranded
    (uncancellable on asyncio: the caller waits shielded for its job)."""
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    loop = asyncio.new_event_loop()
    task = loop.create_task(run_blocking(blocker))
    loop.run_until_complete(asyncio.sleep(0))  # the task submits its job
    assert started.wait(10)
    loop.close()  # the job is still running
    release.set()

    probe = threading.Event()
    _workers.submit(_workers.Job(int, (), _direct_port(probe)))
    assert probe.wait(10), "a job submitted after the failed delivery never ran"
    _check_pool_counters(_workers._pool)
    del task


class _NoThread:
    """A thread type whose threads cannot start ("can't start new thread")."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_failed_thread_start_leaves_no_phantom_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a worker thread fails ("can't start new thread"). Before the fix the pool
    counted the thread anyway: the failed job stayed queued behind a phantom worker and every
    later job stranded."""
    pool = _workers._Pool()

    monkeypatch.setattr(pool, "_thread_type", _NoThread)  # what the pool starts workers with
    lost = threading.Event()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        pool.submit(_workers.Job(int, (), _direct_port(lost)))
    assert pool._threads == 0 and not pool._queue  # refused whole: nothing will run it
    monkeypatch.undo()

    ran = threading.Event()
    pool.submit(_workers.Job(int, (), _direct_port(ran)))
    assert ran.wait(10)
    assert not lost.is_set()


def test_failed_spare_start_with_a_running_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a worker running, a submit() whose spare cannot be started still queues its job:
    the running worker takes it when done. Before the fix submit() raised (the job ran anyway,
    its caller gone) and a phantom worker stayed counted."""
    pool = _workers._Pool()
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    first, second = threading.Event(), threading.Event()
    pool.submit(_workers.Job(blocker, (), _direct_port(first)))
    assert started.wait(10)

    monkeypatch.setattr(pool, "_thread_type", _NoThread)  # what the pool starts workers with
    pool.submit(_workers.Job(int, (), _direct_port(second)))  # no raise: it is queued
    monkeypatch.undo()
    assert pool._threads == 1
    release.set()
    assert first.wait(10) and second.wait(10)


# -- event loops are not kept alive by the pool --------------------------------------------------


def test_event_loops_are_not_kept_alive() -> None:
    """Each loop's port was the value of a weak-keyed entry and held the loop (or the trio
    token) through its bound ``call_soon_threadsafe``/``run_sync_soon``: every event loop
    that ever used aiopmem stayed in memory for good."""
    loops: list[weakref.ref[object]] = []

    async def on_asyncio() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await run_blocking(int)

    async def on_trio() -> None:
        import trio

        loops.append(weakref.ref(trio.lowlevel.current_trio_token()))
        await run_blocking(int)

    for _ in range(3):
        anyio.run(on_asyncio, backend="asyncio")
        anyio.run(on_asyncio, backend="asyncio", backend_options={"use_uvloop": True})
        anyio.run(on_trio, backend="trio")
    gc.collect()
    alive = [r() for r in loops if r() is not None]
    assert not alive, alive


# -- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ASYNCIO_BACKENDS)
def test_second_native_cancel_does_not_abandon_the_map(options: dict[str, Any]) -> None:
    """A plain ``task.cancel()`` (asyncio.timeout, a TaskGroup's abort...) while the cancelled
    map already waits for its job: anyio's shield does not stop it. Before the fix the wait was
    abandoned, the map completed with nobody to undo it, and the mapping stayed."""

    async def main() -> None:
        async with aiopmem.reserve(16 * A) as rsv:
            with inject("mmap", delay=0.3) as inj:
                task = asyncio.ensure_future(rsv.map_anonymous(0, A))
                # the mmap is running (slowed) in a worker; inj.fired is counted in that thread,
                # with no event to wait for: polling it is deliberate
                while not inj.fired:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                task.cancel()
                await asyncio.sleep(0)  # the task now waits shielded for its job
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            # The map was undone before the cancellation reached us: the range is free.
            assert rsv.mappings() == []
            m = await rsv.map_anonymous(0, A)
            await m.unmap()

    anyio.run(main, backend="asyncio", backend_options=options)


def test_trio_guest_run_on_asyncio() -> None:
    """trio in guest mode on an asyncio loop: the asyncio loop is running, but the caller is a
    trio task. Before the fix every call took the asyncio path and trio got a Future:
    ``TypeError: trio.run received unrecognized yield message``."""
    trio = pytest.importorskip("trio")

    async def trio_main() -> int:
        async with aiopmem.reserve(16 * A) as rsv:
            m = await rsv.map_anonymous(0, A)
            m.view()[:1] = b"x"
            await m.unmap()
            with trio.move_on_after(0.01), inject("mmap", delay=0.05):
                await rsv.map_anonymous(0, A)  # cancelled: undone
            assert rsv.mappings() == []
        return await run_blocking(pow, 3, 2)

    async def host() -> Any:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
            host_uses_signal_set_wakeup_fd=False,
        )
        return await done

    assert asyncio.run(host()).unwrap() == 9


# -- stress: several event loops, threads, slow jobs, errors and cancellations -----------------


def test_pool_under_mixed_loops_cancellations_and_errors() -> None:
    """asyncio, uvloop and trio loops in three threads share the pool: random slow jobs,
    failing jobs and cancellations. Every job runs at most once, a cancelled caller's result is
    undone exactly once, and the pool's counters come back to rest."""
    runs: collections.Counter[tuple[str, int]] = collections.Counter()
    undone: collections.Counter[tuple[str, int]] = collections.Counter()
    returned: set[tuple[str, int]] = set()
    succeeded: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def job(key: tuple[str, int], delay: float, fail: bool) -> tuple[str, int]:
        with lock:
            runs[key] += 1
        if delay:
            time.sleep(delay)
        if fail:
            raise KeyError(key)
        with lock:
            succeeded.add(key)
        return key

    def undo(key: tuple[str, int]) -> None:
        with lock:
            undone[key] += 1

    async def one(name: str, i: int) -> None:
        rnd = random.Random(f"{name}{i}")
        key = (name, i)
        delay = rnd.choice([0.0] * 6 + [0.001, 0.004])
        fail = rnd.random() < 0.1
        with anyio.move_on_after(rnd.choice([5.0, 5.0, 0.0005, 0.003])):
            try:
                assert await run_blocking(job, key, delay, fail, undo=undo) == key
            except KeyError:
                return
            with lock:
                returned.add(key)

    async def main(name: str) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(400):
                tg.start_soon(one, name, i)
                if i % 25 == 0:
                    await anyio.lowlevel.checkpoint()

    failures: list[BaseException] = []

    def run(name: str, backend: str, options: dict[str, Any]) -> None:
        try:
            anyio.run(main, name, backend=backend, backend_options=options)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=("asyncio", "asyncio", {})),
        threading.Thread(target=run, args=("uvloop", "asyncio", {"use_uvloop": True})),
        threading.Thread(target=run, args=("trio", "trio", {})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert set(runs.values()) <= {1}  # no job ran twice
    # A result reached its caller, or (the caller cancelled meanwhile) was undone, exactly once.
    assert set(undone.values()) <= {1}
    assert returned.isdisjoint(undone)
    assert returned | set(undone) == succeeded
    _check_pool_counters(_workers._pool)


async def _churn(rsv: aiopmem.Reservation, base: int, rounds: int, seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(rounds):
        off = base + rnd.randrange(8) * A
        with anyio.move_on_after(rnd.choice([1.0, 1.0, 0.0002, 0.001])):
            try:
                async with rsv.map_anonymous(off, A) as m:
                    m.view()[:1] = b"x"
                    await m.persist()
            except aiopmem.MappingExistsError:
                pass


async def _churn_sync_via_pool(core: Any, base: int, rounds: int, seed: int) -> None:
    """The same through ``rsv.sync`` from another event loop, offloaded with the pool."""
    rnd = random.Random(seed)
    for _ in range(rounds):
        off = base + rnd.randrange(8) * A
        with anyio.move_on_after(rnd.choice([1.0, 1.0, 0.0002, 0.001])):
            try:
                m = await run_blocking(core.map_anonymous, off, A, undo=_unmap)
            except aiopmem.MappingExistsError:
                continue
            try:
                await run_blocking(m.persist)
            finally:
                await run_blocking(m.unmap, always=True)


def _unmap(m: Any) -> None:
    m.unmap()


def test_one_reservation_from_several_loops_and_threads() -> None:
    """One reservation used at once by tasks of an asyncio loop (its async API), by a trio
    loop in another thread (``rsv.sync`` offloaded through the same pool) and by two plain
    threads (``rsv.sync``), with slowed mmaps and random cancellations: nothing leaks, no
    claim is left behind, the gates are at rest and the kernel agrees."""
    failures: list[BaseException] = []
    ready = threading.Event()
    holder: list[aiopmem.Reservation] = []

    def trio_thread() -> None:
        async def main() -> None:
            core = holder[0].sync
            async with anyio.create_task_group() as tg:
                for k in range(4):
                    tg.start_soon(_churn_sync_via_pool, core, 16 * A, 40, 20 + k)

        try:
            assert ready.wait(10)
            anyio.run(main, backend="trio")
        except BaseException as exc:
            failures.append(exc)

    def plain_thread(base: int, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            assert ready.wait(10)
            core = holder[0].sync
            for _ in range(150):
                off = base + rnd.randrange(8) * A
                try:
                    with core.map_anonymous(off, A) as m:
                        m.persist()
                except aiopmem.MappingExistsError:
                    pass
        except BaseException as exc:
            failures.append(exc)

    async def asyncio_main() -> None:
        async with aiopmem.reserve(64 * A) as rsv:
            holder.append(rsv)
            ready.set()
            async with anyio.create_task_group() as tg:
                for k in range(4):
                    tg.start_soon(_churn, rsv, 0, 40, 10 + k)
            for t in threads:  # the others still use the reservation: keep it open
                await anyio.to_thread.run_sync(t.join, 60)
            assert rsv.mappings() == []
            core = rsv.sync
            assert core._gate_state()[5] == 0  # no claim left behind either
            kernel.assert_gate_at_rest(core)
            kernel.assert_matches_kernel(rsv)

    threads = [
        threading.Thread(target=trio_thread),
        threading.Thread(target=plain_thread, args=(32 * A, 3)),
        threading.Thread(target=plain_thread, args=(48 * A, 4)),
    ]
    for t in threads:
        t.start()
    with inject("mmap", delay=0.0005, times=400):
        anyio.run(asyncio_main, backend="asyncio")
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures


@pytest.mark.anyio
async def test_cancelled_map_whose_undo_fails_still_delivers_the_cancellation() -> None:
    """A map is cancelled; before its undo (the unmap) runs, another thread finds the new
    mapping and takes a view, so the unmap fails with BufferError. Before the fix that
    BufferError escaped instead of the cancellation (out of move_on_after!). Now the
    cancellation wins and the mapping, which someone is using, stays in the reservation.

    Deterministic: a front shrink from a third thread registers while the map's mmap is slowed,
    so the undo (a shared operation) is admitted only after the shrink, whose munmap is slowed
    too: the view is taken well before."""
    async with aiopmem.reserve(16 * A) as rsv:
        core = rsv.sync
        views: list[memoryview] = []
        errors: list[BaseException] = []

        def shrink_then_grab(inj: Any) -> None:
            try:
                while not inj.fired:  # the map's mmap is in flight
                    time.sleep(0.001)
                grabber = threading.Thread(target=grab)
                grabber.start()
                core.shrink(0, A)  # waits for the map, then holds the gate for 0.3 s
                grabber.join()
            except BaseException as exc:
                errors.append(exc)

        def grab() -> None:
            while (m := core.find(A)) is None:
                time.sleep(0.0005)
            views.append(m.view())

        with (
            inject("mmap", delay=0.3) as inj,
            inject("munmap", delay=0.3),
            anyio.move_on_after(0.05) as scope,
        ):
            thread = threading.Thread(target=shrink_then_grab, args=(inj,))
            thread.start()
            try:
                await rsv.map_anonymous(A, A)
            finally:
                await anyio.to_thread.run_sync(thread.join)
        assert not errors, errors
        assert scope.cancelled_caught
        assert len(views) == 1
        assert [m.offset for m in rsv.mappings()] == [0]  # kept: someone uses it
        views.clear()
