"""The worker pool behind the async API: fast jobs share one thread, slow ones run in parallel,
outcomes reach the right task, and the event loop is woken once per batch."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from aiopmem._async import _workers
from aiopmem._async._dispatch import run_blocking

pytestmark = pytest.mark.anyio


def _workers_alive() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("aiopmem-worker-")}


async def test_results_and_errors_reach_their_callers() -> None:
    async def call(i: int) -> None:
        assert await run_blocking(pow, i, 2) == i * i
        with pytest.raises(ZeroDivisionError):
            await run_blocking(divmod, i, 0)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(call, i)


async def test_fast_jobs_from_many_tasks_share_few_threads() -> None:
    seen: set[str] = set()

    def job() -> None:
        seen.add(threading.current_thread().name)

    async def task() -> None:
        for _ in range(200):
            await run_blocking(job)

    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(task)
    # One drainer plus the odd spare: nothing like one thread per task.
    assert 1 <= len(seen) <= 4, seen


async def test_slow_jobs_run_in_parallel_and_do_not_hold_up_fast_ones() -> None:
    done: list[float] = []
    begin = time.monotonic()

    async def slow() -> None:
        await run_blocking(time.sleep, 0.4)
        done.append(time.monotonic() - begin)

    async def fast() -> None:
        await anyio.sleep(0.05)  # queued behind the slow ones
        t0 = time.monotonic()
        await run_blocking(int)
        done.append(-(time.monotonic() - t0))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(slow)
        tg.start_soon(fast)
    slow_times = [t for t in done if t > 0]
    fast_times = [-t for t in done if t <= 0]
    assert len(slow_times) == 4
    assert max(slow_times) < 1.0, slow_times  # serialized they would take 1.6 s
    assert fast_times[0] < 0.2, fast_times  # not stuck behind a 0.4 s job


async def test_event_loop_woken_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    deliveries = 0
    real = _workers.deliver_all  # type: ignore[attr-defined]

    def counting(port: _workers.Port) -> None:
        nonlocal deliveries
        deliveries += 1
        real(port)

    # Ports are made per event loop, on first use: this test's loop gets a counting one.
    monkeypatch.setattr(_workers, "deliver_all", counting)
    gate = threading.Event()

    def blocked() -> None:
        gate.wait(5)

    async def task() -> None:
        await run_blocking(blocked)

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(task)
        await anyio.sleep(0.2)  # every job queued or running, all held on the gate
        gate.set()
    # 16 jobs finishing together reach the loop in far fewer than 16 wake-ups.
    assert deliveries < 16, deliveries


def test_idle_workers_are_daemons() -> None:
    async def main() -> None:
        await run_blocking(int)

    anyio.run(main)
    assert _workers_alive()
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("aiopmem-worker-"))
