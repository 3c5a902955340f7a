"""Figure 4: a bare worker-thread round trip, ``await anyio.to_thread.run_sync(lambda: None)``:
what any async call that offloads one blocking syscall cannot beat on a given backend."""

from __future__ import annotations

import gc
import time
from functools import partial

import anyio
import anyio.to_thread

from ._backends import run_on
from ._measure import BACKENDS, TASKS, Figure, Metric, calibrate


async def time_hops(tasks: int, n: int) -> float:
    """Seconds for ``tasks`` tasks to make ``n`` round trips in total (after an untimed
    warm-up that starts the worker threads)."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await anyio.to_thread.run_sync(lambda: None)

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker, 8 if tasks == 1 else 2)
    gc.collect()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker, n // tasks)
    return time.perf_counter() - t0


class ToThread(Figure):
    """``await anyio.to_thread.run_sync(lambda: None)`` in a loop, 1 task and 32 tasks, on
    each backend (a fresh event loop per repetition, warmed up before the clock starts).
    µs/op = wall seconds / total round trips; ops/s its inverse."""

    name = "to_thread"
    title = "bare anyio.to_thread.run_sync(lambda: None) round trip"

    @property
    def metrics(self) -> list[Metric]:
        out = []
        for label, _, _ in BACKENDS:
            for tasks in (1, TASKS):
                what = f"{label}, {tasks} task{'s' if tasks > 1 else ''}"
                out.append(Metric(f"{label}_{tasks}_us_per_op", what, "µs/op"))
                out.append(Metric(f"{label}_{tasks}_ops_per_s", what, "ops/s"))
        return out

    def prepare(self) -> None:
        self.n: dict[tuple[str, int], int] = {}
        for label, _, _ in BACKENDS:
            for tasks in (1, TASKS):
                self.n[label, tasks] = calibrate(
                    partial(run_on, label, time_hops, tasks),
                    self.profile.rep_seconds,
                    multiple=tasks,
                    least=max(8, 2 * tasks),
                )
        self.params["ops_per_rep"] = {f"{k[0]}_{k[1]}": v for k, v in self.n.items()}

    def run_rep(self, rep: int) -> dict[str, float]:
        out = {}
        for (label, tasks), n in self.n.items():
            elapsed = run_on(label, time_hops, tasks, n)
            out[f"{label}_{tasks}_us_per_op"] = elapsed / n * 1e6
            out[f"{label}_{tasks}_ops_per_s"] = n / elapsed
        return out
