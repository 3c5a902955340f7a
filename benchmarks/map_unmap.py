"""Figures 2 and 3: map+unmap of a 64 KiB file region through the library, blocking (one
thread) and async (1 task and 32 tasks, on asyncio, uvloop and trio)."""

from __future__ import annotations

import gc
import time
from functools import partial

import anyio

import aiopmem
import aiopmem.sync

from ._backends import run_on
from ._measure import BACKENDS, SLOT, TASKS, Figure, Metric, calibrate, timed

#: Untimed map+unmap ops before each timed loop: the first ones pay for starting worker
#: threads and warming caches (per task: with 32 tasks, 2 each are enough to start the threads).
WARMUP = 8
WARMUP_PER_TASK = 2


class SyncMapUnmap(Figure):
    """aiopmem.sync, one thread: ``m = rsv.map_file(fd, 0, length=64 KiB); m.unmap()`` in a
    timed loop, ``fd`` an int file descriptor of the 64 KiB scratch file opened once, inside a
    reservation made for the repetition (not timed). ops/s = loop iterations / seconds."""

    name = "sync_map"
    title = "aiopmem.sync map_file+unmap, 1 thread (64 KiB)"

    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("ops_per_s", "map+unmap", "ops/s"),
            Metric("us_per_op", "map+unmap", "µs/op"),
        ]

    def prepare(self) -> None:
        self.n = calibrate(self._time, self.profile.rep_seconds)
        self.params["ops_per_rep"] = self.n

    def _time(self, n: int) -> float:
        fd = self.ctx.scratch.slot_fd
        with aiopmem.sync.reserve(SLOT) as rsv:

            def loop(count: int) -> None:
                for _ in range(count):
                    m = rsv.map_file(fd, 0, length=SLOT)
                    m.unmap()

            loop(WARMUP)
            return timed(loop, n)

    def run_rep(self, rep: int) -> dict[str, float]:
        elapsed = self._time(self.n)
        return {"ops_per_s": self.n / elapsed, "us_per_op": elapsed / self.n * 1e6}


async def time_async_map(fd: int, tasks: int, n: int) -> tuple[float, float]:
    """Seconds for ``tasks`` tasks to do ``n`` map+unmap ops in total, each task in its own
    64 KiB slot of one reservation (made, and warmed up, before the clock starts), and the
    CPU seconds the event loop's thread spent meanwhile (``time.thread_time``: the loop's
    share of the work, the workers' not included)."""

    async with aiopmem.reserve(SLOT * TASKS) as rsv:

        async def worker(slot: int, count: int) -> None:
            offset = slot * SLOT
            for _ in range(count):
                m = await rsv.map_file(fd, offset, length=SLOT)
                await m.unmap()

        async with anyio.create_task_group() as tg:
            for slot in range(tasks):
                tg.start_soon(worker, slot, WARMUP if tasks == 1 else WARMUP_PER_TASK)
        gc.collect()
        t0 = time.perf_counter()
        c0 = time.thread_time()
        async with anyio.create_task_group() as tg:
            for slot in range(tasks):
                tg.start_soon(worker, slot, n // tasks)
        return time.perf_counter() - t0, time.thread_time() - c0


def _wall(label: str, fd: int, tasks: int, n: int) -> float:
    return run_on(label, time_async_map, fd, tasks, n)[0]


class AsyncMapUnmap(Figure):
    """aiopmem (async): ``m = await rsv.map_file(fd, offset, length=64 KiB); await
    m.unmap()`` in a loop, with 1 task and with 32 tasks each in its own 64 KiB slot of one
    reservation, on each backend (a fresh event loop per repetition, warmed up before the
    clock starts). ops/s = total ops / wall seconds; µs/op = wall seconds / total ops (for 32
    tasks that is the inverse of the throughput, not one task's latency); loop CPU µs/op =
    CPU time of the event loop's thread / total ops (what the async layer costs the loop,
    sleeping excluded)."""

    name = "async_map"
    title = "aiopmem map_file+unmap, async (64 KiB)"

    @property
    def metrics(self) -> list[Metric]:
        out = []
        for label, _, _ in BACKENDS:
            for tasks in (1, TASKS):
                what = f"{label}, {tasks} task{'s' if tasks > 1 else ''}"
                out.append(Metric(f"{label}_{tasks}_ops_per_s", what, "ops/s"))
                out.append(Metric(f"{label}_{tasks}_us_per_op", what, "µs/op"))
                out.append(Metric(f"{label}_{tasks}_loop_cpu_us", f"{what}, loop CPU", "µs/op"))
        return out

    def prepare(self) -> None:
        fd = self.ctx.scratch.slot_fd
        self.n: dict[tuple[str, int], int] = {}
        for label, _, _ in BACKENDS:
            for tasks in (1, TASKS):
                self.n[label, tasks] = calibrate(
                    partial(_wall, label, fd, tasks),
                    self.profile.rep_seconds,
                    multiple=tasks,
                    least=max(8, 2 * tasks),
                )
        self.params["ops_per_rep"] = {f"{k[0]}_{k[1]}": v for k, v in self.n.items()}

    def run_rep(self, rep: int) -> dict[str, float]:
        fd = self.ctx.scratch.slot_fd
        out = {}
        for (label, tasks), n in self.n.items():
            elapsed, cpu = run_on(label, time_async_map, fd, tasks, n)
            out[f"{label}_{tasks}_ops_per_s"] = n / elapsed
            out[f"{label}_{tasks}_us_per_op"] = elapsed / n * 1e6
            out[f"{label}_{tasks}_loop_cpu_us"] = cpu / n * 1e6
        return out
