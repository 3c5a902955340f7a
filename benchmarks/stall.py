"""Figure 9: how long the event loop stalls while a task maps, writes and persists a big file:
no blocking syscall may run on the event-loop thread, so a heartbeat task must keep ticking."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Callable
from typing import cast

import anyio
import anyio.lowlevel
import anyio.to_thread

import aiopmem

from ._backends import run_on
from ._measure import Context, Figure, Metric, MiB

#: The backends of the issue's stall target.
STALL_BACKENDS = ("asyncio", "trio")

#: Heartbeat period: the heartbeat sleeps this long and records how late it wakes up.
BEAT = 0.001

#: The writer copies into the view this many bytes at a time and yields to the event loop in
#: between, as an async program writing a big buffer should.
STEP = 256 << 10

#: How long the heartbeat runs alone before the work starts: the machine's own noise floor.
IDLE = 0.25

#: What the writing task is doing; a late heartbeat is charged to the phase current when it
#: wakes up (the phase whose code held the event loop, or whose await it was waiting in).
LIBRARY_PHASES = ("map", "persist", "unmap", "reserve", "close")


class RunQueueClock:
    """Seconds the calling thread has spent runnable but waiting for a CPU (second field of
    /proc/thread-self/schedstat). A stall during which the loop thread mostly waited for a
    CPU is the machine's (other processes, kernel writeback), not the library's. Reads 0
    where the file does not exist."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 100, 0).split()[1]) / 1e9

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def stall_segment(
    fd: int, base: int, length: int, chunk: int, idle: float, via_write: bool = False
) -> dict[str, float]:
    """Map ``[base, base+length)`` of the file as ``chunk``-sized mappings, one after the
    other; write each through its view in ``STEP`` pieces (a checkpoint after each), or with
    ``via_write`` by one ``await rsv.write()`` of the whole chunk (the data path of the memory
    operations: the copy and its page faults in the executor); ``await m.persist()`` it
    (``await rsv.persist()`` with ``via_write``), unmap it. A heartbeat task sleeps ``BEAT``
    in a loop throughout, alone for ``idle`` seconds first. Returns, in seconds, the longest
    heartbeat gap minus ``BEAT``: overall once the work started ("all"), while awaiting the
    library ("library"), in the task's own writes ("write") and while idle ("idle"); and how
    long the loop thread waited for a CPU during the longest overall gap ("all_cpu_wait")."""
    block = b"\x5a" * STEP
    whole = b"\x5a" * chunk if via_write else b""
    phase = "idle"
    #: phase -> (longest lateness, run-queue wait during that gap)
    longest = {p: (0.0, 0.0) for p in ("idle", "write", *LIBRARY_PHASES)}
    done = False

    async def heartbeat() -> None:
        waited = RunQueueClock()  # opened here: on the event-loop thread
        try:
            last, last_wait = time.perf_counter(), waited()
            while not done:
                await anyio.sleep(BEAT)
                now, now_wait = time.perf_counter(), waited()
                late = now - last - BEAT
                if late > longest[phase][0]:
                    longest[phase] = (late, now_wait - last_wait)
                last, last_wait = now, now_wait
        finally:
            waited.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await anyio.sleep(idle)
        phase = "reserve"
        rsv = await aiopmem.reserve(length)
        try:
            for offset in range(0, length, chunk):
                phase = "map"
                m = await rsv.map_file(fd, offset, length=chunk, file_offset=base + offset)
                phase = "write"
                if via_write:
                    await rsv.write(offset, whole)
                    phase = "persist"
                    await rsv.persist(offset, chunk)
                else:
                    view = m.view()
                    for pos in range(0, chunk, STEP):
                        view[pos : pos + STEP] = block
                        await anyio.lowlevel.checkpoint()
                    view.release()
                    phase = "persist"
                    await m.persist()
                phase = "unmap"
                await m.unmap()
        finally:
            phase = "close"
            await rsv.aclose()
        done = True
    worst, worst_wait = max(v for p, v in longest.items() if p != "idle")
    return {
        "all": worst,
        "all_cpu_wait": worst_wait,
        "library": max(longest[p][0] for p in LIBRARY_PHASES),
        "write": longest["write"][0],
        "idle": longest["idle"][0],
    }


