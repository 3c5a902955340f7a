"""The executor behind the async API (``_ffi/_exec.h``) and the job ports (``_ffi/_core.c``):
worker threads that never take the GIL, one eventfd per event loop written once per batch,
a bounded pool whose idle workers retire, the rescue of jobs whose event loop stopped
draining, and a working executor in a forked child."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem._core._mapping import Mapping as CoreMapping
from aiopmem._ffi import C_WOULD_BLOCK, Port, executor_configure, executor_stats
from aiopmem.sync import Protection, Sharing
from aiopmem.testing import inject
from sizes import P

RW = Protection.READ | Protection.WRITE
_ANON_SHARED = 2


def _map_job(rsv: aiopmem.sync.Reservation, port: Port, offset: int) -> Any:
    """An anonymous one-page map of ``rsv`` at ``offset`` as a job of ``port``."""
    return rsv._map_job(
        port, None, CoreMapping, offset, P, 3, _ANON_SHARED, -1, 0, 0, RW, Sharing.SHARED, None,
        False,
    )  # fmt: skip


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, executor_stats()
        time.sleep(0.005)


def _wait_ran(n: int, timeout: float = 5.0) -> None:
    """Spin (holding the GIL: no call here releases it) until the executor has run ``n`` jobs."""
    deadline = time.monotonic() + timeout
    while executor_stats()["ran"] < n:
        assert time.monotonic() < deadline, "the executor did not run the job"


@contextmanager
def configured(**settings: Any) -> Iterator[None]:
    before = executor_stats()
    executor_configure(
        settings.get("max_workers"), settings.get("idle_exit"), settings.get("spin"),
        settings.get("wait"),
    )  # fmt: skip
    try:
        yield
    finally:
        executor_configure(
            before["max_workers"], before["idle_exit"], before["spin"], before["wait"]
        )


def test_a_job_runs_while_the_caller_never_lets_go_of_the_gil() -> None:
    """With a switch interval of 60 s, a worker that needed the GIL could not get it while this
    thread spins in Python: the job completing anyway shows the workers run without it."""
    done: list[Any] = []
    port = Port(done.append)
    with aiopmem.sync.reserve(4 * P) as rsv:
        before = executor_stats()["ran"]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(60)
        try:
            job = _map_job(rsv, port, P)
            _wait_ran(before + 1)
        finally:
            sys.setswitchinterval(interval)
        assert not job.delivered and not rsv.mappings()  # committed by the drain only
        port.drain()
        assert done == [job] and job.delivered
        m = job.outcome()
        assert isinstance(m, CoreMapping) and rsv.mappings() == [m]
        kernel.assert_matches_kernel(rsv)
        m.unmap()


def test_finished_jobs_wake_the_loop_once_per_batch() -> None:
    """Ten jobs finishing while their loop does not drain write the port's eventfd once (its
    counter is 1); one drain then commits and hands over all ten, in order."""
    done: list[Any] = []
    port = Port(done.append)
    # One worker: a spare (which takes a job that waited 2 ms, as on a loaded machine) would
    # finish jobs out of submission order.
    with configured(max_workers=1), aiopmem.sync.reserve(16 * P) as rsv:
        before = executor_stats()["ran"]
        jobs = [_map_job(rsv, port, i * P) for i in range(10)]
        _wait_ran(before + 10)
        (count,) = struct.unpack("Q", os.read(port.fd, 8))
        assert count == 1
        port.drain()
        assert done == jobs
        assert [m.offset for m in rsv.mappings()] == [i * P for i in range(10)]
        for m in rsv.mappings():
            m.unmap()


def test_a_long_batch_wakes_the_loop_before_it_ends() -> None:
    """The signal of a batch is held back for a few listed jobs only: with 20 slow jobs
    queued behind one worker, the eventfd is readable well before the last has run (the loop
    can resume the first tasks while the worker runs the rest)."""
    done: list[Any] = []
    port = Port(done.append)
    with configured(max_workers=1), aiopmem.sync.reserve(32 * P) as rsv:
        before = executor_stats()["ran"]
        with inject("mmap", delay=0.02, times=20):
            jobs = [_map_job(rsv, port, i * P) for i in range(20)]
            deadline = time.monotonic() + 5
            while not select.select([port.fd], [], [], 0.001)[0]:
                assert time.monotonic() < deadline
            ran_when_signaled = executor_stats()["ran"] - before
            _wait_ran(before + 20)
        assert 1 <= ran_when_signaled < 16, ran_when_signaled
        port.drain()
        _wait_for(lambda: len(done) == 20 or bool(select.select([port.fd], [], [], 0)[0]))
        port.drain()
        assert done == jobs
        for m in rsv.mappings():
            m.unmap()


def test_a_deferred_wake_up_whose_flush_never_comes_still_runs_the_jobs() -> None:
    """A port with a ``schedule`` defers the workers' wake-up for the jobs it submits while
    another of its jobs is in flight, to its flush (once per loop iteration). A loop that never
    runs the flush (it stopped) still gets every job run."""
    scheduled: list[Any] = []
    done: list[Any] = []
    port = Port(done.append, scheduled.append)
    with aiopmem.sync.reserve(16 * P) as rsv, configured(max_workers=1):
        before = executor_stats()["ran"]
        with inject("mmap", delay=0.3, times=1):
            jobs = [_map_job(rsv, port, 0)]  # the worker is busy with it
            time.sleep(0.05)
            jobs += [_map_job(rsv, port, i * P) for i in range(1, 4)]
        # Deferred (once for the batch) unless another worker was about to look anyway.
        assert len(scheduled) <= 1
        _wait_for(lambda: executor_stats()["ran"] >= before + 4, timeout=2.0)
        _wait_for(lambda: select.select([port.fd], [], [], 0)[0] != [], timeout=1.0)
        port.drain()
        assert sorted(map(id, done)) == sorted(map(id, jobs))  # (workers may finish out of order)
        for m in rsv.mappings():
            m.unmap()


def test_a_loop_that_stops_draining_never_holds_the_reservation() -> None:
    """A port nobody drains (its event loop stopped): the rescue commits its finished job, so
    the admission and the claim it held are given back and close() goes through."""
    port = Port(lambda job: None)
    rsv = aiopmem.sync.reserve(4 * P)
    rescued = executor_stats()["rescued"]
    job = _map_job(rsv, port, 0)
    t0 = time.monotonic()
    rsv.close()  # waits at the gate for the job's admission, which the rescue gives back
    assert time.monotonic() - t0 < 5
    assert executor_stats()["rescued"] == rescued + 1 and rsv.closed
    assert not job.delivered
    port.drain()  # late: the drain only hands the job over, it is not committed twice
    assert job.delivered and job.outcome().closed  # it was mapped, then closed with the rest


def test_jobs_listed_behind_a_rescued_one_are_rescued_too() -> None:
    """The port is never drained: a job finishing after an earlier one was rescued (the port's
    eventfd is still written) is rescued as well."""
    port = Port(lambda job: None)
    rsv = aiopmem.sync.reserve(4 * P)
    rescued = executor_stats()["rescued"]
    _map_job(rsv, port, 0)
    _wait_for(lambda: executor_stats()["rescued"] == rescued + 1)
    _map_job(rsv, port, P)
    _wait_for(lambda: executor_stats()["rescued"] == rescued + 2)
    rsv.close()
    port.drain()


def test_the_rescue_comes_while_another_job_is_stuck() -> None:
    """A 1.5 s msync occupies a worker: a job of an undrained port is rescued all the same,
    within a fraction of that time (the spare or an idle worker does it)."""
    port = Port(lambda job: None)
    with aiopmem.sync.reserve(4 * P) as rsv:
        m = rsv.map_anonymous(0, P)
        rescued = executor_stats()["rescued"]
        with inject("msync", delay=1.5, times=1):
            slow = rsv._persist_job(port, None, m, m.address, m.address + P)
            time.sleep(0.05)  # the msync is under way
            t0 = time.monotonic()
            _map_job(rsv, port, 2 * P)
            _wait_for(lambda: executor_stats()["rescued"] == rescued + 1)
            assert time.monotonic() - t0 < 1.0
            _wait_for(lambda: executor_stats()["rescued"] == rescued + 2)  # the msync's, later
        port.drain()
        assert not isinstance(slow, int) and slow.outcome() == 0
        for mapping in rsv.mappings():
            mapping.unmap()


def test_a_map_that_waited_at_the_gate_finds_room_in_the_index() -> None:
    """Two sync maps wait at the gate behind an extend while every bucket of the index is full:
    the room each made before waiting may have gone to the other, so it is made again once
    admitted (it crashed the process before). In a subprocess: a failure is a crash."""
    code = textwrap.dedent(
        """
        import threading, time
        import aiopmem.sync
        from aiopmem.testing import inject
        P = 4096
        rsv = aiopmem.sync.reserve(1 << 23, max_size=1 << 23)
        keep = []
        def mp(page):
            keep.append(rsv.map_anonymous(page * P, P))
        for i in range(256): mp(4 * i)            # one full bucket
        mp(4 * 256)                                # split: 128 | 129
        for i in range(127): mp(4 * i + 1)         # bucket 0: 255
        mp(2)                                      # bucket 0: 256
        for i in range(128, 255): mp(4 * i + 1)    # bucket 1: 256
        go = threading.Barrier(3)
        def later(page):
            go.wait(); time.sleep(0.2)
            keep.append(rsv.map_anonymous(page * P, P))
        ts = [threading.Thread(target=later, args=(p,)) for p in (3, 4 * 200 + 3)]
        for t in ts: t.start()
        with inject("mmap", delay=0.6, times=1):
            def ext():  # holds the gate through a slowed mmap (whether or not it succeeds)
                go.wait()
                try: rsv.extend(1 << 21)
                except aiopmem.sync.PmemError: pass
            e = threading.Thread(target=ext); e.start(); e.join()
        for t in ts: t.join()
        assert len(rsv.mappings()) == len(keep) == 514, len(keep)
        for m in keep: m.unmap()
        rsv.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_the_pool_is_bounded_and_idle_workers_retire() -> None:
    """With max_workers=2, four slow jobs (0.3 s each) run two at a time (slow jobs overlap,
    never more than the bound); 0.3 s after the work stops, the idle workers beyond the first
    have exited."""

    async def four_slow_maps() -> float:
        async with aiopmem.reserve(8 * P) as rsv:
            t0 = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(rsv.map_anonymous, i * P, P)
            return time.monotonic() - t0

    with configured(max_workers=2, idle_exit=0.1), inject("mmap", delay=0.3, times=4):
        retired = executor_stats()["retired"]
        elapsed = anyio.run(four_slow_maps)
        assert 0.6 <= elapsed < 1.15  # two waves of two: bounded, and overlapping
        assert executor_stats()["threads"] <= 2
        deadline = time.monotonic() + 3
        while executor_stats()["threads"] > 1:
            assert time.monotonic() < deadline, executor_stats()
            time.sleep(0.02)
        assert executor_stats()["retired"] > retired


