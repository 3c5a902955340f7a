"""``python -m benchmarks.hotspots``: where the time of a map+unmap goes, by cProfile.

Profiles the loops of figures 2 and 3 (one task): ``m = rsv.map_file(fd, 0, length=64 KiB);
m.unmap()`` with aiopmem.sync, and the same awaited on one async backend. For the async loop
the event-loop thread and the worker threads are profiled separately (each thread started
while profiling gets its own profiler), so the report says what runs on the loop and what in
the workers. Profiling slows Python code down several times; read the proportions, not the
absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
from typing import Any

import aiopmem
import aiopmem.sync

from ._backends import run_on
from ._measure import BACKENDS, SLOT


def _stats_text(stats: pstats.Stats, sort: str, top: int) -> str:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(top)
    return buf.getvalue()


def profile_sync(fd: int, n: int) -> pstats.Stats:
    """cProfile of ``n`` sync map+unmap ops."""
    with aiopmem.sync.reserve(SLOT) as rsv:
        for _ in range(16):
            rsv.map_file(fd, 0, length=SLOT).unmap()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            m = rsv.map_file(fd, 0, length=SLOT)
            m.unmap()
        prof.disable()
    return pstats.Stats(prof)


async def _async_loop(fd: int, n: int, loop_prof: cProfile.Profile) -> None:
    async with aiopmem.reserve(SLOT) as rsv:
        for _ in range(16):
            m = await rsv.map_file(fd, 0, length=SLOT)
            await m.unmap()
        loop_prof.enable()
        for _ in range(n):
            m = await rsv.map_file(fd, 0, length=SLOT)
            await m.unmap()
        loop_prof.disable()


def profile_async(label: str, fd: int, n: int) -> tuple[pstats.Stats, pstats.Stats | None]:
    """cProfile of ``n`` async map+unmap ops in one task on backend ``label``: (event-loop
    thread, worker threads). Worker threads started during the run are profiled from their
    start (the warm-up included). trio keeps idle worker threads across runs, started before
    profiling began: profile one backend per process, as ``main`` does."""
    workers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profiler(*_: Any) -> None:
        prof = cProfile.Profile()
        with lock:
            workers.append(prof)
        prof.enable()  # replaces this hook for the rest of the thread's life

    loop_prof = cProfile.Profile()
    threading.setprofile(start_profiler)
    try:
        run_on(label, _async_loop, fd, n, loop_prof)
    finally:
        threading.setprofile(None)
    with lock:
        profs = list(workers)
    for p in profs:
        p.create_stats()
    worker_stats = pstats.Stats(*profs) if profs else None
    return pstats.Stats(loop_prof), worker_stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hotspots", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="sync ops (async: n/10)")
    p.add_argument("--top", type=int, default=15, help="entries per listing")
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    p.add_argument(
        "--backend",
        default="asyncio",
        choices=[label for label, _, _ in BACKENDS],
        help="async backend",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aiopmem-hotspots-") as d:
        path = os.path.join(d, "slot.bin")
        with open(path, "wb") as f:
            f.write(b"\xa5" * SLOT)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            print(f"== aiopmem.sync map_file+unmap, {args.n} ops, sorted by {args.sort}")
            print(_stats_text(profile_sync(fd, args.n), args.sort, args.top))
            n = max(1, args.n // 10)
            loop_stats, worker_stats = profile_async(args.backend, fd, n)
            print(f"== aiopmem map_file+unmap on {args.backend}, 1 task, {n} ops: event loop")
            print(_stats_text(loop_stats, args.sort, args.top))
            print("== same run: worker threads")
            if worker_stats is None:
                print("(no worker thread started during the run)")
            else:
                print(_stats_text(worker_stats, args.sort, args.top))
        finally:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