#: <sys/mman.h> on Linux (the mmap module does not export it).
MS_SYNC = 4


def _libc_msync() -> Callable[[int, int, int], int]:
    """libc's msync through ctypes (which releases the GIL during the call, as cffi does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.msync
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], fn)


async def control_msync(fd: int, length: int) -> float:
    """The control, without aiopmem: map ``length`` bytes of ``fd`` with Python's mmap module,
    write them the same way (``STEP`` pieces, a checkpoint after each), then run
    msync(MS_SYNC) in a worker thread (``anyio.to_thread.run_sync``) while the heartbeat
    ticks. Returns the heartbeat's longest lateness during the msync, in seconds: what the
    kernel and machine impose on the loop while a big msync runs in another thread."""
    msync = _libc_msync()
    block = b"\x5a" * STEP
    longest = 0.0
    syncing = done = False

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await anyio.sleep(BEAT)
            now = time.perf_counter()
            if syncing:
                longest = max(longest, now - last - BEAT)
            last = now

    with mmap.mmap(fd, length) as m:
        anchor = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(anchor)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                for pos in range(0, length, STEP):
                    m[pos : pos + STEP] = block
                    await anyio.lowlevel.checkpoint()
                syncing = True
                if await anyio.to_thread.run_sync(msync, addr, length, MS_SYNC) != 0:
                    raise OSError(ctypes.get_errno(), "msync failed")
                done = True
        finally:
            del anchor
    return longest


class Stall(Figure):
    """A 1 GiB file (posix_fallocate'd in a temp dir under tempfile.gettempdir(), i.e. on the
    default temp dir's file system) is mapped 64 MiB at a time with ``await rsv.map_file``,
    written through ``m.view()`` 256 KiB per step on the event-loop thread (a checkpoint
    between steps), persisted with ``await m.persist()`` and unmapped, while a heartbeat task
    sleeps 1 ms in a loop. stall = longest gap between two heartbeats minus the 1 ms sleep.
    The GiB is split into 4 repetitions of 256 MiB (each reports its longest stall, so "max"
    is the longest stall over the whole GiB), on asyncio and on trio; the file's page cache
    is dropped between segments (posix_fadvise DONTNEED) so both backends write to cold
    pages, and which backend goes first alternates. Breakdown: a late heartbeat is charged to
    what the writing task was doing when it woke up: awaiting the library (reserve, map_file,
    persist, unmap, aclose) or its own 256 KiB copies; "idle" is the heartbeat alone for
    0.25 s before the work starts (the machine's noise floor); "waiting for a CPU" is how much
    of the longest stall the loop thread spent runnable but not running (run-queue delay from
    /proc/thread-self/schedstat): that part is the machine's load, not a blocking call.
    Control (no aiopmem): one 64 MiB chunk of another file mapped with Python's mmap module,
    written the same way, msync(MS_SYNC) via ctypes in ``anyio.to_thread.run_sync``: the
    longest stall during that msync is what the kernel and machine impose anyway.
    Then each segment again, per backend, written by one ``await rsv.write()`` per 64 MiB
    chunk and persisted by ``await rsv.persist()`` (the data path of the memory operations):
    "longest, await rsv.write()" is the longest stall of that pass."""

    name = "stall"
    title = "event-loop stall while mapping + writing + persisting a file"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.reps = ctx.profile.stall_reps

    @property
    def metrics(self) -> list[Metric]:
        out = []
        for label in STALL_BACKENDS:
            out += [
                Metric(f"{label}_stall_ms", f"{label}: longest stall", "ms"),
                Metric(f"{label}_cpu_wait_ms", f"{label}: ... of it waiting for a CPU", "ms", True),
                Metric(f"{label}_library_ms", f"{label}: ... awaiting aiopmem", "ms", True),
                Metric(f"{label}_write_ms", f"{label}: ... in own view writes", "ms", True),
                Metric(f"{label}_idle_ms", f"{label}: heartbeat alone (noise)", "ms", True),
                Metric(f"{label}_control_ms", f"{label}: raw msync in a thread", "ms", True),
                Metric(f"{label}_mb_per_s", f"{label}: map+write+persist", "MB/s"),
                Metric(f"{label}_rsv_write_stall_ms", f"{label}: longest, await rsv.write()", "ms"),
                Metric(
                    f"{label}_rsv_write_cpu_wait_ms",
                    f"{label}: ... of it waiting for a CPU",
                    "ms",
                    True,
                ),
                Metric(
                    f"{label}_rsv_write_library_ms",
                    f"{label}: ... awaiting aiopmem",
                    "ms",
                    True,
                ),
                Metric(
                    f"{label}_rsv_write_mb_per_s",
                    f"{label}: map+rsv.write+rsv.persist",
                    "MB/s",
                    True,
                ),
            ]
        return out

    def prepare(self) -> None:
        p = self.profile
        self.segment = p.stall_bytes // p.stall_reps
        # The idle baseline is a fixed slice of time; the quick profile keeps it short.
        self.idle = min(IDLE, p.rep_seconds * 5)
        if self.segment % p.stall_chunk:
            raise ValueError("stall_bytes / stall_reps must be a multiple of stall_chunk")
        directory = self.ctx.scratch.directory
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free < 2 * p.stall_bytes:
            raise RuntimeError(
                f"{directory}: {free // MiB} MiB free, the stall figure needs "
                f"{2 * p.stall_bytes // MiB} MiB"
            )
        path = os.path.join(directory, "stall.bin")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.posix_fallocate(self.fd, 0, p.stall_bytes)
        path = os.path.join(directory, "stall-control.bin")
        self.control_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.posix_fallocate(self.control_fd, 0, p.stall_chunk)
        self.params.update(
            bytes_per_backend=p.stall_bytes,
            chunk=p.stall_chunk,
            step=STEP,
            heartbeat_s=BEAT,
            idle_s=self.idle,
            directory=directory,
        )

    def run_rep(self, rep: int) -> dict[str, float]:
        base = rep * self.segment
        out = {}
        # The segment is written twice (once per backend); the first writer also turns the
        # file's preallocated extents into written ones, so who goes first alternates.
        order = STALL_BACKENDS if rep % 2 == 0 else STALL_BACKENDS[::-1]
        chunk = self.profile.stall_chunk
        for label in order:
            t0 = time.perf_counter()
            got = run_on(
                label,
                stall_segment,
                self.fd,
                base,
                self.segment,
                self.profile.stall_chunk,
                self.idle,
            )
            elapsed = time.perf_counter() - t0 - self.idle
            os.posix_fadvise(self.fd, base, self.segment, os.POSIX_FADV_DONTNEED)
            out[f"{label}_stall_ms"] = got["all"] * 1e3
            out[f"{label}_cpu_wait_ms"] = got["all_cpu_wait"] * 1e3
            out[f"{label}_library_ms"] = got["library"] * 1e3
            out[f"{label}_write_ms"] = got["write"] * 1e3
            out[f"{label}_idle_ms"] = got["idle"] * 1e3
            out[f"{label}_mb_per_s"] = self.segment / 1e6 / elapsed
            out[f"{label}_control_ms"] = run_on(label, control_msync, self.control_fd, chunk) * 1e3
            os.posix_fadvise(self.control_fd, 0, chunk, os.POSIX_FADV_DONTNEED)
        # The same segment again through the memory operations' data path (cold pages too).
        for label in order:
            t0 = time.perf_counter()
            got = run_on(label, stall_segment, self.fd, base, self.segment, chunk, self.idle, True)
            elapsed = time.perf_counter() - t0 - self.idle
            os.posix_fadvise(self.fd, base, self.segment, os.POSIX_FADV_DONTNEED)
            out[f"{label}_rsv_write_stall_ms"] = got["all"] * 1e3
            out[f"{label}_rsv_write_cpu_wait_ms"] = got["all_cpu_wait"] * 1e3
            out[f"{label}_rsv_write_library_ms"] = max(got["library"], got["write"]) * 1e3
            out[f"{label}_rsv_write_mb_per_s"] = self.segment / 1e6 / elapsed
        return out

    def close(self) -> None:
        for name in ("fd", "control_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                delattr(self, name)