def test_lowering_the_bound_retires_the_surplus_at_once() -> None:
    """Three workers busy with slow jobs, idle_exit far off: once max_workers drops to 1, the
    two beyond it exit as they come back from their jobs (not after idle_exit), and the one
    left still runs what comes next."""

    async def slow_maps(n: int) -> None:
        async with aiopmem.reserve(8 * P) as rsv, anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(rsv.map_anonymous, i * P, P)

    with configured(max_workers=3, idle_exit=60.0):
        with inject("mmap", delay=0.3, times=3):
            anyio.run(slow_maps, 3)
        assert executor_stats()["threads"] == 3
        with configured(max_workers=1):
            _wait_for(lambda: executor_stats()["threads"] == 1, timeout=2.0)
            before = executor_stats()["ran"]
            anyio.run(slow_maps, 4)
            assert executor_stats()["ran"] >= before + 4
            assert executor_stats()["threads"] == 1


def _eventfds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]":
                out.add(int(name))
    return out


def test_an_event_loop_that_is_gone_takes_its_port_with_it(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    """Each event loop (or trio run) gets a port with an eventfd. Once the loop is gone, so
    are the port and its eventfd: twenty runs, each with jobs in flight together (the
    deferred wake-up path) leave neither behind."""
    from aiopmem._async import _dispatch

    async def some_maps() -> None:
        async with aiopmem.reserve(16 * P) as rsv, anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(rsv.map_anonymous, i * P, P)

    backend, options = anyio_backend
    anyio.run(some_maps, backend=backend, backend_options=options)  # imports, first ports
    gc.collect()
    fds, live = _eventfds(), len(_dispatch.ports)
    for _ in range(20):
        anyio.run(some_maps, backend=backend, backend_options=options)
    gc.collect()
    assert len(_dispatch.ports) <= live
    assert _eventfds() <= fds


def test_configure_refuses_bad_settings() -> None:
    for bad in (
        (None, float("inf")),
        (0, None),
        (2000, None),
        (None, 0.0),
        (None, -1.0),
        (None, None, -1e-6),
        (None, None, 1.0),
        (None, None, float("nan")),
        (None, None, None, -1e-6),
        (None, None, None, 0.01),
        (None, None, None, float("nan")),
    ):
        with pytest.raises(ValueError):
            executor_configure(*bad)
    with pytest.raises(TypeError):
        executor_configure(None, None, "fast")  # type: ignore[arg-type]


def _one_task_maps(n: int) -> None:
    async def maps() -> None:
        async with aiopmem.reserve(4 * P) as rsv:
            for _ in range(n):
                m = await rsv.map_anonymous(0, P)
                await m.unmap()

    anyio.run(maps)


def test_a_worker_back_from_a_job_watches_the_queue_for_the_next() -> None:
    """One task awaiting map after unmap after map: with a watch of 5 ms, the worker back from
    a job is still watching when the next comes (counted as a hit: no wake-up was needed)."""
    with configured(spin=0.005):
        before = executor_stats()
        _one_task_maps(50)
        after = executor_stats()
    assert after["spins"] > before["spins"]
    assert after["spin_hits"] > before["spin_hits"]
    assert after["spin"] == before["spin"]  # restored


def test_no_watch_when_it_is_turned_off() -> None:
    with configured(spin=0.0):
        time.sleep(0.02)  # a watch begun before lasts 10 ms at most
        before = executor_stats()
        _one_task_maps(20)
        after = executor_stats()
        assert after["spin"] == 0.0
    assert after["spins"] == before["spins"]


def _mapped(address: int) -> bool:
    """The page at ``address`` is mapped read-write (per /proc/self/maps)."""
    return all(v.perms.startswith("rw") for v in kernel.vmas_in(address, address + P))


def _placeholder(address: int) -> bool:
    vmas = kernel.vmas_in(address, address + P)
    return bool(vmas) and all(kernel.is_placeholder(v) for v in vmas)


def _lone_task_maps(
    anyio_backend: tuple[str, dict[str, object]], n: int, probe: Callable[[], Any] | None = None
) -> int:
    """``n`` map+unmap pairs of one task (anonymous, one page), with a task that counts its
    turns alongside; returns that count. ``probe`` runs in each turn (it may cancel)."""
    turns = 0

    async def main() -> None:
        nonlocal turns
        async with aiopmem.reserve(4 * P) as rsv, anyio.create_task_group() as tg:
            done = anyio.Event()

            async def beat() -> None:
                nonlocal turns
                while not done.is_set():
                    turns += 1
                    if probe is not None:
                        probe()
                    await anyio.lowlevel.checkpoint()

            tg.start_soon(beat)
            for _ in range(n):
                m = await rsv.map_anonymous(0, P)
                assert _mapped(m.address)
                await m.unmap()
            done.set()

    backend, options = anyio_backend
    anyio.run(main, backend=backend, backend_options=options)
    return turns


def test_a_lone_task_is_served_by_the_callers_wait_and_still_yields(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    """One task awaiting short jobs one after another, a worker watching the queue: the
    event loop's thread waits for each job itself (a hit: no eventfd, no parking), and the
    await still yields once, so another task keeps getting its turns (about one per op)."""
    with configured(spin=0.005, wait=0.001):
        before = executor_stats()
        # Hits need the other CPU free (a contended wait backs off): a few rounds at most.
        deadline = time.monotonic() + 5
        while True:
            turns = _lone_task_maps(anyio_backend, 100)
            # Every op lets the other task run, hit or not: 200 turns, less a few where the
            # scheduler (trio shuffles its batches) runs this task again first.
            assert turns >= 150, turns
            after = executor_stats()
            if after["wait_hits"] > before["wait_hits"] or time.monotonic() > deadline:
                break
    assert after["wait_hits"] > before["wait_hits"], (before, after)
    assert after["wait"] == before["wait"]  # restored


def test_no_callers_wait_when_it_is_turned_off(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    with configured(spin=0.005, wait=0.0):
        before = executor_stats()
        _lone_task_maps(anyio_backend, 20)
        after = executor_stats()
        assert after["wait"] == 0.0
    assert after["waits"] == before["waits"]


def test_a_map_served_by_the_callers_wait_is_undone_if_cancelled_at_its_yield(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    """The yield after a job the caller's thread waited for is where a cancellation can come
    in (the mapping is made then, not returned yet): it is unmapped again and the caller sees
    the cancellation; a map that returned stays mapped."""
    outcomes = []

    async def main() -> None:
        async with aiopmem.reserve(4 * P) as rsv:
            core = rsv.sync
            deadline = time.monotonic() + 5  # a hit needs the other CPU free: rounds until one
            while "cancelled" not in outcomes and time.monotonic() < deadline:
                with anyio.CancelScope() as scope:

                    async def watch(scope: anyio.CancelScope = scope) -> None:
                        while not scope.cancel_called:
                            if core.mappings():
                                scope.cancel()
                            await anyio.lowlevel.checkpoint()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(watch)
                        await anyio.lowlevel.checkpoint()  # watch runs first
                        try:
                            m = await rsv.map_anonymous(0, P)
                        except BaseException:
                            outcomes.append("cancelled")
                            assert core.mappings() == []
                            assert _placeholder(core.address)
                            raise
                        outcomes.append("mapped")
                        assert _mapped(m.address)
                        with anyio.CancelScope(shield=True):
                            await m.unmap()
                        scope.cancel()

    backend, options = anyio_backend
    with configured(spin=0.005, wait=0.001):
        anyio.run(main, backend=backend, backend_options=options)
    assert "cancelled" in outcomes, outcomes


def test_the_callers_wait_leaves_other_ports_jobs_to_their_drain() -> None:
    """A port that hands finished jobs to a callable (no event loop's task looks at the job
    after its begin) never has a job taken by the caller's wait: each one is listed, signalled
    and handed over by the drain, even with a worker watching the queue."""
    done: list[Any] = []
    port = Port(done.append)
    with configured(spin=0.005, wait=0.001), aiopmem.sync.reserve(4 * P) as rsv:
        before = executor_stats()
        for _ in range(20):
            job = _map_job(rsv, port, 0)
            _wait_for(lambda: bool(select.select([port.fd], [], [], 0)[0]))
            port.drain()
            assert done[-1] is job and job.delivered
            job.outcome().unmap()
        after = executor_stats()
    assert len(done) == 20
    assert after["waits"] == before["waits"]


def test_a_cancelled_task_waits_for_its_job_without_spinning_the_loop(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    """A map cancelled while its (slowed) mmap runs: the caller returns once the job is done
    (it is never abandoned), the mapping is undone, and meanwhile the event loop sleeps (its
    thread's CPU time stays far below the time waited: it does not poll for the cancellation's
    delivery)."""
    backend, options = anyio_backend
    seen: dict[str, float] = {}

    async def main() -> None:
        async with aiopmem.reserve(4 * P) as rsv:
            cpu, wall = time.thread_time(), time.monotonic()
            with inject("mmap", delay=0.4, times=1), anyio.move_on_after(0.05) as scope:
                await rsv.map_anonymous(0, P)
            seen["cpu"], seen["wall"] = time.thread_time() - cpu, time.monotonic() - wall
            assert scope.cancelled_caught
            assert rsv.mappings() == []
            assert _placeholder(rsv.address)

    anyio.run(main, backend=backend, backend_options=options)
    assert seen["wall"] >= 0.35, seen  # waited for the job
    assert seen["cpu"] < 0.15, seen  # a polling loop would burn most of the 0.35 s


def test_a_job_does_not_begin_where_the_gate_would_wait() -> None:
    """While an extend holds the gate, a job's begin answers C_WOULD_BLOCK (the async caller
    then waits in a worker thread) and leaves nothing behind."""
    port = Port(lambda job: None)
    with aiopmem.sync.reserve(4 * P) as rsv, inject("mmap", delay=0.3, times=1):
        import threading

        def extend_past_the_headroom() -> None:  # a mmap (slowed) with the gate held
            with contextlib.suppress(aiopmem.PmemError):
                rsv.extend(rsv.max_size - rsv.size + P)

        extender = threading.Thread(target=extend_past_the_headroom)
        extender.start()
        try:
            deadline = time.monotonic() + 5
            while not rsv._gate_state()[1]:  # wait until the extend holds the gate
                assert time.monotonic() < deadline
                time.sleep(0.001)
            assert _map_job(rsv, port, 0) == C_WOULD_BLOCK
        finally:
            extender.join()
        assert rsv.mappings() == [] and rsv._gate_state()[:4] == (0, False, 0, 0)


def test_injected_errors_reach_the_job_path() -> None:
    async def main() -> None:
        async with aiopmem.reserve(4 * P) as rsv:
            with inject("mmap", errno=errno.ENOMEM, times=1), pytest.raises(OSError) as info:
                await rsv.map_anonymous(0, P)
            assert info.value.errno == errno.ENOMEM and rsv.mappings() == []
            kernel.assert_matches_kernel(rsv.sync)

    anyio.run(main)
    anyio.run(main, backend="trio")


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_while_a_job_runs_loses_it_in_neither_process() -> None:
    """fork() while a job's mmap is slowed: the child runs the job again (it has none of the
    workers) and the rescue commits it there, as in the parent: both close the reservation."""
    port = Port(lambda job: None)
    rsv = aiopmem.sync.reserve(4 * P)
    with inject("mmap", delay=0.4, times=1):
        _map_job(rsv, port, 0)
        time.sleep(0.1)  # the worker is in the mmap
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            rsv.close()
            code = 0 if rsv.closed else 2
        finally:
            os._exit(code)
    rsv.close()
    assert rsv.closed
    _wait_child(pid)


def _wait_child(pid: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hangs")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_trio_runs_in_several_threads_start_together() -> None:
    """The first trio runs of a process, in four threads at once, each with its own port:
    every map and unmap completes (a fresh interpreter, so that these are the first uses)."""
    code = textwrap.dedent(
        """
        import threading, trio, aiopmem
        done = []
        start = threading.Barrier(4)
        async def main(i):
            async with aiopmem.reserve(1 << 20) as rsv:
                for _ in range(50):
                    m = await rsv.map_anonymous(i * 4096, 4096)
                    await m.unmap()
            done.append(i)
        def run(i):
            start.wait()
            trio.run(main, i)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert sorted(done) == [0, 1, 2, 3], done
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_forked_child_has_a_working_executor() -> None:
    async def round_trip() -> None:
        async with aiopmem.reserve(4 * P) as rsv:
            m = await rsv.map_anonymous(0, P)
            m.view()[:2] = b"ok"
            await m.persist()
            await m.unmap()

    anyio.run(round_trip)  # the parent's executor has threads now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            anyio.run(round_trip)
            code = 0
        finally:
            os._exit(code)
    _wait_child(pid)


@pytest.mark.anyio
async def test_the_async_data_path_runs_no_python_in_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reserve(), a map of a path (open + check, then the map), the memory operations,
    persist, unmap and aclose() are jobs of the C executor (extend and shrink of the tail run
    inline): none of them hands a Python call to the worker pool (whose threads would run the
    core's Python) when nothing makes them wait at the gate."""
    from aiopmem._async import _dispatch

    hops: list[object] = []
    real = _dispatch.submit  # type: ignore[attr-defined]

    def counted(job: object) -> None:
        hops.append(job)
        real(job)  # type: ignore[arg-type]

    monkeypatch.setattr(_dispatch, "submit", counted)
    path = tmp_path / "f"
    path.write_bytes(b"\0" * (1 << 20))
    async with aiopmem.reserve(16 << 20) as rsv:
        m = await rsv.map_file(path, 0)
        ro = await rsv.map_file(str(path), 2 << 20, length=4096, protection=aiopmem.Protection.READ)
        a = await rsv.map_anonymous(4 << 20, 1 << 20, populate=True)
        await m.write(0, b"abc")
        assert await rsv.read(0, 3) == b"abc" and await ro.read(0, 3) == b"abc"
        await m.populate()
        await m.advise(aiopmem.Advice.SEQUENTIAL)
        await a.lock()
        await a.unlock()
        await a.protect(aiopmem.Protection.READ)
        await rsv.persist()
        await m.persist()
        for mapping in (m, ro):
            await mapping.unmap()
        await rsv.extend(4096)  # inside the headroom
        await rsv.shrink(rsv.size - 4096, 4096)  # the tail
    # aclose() unmapped `a` and released everything, as a job too.
    assert hops == []
    # Past the headroom (the placeholder after the end) and at the front (a munmap): jobs.
    address = kernel.quiet_address(64 << 20)
    async with aiopmem.reserve(16 << 20, address=address, max_size=16 << 20) as rsv:
        await rsv.extend(1 << 20)
        assert rsv.max_size == rsv.size == 17 << 20
        await rsv.shrink(0, 1 << 20)
        assert rsv.address == address + (1 << 20)
        kernel.assert_matches_kernel(rsv.sync)
    assert kernel.is_free(address, address + (64 << 20))
    assert hops == []
    assert a.closed and path.read_bytes()[:3] == b"abc"
