"""Admission (API.md v1.1, "Liveness"): phase-fair on both APIs, and one gate shared by every
caller, tasks of several event loops and plain threads alike (issue 9, items 3 and 8).

The bounds are counted at the gate itself (counts the C core keeps), not timed: while one
side loops, how many of its operations overtake a waiting operation of the other side. Writer
preference without phases let thousands of extends overtake one unmap.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem.testing import inject
from sizes import P


class GateCounts:
    """What the reservation's gate counts of overtakes (kept in the C core, where admission
    happens): how many exclusive operations finish while a shared one waits, and how many
    shared ones are admitted while an exclusive one waits."""

    def __init__(self, rsv: aiopmem.sync.Reservation) -> None:
        self._rsv = rsv

    def _stats(self) -> tuple[int, int, int, int]:
        stats: tuple[int, int, int, int] = self._rsv._gate_stats()
        return stats

    @property
    def shared_waits(self) -> int:
        return self._stats()[0]

    @property
    def overtaken_shared(self) -> int:
        return self._stats()[1]

    @property
    def exclusive_waits(self) -> int:
        return self._stats()[2]

    @property
    def overtaken_exclusive(self) -> int:
        return self._stats()[3]


def counting(rsv: aiopmem.sync.Reservation) -> GateCounts:
    return GateCounts(rsv)  # a fresh reservation: its counts start at 0


def _looping(fn: Callable[[], None], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sync_shared_waits_behind_at_most_one_exclusive_operation() -> None:
    """Threads: one loops extend+shrink; maps, persists and unmaps of another thread each wait
    behind at most one of them (with writer preference: behind the whole loop)."""
    with aiopmem.sync.reserve(64 * P) as rsv:
        gate = counting(rsv)
        stop = threading.Event()

        def resize() -> None:
            rsv.extend(P)
            rsv.shrink(rsv.size - P, P)

        looper = _looping(resize, stop)
        try:
            # Until the two threads have really met at the gate a number of times (a loaded
            # machine may run one thread alone for a while).
            deadline = time.monotonic() + 30
            k = 0
            while (k < 300 or gate.shared_waits < 20) and time.monotonic() < deadline:
                m = rsv.map_anonymous((k % 8) * P, P)
                m.persist()
                m.unmap()
                k += 1
        finally:
            stop.set()
            looper.join(10)
        assert gate.shared_waits > 0, "no contention: the test did not exercise the gate"
        assert gate.overtaken_shared <= 1, gate.overtaken_shared
        kernel.assert_matches_kernel(rsv)


def test_sync_stream_of_maps_cannot_starve_an_extend() -> None:
    """Threads loop map+unmap; an extend waits only for the shared operations admitted before
    it: none is admitted after it while it waits."""
    with aiopmem.sync.reserve(64 * P) as rsv:
        gate = counting(rsv)
        stop = threading.Event()

        def churn(k: int) -> Callable[[], None]:
            def step() -> None:
                rsv.map_anonymous(k * P, P).unmap()

            return step

        loopers = [_looping(churn(k), stop) for k in range(3)]
        try:
            deadline = time.monotonic() + 30
            k = 0
            while (k < 300 or gate.exclusive_waits < 20) and time.monotonic() < deadline:
                rsv.extend(P)
                k += 1
        finally:
            stop.set()
            for t in loopers:
                t.join(10)
        assert gate.exclusive_waits > 0, "no contention: the test did not exercise the gate"
        assert gate.overtaken_exclusive == 0, gate.overtaken_exclusive


@pytest.mark.anyio
async def test_async_shared_operations_are_not_starved_by_an_extend_loop() -> None:
    """The growable-log pattern: one task extends in a loop while others map, persist and
    unmap. Before: the unmap waited for the whole loop (and, being shielded, hung the program
    for an endless one even under move_on_after)."""
    async with aiopmem.reserve(64 * P) as rsv:
        gate = counting(rsv.sync)
        done = False

        async def grow() -> None:
            while not done:
                await rsv.extend(P)
                await rsv.shrink(rsv.size - P, P)

        async def use(base: int) -> None:
            for k in range(60):
                with anyio.fail_after(10):
                    m = await rsv.map_anonymous(base + (k % 4) * P, P)
                    await m.persist()
                    await m.unmap()

        async with anyio.create_task_group() as tg:
            tg.start_soon(grow)
            try:
                async with anyio.create_task_group() as users:
                    for j in range(4):
                        users.start_soon(use, 8 * j * P)
            finally:
                done = True
        assert gate.overtaken_shared <= 1, gate.overtaken_shared


@pytest.mark.anyio
async def test_async_extend_is_not_starved_by_a_stream_of_maps() -> None:
    async with aiopmem.reserve(64 * P) as rsv:
        gate = counting(rsv.sync)
        done = False

        async def churn(k: int) -> None:
            while not done:
                async with rsv.map_anonymous(k * P, P):
                    pass

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(churn, k)
            try:
                for _ in range(100):
                    with anyio.fail_after(10):
                        await rsv.extend(P)
            finally:
                done = True
        assert gate.overtaken_exclusive == 0, gate.overtaken_exclusive


def test_one_async_reservation_used_from_two_event_loops_with_extend() -> None:
    """Item 8: tasks of an asyncio loop and of a trio loop, in two threads, map, persist,
    unmap and extend one async reservation at once. Before: a deadlock as soon as an
    extend was involved (the event-loop gate waited on one loop's Event)."""
    holder: list[aiopmem.Reservation] = []
    ready = threading.Event()
    errors: list[BaseException] = []

    async def work(rsv: aiopmem.Reservation, base: int, rounds: int) -> None:
        for k in range(rounds):
            m = await rsv.map_anonymous(base + (k % 4) * P, P)
            await m.persist()
            await rsv.extend(P)
            await m.unmap()

    async def tasks(rsv: aiopmem.Reservation, base: int) -> None:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for j in range(3):
                    tg.start_soon(work, rsv, base + 4 * j * P, 40)

    def other_loop() -> None:
        try:
            assert ready.wait(10)
            anyio.run(tasks, holder[0], 32 * P, backend="trio")
        except BaseException as exc:
            errors.append(exc)

    async def main() -> None:
        async with aiopmem.reserve(64 * P) as rsv:
            holder.append(rsv)
            ready.set()
            await tasks(rsv, 0)
            await anyio.to_thread.run_sync(thread.join, 60)
            assert rsv.mappings() == [] and rsv.size == (64 + 2 * 3 * 40) * P
            kernel.assert_gate_at_rest(rsv.sync)
            kernel.assert_matches_kernel(rsv)

    thread = threading.Thread(target=other_loop)
    thread.start()
    with inject("mmap", delay=0.0005, times=200):
        anyio.run(main, backend="asyncio")
    thread.join(10)
    assert not errors, errors


@pytest.mark.anyio
async def test_cancelled_while_waiting_for_its_turn_starts_nothing() -> None:
    """A map queued behind a slow exclusive operation (a front shrink whose munmap is slowed)
    and cancelled meanwhile gives up in the worker: it never maps, and the slot it waited
    for is not leaked."""
    async with aiopmem.reserve(16 * P) as rsv:
        async with anyio.create_task_group() as tg:
            with inject("munmap", delay=0.4) as inj:
                tg.start_soon(rsv.shrink, 0, P)
                # inj.fired is counted in the worker thread, with no event to wait for
                while not inj.fired:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                with anyio.move_on_after(0.05) as scope:
                    with inject("mmap", errno=1, times=100) as mm:  # a map that runs fails
                        await rsv.map_anonymous(0, P)
                assert scope.cancelled_caught and mm.seen == 0
        assert rsv.mappings() == [] and rsv.size == 15 * P
        kernel.assert_gate_at_rest(rsv.sync)
        async with rsv.map_anonymous(0, P):
            pass


def test_asyncio_loop_is_not_blocked_by_the_gate() -> None:
    """Waiting for the gate happens in a worker: a heartbeat on the loop keeps ticking while
    a map waits behind a slowed shrink."""

    async def main() -> float:
        async with aiopmem.reserve(16 * P) as rsv:
            gaps: list[float] = []
            stop = False

            async def heartbeat() -> None:
                last = time.monotonic()
                while not stop:
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            beat = asyncio.ensure_future(heartbeat())
            with inject("munmap", delay=0.3):
                await asyncio.gather(rsv.shrink(0, P), (rsv.map_anonymous(P, P)))
            stop = True
            await beat
            return max(gaps)

    assert asyncio.run(main()) < 0.1
