"""Load: 64 tasks and 8 threads on one reservation at once, on asyncio, uvloop and trio.

The tasks use the async API, the threads the sync API through ``rsv.sync`` (the same
reservation), all at the same time. Each worker owns a slot of the reservation where it maps
and unmaps (anonymous memory, or its own region of a shared file), writes through views and
reads its data back, persists; every worker also makes read-only lookups over the whole
reservation and checks what they return is consistent; one designated task keeps extending and
shrinking the tail, past every slot. Afterwards no mapping, VMA or file descriptor may be left,
and the library's state must match /proc/self/maps.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiopmem
import kernel
from reliability import TALLY, Profile, assert_matches_kernel, profiles
from sizes import P

TASKS = 64
THREADS = 8
SLOT = 8 * P
BASE = (TASKS + THREADS) * SLOT
TAIL = 32 * P  # the designated task's playground, past every slot

PROFILES = profiles(quick={"n": 300}, long={"n": 10_000})

pytestmark = pytest.mark.anyio


class Worker:
    """One task's or thread's walk in its slot; ``mapping`` is its current mapping, if any."""

    def __init__(self, ident: int, rsv: Any, path: Path, fd: int) -> None:
        self.ident = ident
        self.rng = random.Random(ident)
        self.rsv = rsv
        self.path = path
        self.fd = fd
        self.slot = ident * SLOT
        self.mapping: Any = None
        self.file_offset = 0
        self.serial = 0
        self.ops = 0

    def plan_map(self) -> tuple[int, int, bool]:
        """(offset in the slot, length, file?)"""
        length = self.rng.randint(1, SLOT // P) * P
        start = self.rng.randrange(0, SLOT - length + 1, P)
        return self.slot + start, length, self.rng.random() < 0.5

    def mapped(self, m: Any, offset: int, length: int, is_file: bool) -> None:
        assert (m.offset, m.size) == (offset, length)
        self.mapping = m
        # A file mapping shows the worker's own region of the file: file_offset == slot.
        self.file_offset = offset if is_file else -1

    def write_and_check(self) -> None:
        m = self.mapping
        assert self.rsv.find(m.offset) is m  # nobody else maps in this slot
        self.serial += 1
        stamp = f"{self.ident}:{self.serial}:".encode()
        view = m.view()
        try:
            at = self.rng.randrange(0, len(view) - len(stamp))
            view[at : at + len(stamp)] = stamp
            assert view[at : at + len(stamp)].tobytes() == stamp
        finally:
            view.release()
        if self.file_offset >= 0:
            assert os.pread(self.fd, len(stamp), self.file_offset + at) == stamp

    def lookups(self) -> None:
        """Shared read-only lookups: consistent snapshots while everyone else moves."""
        rsv = self.rsv
        snapshot = rsv.mappings()
        ends = [(m.address, m.address + m.size) for m in snapshot]
        assert ends == sorted(ends)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
        offset = self.rng.randrange(0, BASE)
        hit = rsv.find(offset)
        if hit is not None:
            span = -(-hit.size // P) * P
            assert hit.address <= rsv.address + offset < hit.address + span
        first, last = rsv.find_first(), rsv.find_last()
        assert (first is None) == (last is None)
        if first is not None:
            assert first.address <= last.address
        own = self.mapping
        if own is not None:
            nxt = rsv.find_next(own)
            assert nxt is None or nxt.address > own.address
            prv = rsv.find_prev(own)
            assert prv is None or prv.address < own.address


async def task_walk(w: Worker, n: int, resizer: bool) -> None:
    rsv = w.rsv
    for _ in range(n):
        w.ops += 1
        r = w.rng.random()
        if resizer and r < 0.1:
            # The tail past every slot: grow into it, then give it back.
            grow = w.rng.randint(1, TAIL // P) * P
            await rsv.extend(grow)
            assert rsv.size >= BASE + grow
            await rsv.shrink(BASE, rsv.size - BASE)
            assert rsv.size == BASE
        elif w.mapping is None:
            offset, length, is_file = w.plan_map()
            if is_file:
                m = await rsv.map_file(w.path, offset, length=length, file_offset=offset)
            else:
                m = await rsv.map_anonymous(offset, length)
            w.mapped(m, offset, length, is_file)
        elif r < 0.35:
            await w.mapping.unmap()
            assert w.mapping.closed
            w.mapping = None
        elif r < 0.45:
            await w.mapping.persist()
        elif r < 0.75:
            w.write_and_check()
        else:
            w.lookups()
        if w.rng.random() < 0.2:
            await anyio.lowlevel.checkpoint()
    if w.mapping is not None:
        await w.mapping.unmap()


def thread_walk(w: Worker, n: int, errors: list[BaseException]) -> None:
    try:
        rsv = w.rsv
        for _ in range(n):
            w.ops += 1
            r = w.rng.random()
            if w.mapping is None:
                offset, length, is_file = w.plan_map()
                if is_file:
                    m = rsv.map_file(w.fd, offset, length=length, file_offset=offset)
                else:
                    m = rsv.map_anonymous(offset, length)
                w.mapped(m, offset, length, is_file)
            elif r < 0.35:
                w.mapping.unmap()
                w.mapping = None
            elif r < 0.45:
                w.mapping.persist()
            elif r < 0.75:
                w.write_and_check()
            else:
                w.lookups()
        if w.mapping is not None:
            w.mapping.unmap()
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("profile", PROFILES)
async def test_tasks_and_threads_on_one_reservation(profile: Profile, tmp_path: Path) -> None:
    n = profile["n"]
    path = tmp_path / "shared.bin"
    path.write_bytes(bytes(BASE))
    fd = os.open(path, os.O_RDWR)
    try:
        fds = kernel.open_fds()
        rsv = await aiopmem.reserve(BASE, max_size=BASE + TAIL)
        start, end = rsv.address, rsv.address + rsv.max_size
        tasks = [Worker(k, rsv, path, fd) for k in range(TASKS)]
        threads = [Worker(TASKS + k, rsv.sync, path, fd) for k in range(THREADS)]
        errors: list[BaseException] = []
        runners = [
            threading.Thread(target=thread_walk, args=(w, n, errors), daemon=True) for w in threads
        ]
        for t in runners:
            t.start()
        try:
            async with anyio.create_task_group() as tg:
                for k, w in enumerate(tasks):
                    tg.start_soon(task_walk, w, n, k == 0)
        finally:
            for t in runners:
                await anyio.to_thread.run_sync(t.join)
        if errors:
            raise errors[0]
        TALLY["load: operations"] += sum(w.ops for w in tasks + threads)
        assert rsv.mappings() == [] and rsv.holes == []
        assert (rsv.address, rsv.size) == (start, BASE)
        assert_matches_kernel(rsv)
        assert len(kernel.vmas_in(start, end)) == 1  # one placeholder: every VMA merged back
        await rsv.aclose()
        assert kernel.is_free(start, end)
        assert kernel.open_fds() == fds
    finally:
        os.close(fd)
