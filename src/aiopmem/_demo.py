"""``python -m aiopmem demo``: a growable, persistent, contiguous log written by concurrent tasks.

The log is a sequence of fixed-size records behind a small log header. It lives in chunk files
of ``chunk_size`` bytes each, mapped back to back into one reservation, so that the whole log
is one contiguous range of addresses: a record may straddle two chunk files and is still
written by one ``await rsv.write()`` (the copy and its page faults run in aiopmem's executor,
never on the event loop). When the log needs room, one task
creates the next chunk file, ``extend()``s the reservation by one chunk and maps the file
there; the tasks that also need room wait for it on an ``anyio.Lock``, the others keep writing.
Nothing ever moves: the reservation keeps its address while it grows.

Crash consistency. The log commits as it goes: a committer task, every ``COMMIT_INTERVAL``
seconds, finds the longest prefix of records that are all written (claims finish out of
order), persists that part of the log (msync of the chunks it covers), and only then writes
the new count into the log header and persists the header's page. So the header's count never
covers a record that is not on stable storage: a run killed (SIGKILL, power loss) or
interrupted (Ctrl-C) at any moment leaves a log whose committed records all verify. At the end
the last records are committed and the header is marked complete.

Then the chunk files are mapped again, read-only, into a fresh reservation, where every record
is checked (magic, length, crc32, and that each task's sequence numbers are all there, once,
in order) through a single view of the whole log (and a numpy array over it when numpy is
installed). ``python -m aiopmem verify DIR`` does the same for a log left in a directory; an
interrupted log verifies up to its last commit.

On-disk format (little-endian), chunk files ``chunk-00000.log``, ``chunk-00001.log``, ...::

    log header, 64 bytes at offset 0:
        magic b"AIOPMLOG", version u32 (2), record_size u32, chunk_size u64, tasks u64,
        committed u64 (records durable on disk), planned u64 (records the run was to write),
        complete u64 (1 once the run wrote and committed all of them), zero padding
    record k, at 64 + k * record_size:
        magic b"REC1", crc32 u32 (of the rest of the record), length u32 (of the payload),
        task u32, seq u64, payload
    after the last record of a complete log: zeros to the end of the last chunk (an
    interrupted log may hold partly written records past its committed ones)

Only the public API is used here: this module is also an example to read.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Final, TextIO, final

import anyio
import anyio.lowlevel
import anyio.to_thread

import aiopmem

__all__ = [
    "DemoConfig",
    "Log",
    "Verification",
    "check_log",
    "chunk_paths",
    "run_demo",
    "run_verify",
    "verify_directory",
]

MiB: Final = 1 << 20

LOG_MAGIC: Final = b"AIOPMLOG"
LOG_VERSION: Final = 2
LOG_HEADER: Final = struct.Struct("<8sIIQQQQQ")
#: Offset of the committed count in the header (written by each commit).
COMMITTED_AT: Final = 32
#: Offset of the complete flag in the header (written by the last commit).
COMPLETE_AT: Final = 48
#: Seconds between two commits while the writers run.
COMMIT_INTERVAL: Final = 0.05
#: Records start here. 64 rather than LOG_HEADER.size (40) leaves room for the header to grow,
#: and also shifts the records so that even a record size dividing the chunk size (256 and
#: 4 MiB, the defaults) makes records straddle the chunk boundaries.
LOG_HEADER_SIZE: Final = 64
RECORD_MAGIC: Final = b"REC1"
#: magic and crc32; the crc covers everything after them (length, task, seq, payload).
RECORD_HEAD: Final = struct.Struct("<4sI")
RECORD_BODY: Final = struct.Struct("<IIQ")
RECORD_HEADER_SIZE: Final = RECORD_HEAD.size + RECORD_BODY.size  # 24
_CRC_FROM: Final = RECORD_HEAD.size

CHUNK_GLOB: Final = "chunk-*.log"


def chunk_path(directory: Path, index: int) -> Path:
    """The file of chunk ``index`` (names sort in log order)."""
    return directory / f"chunk-{index:05d}.log"


def chunk_paths(directory: Path) -> list[Path]:
    """The chunk files of the log in ``directory``, in log order."""
    return sorted(directory.glob(CHUNK_GLOB))


def create_chunk(path: Path, size: int) -> None:
    """Create a chunk file of ``size`` bytes (blocking: run it in a worker thread).

    ftruncate gives the file its size without writing anything. posix_fallocate then reserves
    its blocks, so that a full disk is an OSError here and not a SIGBUS on the first store into
    a page the file system cannot back; file systems without it keep the sparse file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def records_of_task(task: int, records: int, tasks: int) -> int:
    """How many of ``records`` task ``task`` writes: an even split, the first ones one more."""
    return records // tasks + (task < records % tasks)


def payload_pattern(length: int) -> bytes:
    """A byte pattern from which every payload is a slice (cheap to make, different for every
    record): 256 bytes longer than a payload."""
    return bytes(range(256)) * (length // 256 + 2)


def encode_record(
    buf: memoryview | bytearray,
    offset: int,
    task: int,
    seq: int,
    record_size: int,
    pattern: bytes,
) -> None:
    """Write one record at ``offset`` of ``buf`` (a writer's batch, copied into the log by
    ``await rsv.write()``)."""
    length = record_size - RECORD_HEADER_SIZE
    start = (seq * 131 + task * 31) & 0xFF
    RECORD_BODY.pack_into(buf, offset + _CRC_FROM, length, task, seq)
    buf[offset + RECORD_HEADER_SIZE : offset + record_size] = pattern[start : start + length]
    crc = zlib.crc32(buf[offset + _CRC_FROM : offset + record_size])
    RECORD_HEAD.pack_into(buf, offset, RECORD_MAGIC, crc)


# -- writing ------------------------------------------------------------------------------------


@final
class Log:
    """A log of fixed-size records in chunk files mapped back to back into one reservation.

    Used by the tasks of one event loop: ``claim()`` hands out consecutive ranges without
    awaiting anything unless the log must grow, so the claims of concurrent tasks never overlap.
    """

    def __init__(
        self, rsv: aiopmem.Reservation, directory: Path, chunk_size: int, record_size: int
    ) -> None:
        self.rsv = rsv
        self.directory = directory
        self.chunk_size = chunk_size
        self.record_size = record_size
        self.chunks: list[aiopmem.Mapping] = []
        #: Records claimed so far: the next claim starts after them.
        self.records = 0
        #: Bytes of the log backed by mapped chunk files.
        self.capacity = 0
        #: Held by the one task that adds a chunk; the others that need room wait on it.
        self.growing = anyio.Lock()
        self.extends = 0
        self.waits = 0
        #: Records durable on disk and counted in the header.
        self.committed = 0
        #: Every record before this one is written (claims finish out of order).
        self.written = 0
        #: Finished claims beyond ``written``: first record -> end.
        self.finished: dict[int, int] = {}
        #: One commit at a time (the committer task, the final commit).
        self.committing = anyio.Lock()
        self.commits = 0

    @classmethod
    async def create(
        cls,
        directory: Path,
        chunk_size: int,
        record_size: int,
        tasks: int,
        max_size: int,
        planned: int = 0,
    ) -> Log:
        """A new, empty log in ``directory``: one chunk, a persisted log header with no record
        committed yet (``planned``: the records the run is to write).

        ``max_size`` is passed to ``reserve()``: address space kept behind the log so that its
        ``extend()``s up to that size cannot fail (it costs no memory, only address space).
        """
        rsv = await aiopmem.reserve(chunk_size, max_size=max_size)
        log = cls(rsv, directory, chunk_size, record_size)
        try:
            await log.add_chunk()
            with rsv.view(0, LOG_HEADER_SIZE) as header:
                LOG_HEADER.pack_into(
                    header, 0, LOG_MAGIC, LOG_VERSION, record_size, chunk_size, tasks, 0, planned, 0
                )
            await log.chunks[0].persist(0, LOG_HEADER_SIZE)
        except BaseException:
            await rsv.aclose()
            raise
        return log

    async def claim(self, count: int) -> tuple[int, int]:
        """Claim the next ``count`` records of the log: the index of the first one and its
        offset in the reservation, mapped by the time this returns. Write them there with
        ``await rsv.write()`` (the range spans chunk files when the claim straddles a
        boundary), then call ``finish()``.
        """
        first = self.records
        self.records += count  # no await since `first` was read: claims never overlap
        start = LOG_HEADER_SIZE + first * self.record_size
        end = start + count * self.record_size
        if end > self.capacity:
            await self.make_room(end)
        return first, start

    def finish(self, first: int, count: int) -> None:
        """Records ``[first, first + count)`` are written: the next commit may cover them
        once every record before them is written too."""
        self.finished[first] = first + count
        while self.written in self.finished:
            self.written = self.finished.pop(self.written)

    async def make_room(self, end: int) -> None:
        """Return once the log is mapped up to ``end``; one task at a time adds chunks."""
        if self.growing.locked():
            self.waits += 1
        async with self.growing:
            while end > self.capacity:  # another task may have grown it meanwhile
                await self.add_chunk()

    async def add_chunk(self) -> None:
        """Create the next chunk file, extend the reservation by one chunk and map it there."""
        index = len(self.chunks)
        path = chunk_path(self.directory, index)
        # Creating a file blocks: never on the event loop.
        await anyio.to_thread.run_sync(create_chunk, path, self.chunk_size)
        offset = index * self.chunk_size
        if offset + self.chunk_size > self.rsv.size:
            await self.rsv.extend(offset + self.chunk_size - self.rsv.size)
            self.extends += 1
        self.chunks.append(await self.rsv.map_file(path, offset))
        self.capacity = offset + self.chunk_size

    async def commit(self, *, complete: bool = False) -> None:
        """Make every record written so far durable, then count it in the header.

        The order is what makes the log crash-consistent: first the new records are persisted
        (``rsv.persist()``: the msyncs of the chunks they cover, in the executor), then the
        count is stored in the header and the header's page persisted. ``complete`` also marks
        the log as finished (all planned records are in)."""
        async with self.committing:
            upto = self.written
            if upto == self.committed and not complete:
                return
            lo = LOG_HEADER_SIZE + self.committed * self.record_size
            hi = LOG_HEADER_SIZE + upto * self.record_size
            await self.rsv.persist(lo, hi - lo)  # the msyncs of every chunk in the range
            with self.rsv.view(0, LOG_HEADER_SIZE) as header:
                struct.pack_into("<Q", header, COMMITTED_AT, upto)
                if complete:
                    struct.pack_into("<Q", header, COMPLETE_AT, 1)
            await self.chunks[0].persist(0, LOG_HEADER_SIZE)
            self.committed = upto
            self.commits += 1

    async def keep_committing(self, interval: float = COMMIT_INTERVAL) -> None:
        """Run until cancelled: commit what is written every ``interval`` seconds."""
        while True:
            await anyio.sleep(interval)
            await self.commit()


async def write_records(log: Log, task: int, count: int, batch: int, progress: Progress) -> None:
    """One writer task: ``count`` records with sequence numbers 0, 1, ..., ``batch`` per
    claim. A batch is encoded in memory of its own, then copied into the log by ``await
    rsv.write()``: the copy, and the page faults of the fresh chunk files it touches, run in
    the executor, never on the event loop."""
    size = log.record_size
    pattern = payload_pattern(size)
    buf = bytearray(batch * size)
    seq = 0
    while seq < count:
        n = min(batch, count - seq)
        for i in range(n):
            encode_record(buf, i * size, task, seq + i, size, pattern)
        first, start = await log.claim(n)
        await log.rsv.write(start, memoryview(buf)[: n * size])
        log.finish(first, n)
        seq += n
        progress.advance(n)
        # Let the other writers in: without an await, this task would write all its records
        # before any other task runs.
        await anyio.lowlevel.checkpoint()


# -- progress -----------------------------------------------------------------------------------


def _tqdm() -> Any:
    # Optional (the `progress` extra), and without type information: imported by name.
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


@final
class Progress:
    """Records written so far: a tqdm bar on a terminal when tqdm is installed (the ``progress``
    extra), otherwise a text line on stderr every few seconds. Short runs show nothing."""

    def __init__(
        self, total: int, enabled: bool, stream: TextIO | None = None, interval: float = 2.0
    ) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        #: Seconds between two text lines (without tqdm).
        self.interval = interval

    def advance(self, n: int) -> None:
        """Count ``n`` more records written."""
        self.done += n

    async def show(self) -> None:
        """Run until cancelled, refreshing the display."""
        if not self.enabled:
            return
        tqdm = _tqdm() if self.stream.isatty() else None
        if tqdm is None:
            await self._show_lines()
            return
        # delay: the bar appears only if the run lasts longer than that.
        bar = tqdm(
            total=self.total, unit="rec", unit_scale=True, delay=0.5, file=self.stream, leave=False
        )
        try:
            while True:
                await anyio.sleep(0.1)
                bar.update(self.done - bar.n)
        finally:
            bar.update(self.done - bar.n)
            bar.close()

    async def _show_lines(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            share = 100 * self.done // max(self.total, 1)
            print(
                f"  ... {self.done:,} of {self.total:,} records written ({share}%)",
                file=self.stream,
                flush=True,
            )


# -- verifying ----------------------------------------------------------------------------------


@dataclass
class Verification:
    """What ``check_log`` / ``verify_directory`` found."""

    #: Records committed (durable and counted in the header): the ones checked.
    records: int = 0
    #: Records the run was to write.
    planned: int = 0
    #: Whether the run finished (False: interrupted; it verifies up to its last commit).
    complete: bool = True
    #: Chunk files past the log's end that a run interrupted while adding them left behind.
    ignored: list[str] = field(default_factory=list)
    tasks: int = 0
    record_size: int = 0
    chunk_size: int = 0
    chunks: int = 0
    #: Records that straddle a chunk boundary (written and read through one view anyway).
    straddling: int = 0
    used_numpy: bool = False
    seconds: float = 0.0
    #: ``describe()`` of the reservation the log was verified in.
    layout: str = ""
    errors: list[str] = field(default_factory=list)
    #: Errors found in all (only the first ``MAX_ERRORS`` are kept in ``errors``).
    error_count: int = 0

    MAX_ERRORS: ClassVar[int] = 20

    @property
    def ok(self) -> bool:
        """Whether the log verified: no problem found."""
        return self.error_count == 0

    def error(self, message: str) -> None:
        """Count a problem (and keep its message, up to ``MAX_ERRORS``)."""
        self.error_count += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(message)


def _numpy() -> ModuleType | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def check_log(view: memoryview, chunk_size: int, *, use_numpy: bool | None = None) -> Verification:
    """Check the log in ``view`` (the whole log: every chunk back to back).

    Checks the log header, every committed record's magic, length and crc32, that every
    task's sequence numbers are 0, 1, 2, ... in log order with none missing, and, for a complete
    log, that every planned record is there and nothing but zeros follows the last one (an
    interrupted log may hold partly written records past its last commit: they are not
    checked). ``use_numpy=None`` uses numpy when it is installed.
    """
    result = Verification(chunk_size=chunk_size, chunks=len(view) // chunk_size)
    if len(view) < LOG_HEADER_SIZE:
        result.error(f"the log is {len(view)} bytes long, shorter than its header")
        return result
    header = LOG_HEADER.unpack_from(view)
    magic, version, record_size, header_chunk, tasks, records, planned, complete = header
    if magic != LOG_MAGIC or version != LOG_VERSION:
        result.error(f"bad log header: magic {magic!r}, version {version}")
        return result
    if header_chunk != chunk_size:
        result.error(
            f"the log header says chunks of {header_chunk} bytes, the files have {chunk_size}"
        )
        return result
    if not RECORD_HEADER_SIZE <= record_size <= chunk_size or tasks < 1:
        result.error(f"bad log header: record_size {record_size}, tasks {tasks}")
        return result
    end = LOG_HEADER_SIZE + records * record_size
    if end > len(view):
        result.error(f"the log header counts {records} records, more than the chunks can hold")
        return result
    if complete not in (0, 1) or records > planned or (complete and records != planned):
        result.error(
            f"bad log header: {records} records committed of {planned} planned, "
            f"complete flag {complete}"
        )
        return result
    result.records, result.tasks, result.record_size = records, tasks, record_size
    result.planned, result.complete = planned, bool(complete)
    result.straddling = sum(
        1
        for boundary in range(chunk_size, end, chunk_size)
        if boundary > LOG_HEADER_SIZE and (boundary - LOG_HEADER_SIZE) % record_size
    )
    np = _numpy() if use_numpy is not False else None
    if use_numpy and np is None:
        raise ModuleNotFoundError("numpy is not installed")
    if np is not None:
        result.used_numpy = True
        _check_records_numpy(np, view, result, end)
    else:
        _check_records(view, result, end)
    return result


def _check_records(view: memoryview, result: Verification, end: int) -> None:
    """The record checks in plain Python, one record at a time."""
    size, tasks = result.record_size, result.tasks
    length = size - RECORD_HEADER_SIZE
    next_seq = [0] * tasks
    unpack_head, unpack_body = RECORD_HEAD.unpack_from, RECORD_BODY.unpack_from
    crc32 = zlib.crc32
    for index in range(result.records):
        at = LOG_HEADER_SIZE + index * size
        magic, crc = unpack_head(view, at)
        got_length, task, seq = unpack_body(view, at + _CRC_FROM)
        problem = _record_problem(
            magic, got_length, length, task, tasks, crc, crc32(view[at + _CRC_FROM : at + size])
        )
        if problem:
            result.error(f"record {index} (at offset {at:#x}): {problem}")
            continue
        if seq != next_seq[task]:
            result.error(_gap(task, next_seq[task], seq))
        next_seq[task] = seq + 1
    _check_counts(result, next_seq)
    _check_tail(view, result, end, _first_nonzero(view, end) if result.complete else None)


def _check_records_numpy(np: ModuleType, view: memoryview, result: Verification, end: int) -> None:
    """The same checks with the headers of all records as one numpy array over the view: the
    structural checks are vectorised, the crc32 of each record is still zlib's."""
    size, tasks, count = result.record_size, result.tasks, result.records
    length = size - RECORD_HEADER_SIZE
    dtype = np.dtype(
        [("magic", "S4"), ("crc", "<u4"), ("length", "<u4"), ("task", "<u4"), ("seq", "<u8")]
    )
    # No copy: record k's header is at LOG_HEADER_SIZE + k * size of the mapped log.
    heads = np.ndarray((count,), dtype=dtype, buffer=view, offset=LOG_HEADER_SIZE, strides=(size,))
    crc32 = zlib.crc32
    crcs = np.fromiter(
        (
            crc32(view[at + _CRC_FROM : at + size])
            for at in range(LOG_HEADER_SIZE, LOG_HEADER_SIZE + count * size, size)
        ),
        dtype=np.uint32,
        count=count,
    )
    bad = (
        (heads["magic"] != RECORD_MAGIC)
        | (heads["length"] != length)
        | (heads["task"] >= tasks)
        | (heads["crc"] != crcs)
    )
    for index in np.flatnonzero(bad).tolist():
        head = heads[index]
        problem = _record_problem(
            bytes(head["magic"]),
            int(head["length"]),
            length,
            int(head["task"]),
            tasks,
            int(head["crc"]),
            int(crcs[index]),
        )
        result.error(f"record {index} (at offset {LOG_HEADER_SIZE + index * size:#x}): {problem}")
    good = ~bad
    task_of, seq_of = heads["task"][good], heads["seq"][good]
    next_seq = [0] * tasks
    for task in range(tasks):
        seqs = seq_of[task_of == task]
        if not len(seqs):
            continue
        # Complete and in order: each sequence number is the one before plus one, starting at 0
        # (each gap is reported once, as the plain checker does).
        want = np.concatenate((np.zeros(1, dtype=seqs.dtype), seqs[:-1] + 1))
        for k in np.flatnonzero(seqs != want).tolist():
            result.error(_gap(task, int(want[k]), int(seqs[k])))
        next_seq[task] = int(seqs[-1]) + 1
    del heads, task_of, seq_of, bad, good
    _check_counts(result, next_seq)
    if not result.complete:
        return
    tail = np.frombuffer(view, dtype=np.uint8, offset=end)
    nonzero = np.flatnonzero(tail)
    first = end + int(nonzero[0]) if len(nonzero) else None
    del tail, nonzero
    _check_tail(view, result, end, first)


def _record_problem(
    magic: bytes, got_length: int, length: int, task: int, tasks: int, crc: int, computed: int
) -> str:
    if magic != RECORD_MAGIC:
        return f"bad magic {magic!r}"
    if got_length != length:
        return f"length {got_length}, expected {length}"
    if crc != computed:
        return f"crc32 {crc:#010x} does not match the contents ({computed:#010x})"
    if task >= tasks:
        return f"task {task} out of range (the log has {tasks} tasks)"
    return ""


def _gap(task: int, expected: int, seq: int) -> str:
    if seq == expected + 1:
        return f"task {task}: sequence number {expected} is missing"
    if seq > expected:
        return f"task {task}: sequence numbers {expected} to {seq - 1} are missing"
    return f"task {task}: sequence number {seq} where {expected} was expected"


def _check_counts(result: Verification, next_seq: list[int]) -> None:
    if not result.complete:  # an interrupted log: each task's records are a gapless prefix
        return
    for task, seen in enumerate(next_seq):
        want = records_of_task(task, result.planned, result.tasks)
        if seen != want:
            result.error(
                f"task {task}: the last sequence number is {seen - 1}, expected {want - 1}"
            )


def _first_nonzero(view: memoryview, start: int) -> int | None:
    piece = 1 << 20
    zeros = bytes(piece)
    for lo in range(start, len(view), piece):
        chunk = view[lo : lo + piece]
        if chunk != zeros[: len(chunk)]:
            data = chunk.tobytes()
            return lo + len(data) - len(data.lstrip(b"\0"))
    return None


def _check_tail(view: memoryview, result: Verification, end: int, first: int | None) -> None:
    if first is not None and result.complete:
        result.error(
            f"byte {first:#x} after the last record (which ends at {end:#x}) is not zero: "
            "data past the committed end of the log"
        )


async def verify_directory(directory: Path, *, use_numpy: bool | None = None) -> Verification:
    """Map the chunk files of the log in ``directory`` back to back, read-only, into a fresh
    reservation and check the log through one view of all of it (see ``check_log``)."""
    paths = chunk_paths(directory)
    if not paths:
        result = Verification()
        result.error(f"no chunk files ({CHUNK_GLOB}) in {directory}")
        return result
    sizes = await anyio.to_thread.run_sync(lambda: [p.stat().st_size for p in paths])
    chunk_size = sizes[0]
    # A run interrupted while it added a chunk can leave the new file short (created, not yet
    # sized): files of another size are accepted at the end only, and only in an interrupted
    # log (checked below).
    used = next((i for i, s in enumerate(sizes) if s != chunk_size), len(sizes))
    if chunk_size == 0 or chunk_size % aiopmem.ALIGNMENT or chunk_size in sizes[used:]:
        result = Verification()
        result.error(f"the chunk files do not all have one size, a multiple of the page: {sizes}")
        return result
    extra, paths = [p.name for p in paths[used:]], paths[:used]
    total = chunk_size * len(paths)
    started = time.perf_counter()
    # max_size = size: a log being read does not grow, it needs no headroom.
    async with aiopmem.reserve(total, max_size=total) as rsv:
        async with anyio.create_task_group() as tg:
            for index, path in enumerate(paths):
                # Mapped concurrently, each at its own offset: back to back.
                tg.start_soon(
                    partial(
                        rsv.map_file, path, index * chunk_size, protection=aiopmem.Protection.READ
                    )
                )
        # The checking is CPU work over the mapped files: a worker thread, not the event loop.
        result = await anyio.to_thread.run_sync(_check_reservation, rsv, chunk_size, use_numpy)
        result.layout = rsv.describe()
    result.ignored = extra
    if extra and result.complete:
        result.error(f"chunk files of another size after the end of a complete log: {extra}")
    result.seconds = time.perf_counter() - started
    return result


def _check_reservation(
    rsv: aiopmem.Reservation, chunk_size: int, use_numpy: bool | None
) -> Verification:
    view = rsv.view()  # one buffer over every chunk
    try:
        return check_log(view, chunk_size, use_numpy=use_numpy)
    finally:
        # check_log leaves no array or slice over the view behind: the reservation can close.
        view.release()


# -- the demo -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """The demo's options (see ``python -m aiopmem demo --help``)."""

    tasks: int = 8
    records: int = 200_000
    record_size: int = 256
    chunk_size: int = 4 * MiB
    batch: int = 64
    directory: Path | None = None
    backend: str = "asyncio"
    uvloop: bool = False
    progress: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` for options that make no log."""
        if self.tasks < 1:
            raise ValueError("--tasks must be at least 1")
        if self.records < 0:
            raise ValueError("--records must not be negative")
        if self.batch < 1:
            raise ValueError("--batch must be at least 1")
        if self.chunk_size <= 0 or self.chunk_size % aiopmem.ALIGNMENT:
            raise ValueError(f"--chunk-size must be a positive multiple of {aiopmem.ALIGNMENT}")
        if not RECORD_HEADER_SIZE <= self.record_size <= self.chunk_size:
            raise ValueError(
                f"--record-size must be between {RECORD_HEADER_SIZE} (the record header) "
                "and the chunk size"
            )


@dataclass
class WriteStats:
    """What ``write_log`` measured and counted."""

    seconds: float = 0.0
    persist_seconds: float = 0.0
    chunks: int = 0
    extends: int = 0
    waits: int = 0
    commits: int = 0
    address: int = 0
    moved: bool = False
    size: int = 0


def rate(count: float, seconds: float) -> str:
    """``count / seconds``, for people."""
    return f"{count / seconds:,.0f}" if seconds > 0 else "inf"


async def write_log(config: DemoConfig, directory: Path) -> WriteStats:
    """Write the log: ``config.tasks`` concurrent writers, then commit and close."""
    stats = WriteStats()
    log_bytes = LOG_HEADER_SIZE + config.records * config.record_size
    chunks = max(1, -(-log_bytes // config.chunk_size))
    progress = Progress(config.records, config.progress)
    started = time.perf_counter()
    log = await Log.create(
        directory,
        config.chunk_size,
        config.record_size,
        config.tasks,
        chunks * config.chunk_size,
        planned=config.records,
    )
    stats.address = log.rsv.address
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(progress.show)
            outer.start_soon(log.keep_committing)
            async with anyio.create_task_group() as writers:
                for task in range(config.tasks):
                    count = records_of_task(task, config.records, config.tasks)
                    writers.start_soon(write_records, log, task, count, config.batch, progress)
            outer.cancel_scope.cancel()  # stop the progress display and the committer
        stats.seconds = time.perf_counter() - started
        started = time.perf_counter()
        await log.commit(complete=True)
        stats.persist_seconds = time.perf_counter() - started
        stats.chunks, stats.extends, stats.waits = len(log.chunks), log.extends, log.waits
        stats.commits = log.commits
        stats.moved = log.rsv.address != stats.address
        stats.size = log.rsv.size
    finally:
        await log.rsv.aclose()
    return stats


async def demo(config: DemoConfig, directory: Path, out: Callable[[str], None]) -> bool:
    """Write the log into ``directory``, verify it, report; True if it verified."""
    total = config.records * config.record_size
    out(
        f"writing {config.records:,} records of {config.record_size} bytes "
        f"({_human(total)}) from {config.tasks} tasks into chunks of "
        f"{_human(config.chunk_size)} in {directory}"
    )
    stats = await write_log(config, directory)
    out(
        f"  written in {stats.seconds:.2f} s: {rate(config.records, stats.seconds)} records/s, "
        f"{rate(total / MiB, stats.seconds)} MiB/s"
    )
    out(
        f"  {stats.chunks} chunk files mapped back to back; the reservation grew to "
        f"{_human(stats.size)} by {stats.extends} extend()s and stayed at {stats.address:#x}"
        + (" (MOVED!)" if stats.moved else "")
    )
    out(f"  {stats.waits} times a writer waited for the next chunk to be mapped")
    out(
        f"  committed as it went: {stats.commits} commits (each persists the new records, "
        f"then the header that counts them); the last one took {stats.persist_seconds:.2f} s"
    )
    out("reopening the chunk files read-only in a fresh reservation and verifying every record")
    result = await verify_directory(directory)
    report(result, out)
    return result.ok


def report(result: Verification, out: Callable[[str], None]) -> None:
    """Print what a verification found."""
    how = "numpy array + zlib.crc32" if result.used_numpy else "struct + zlib.crc32"
    out(
        f"  {result.records:,} records in {result.chunks} chunks checked in "
        f"{result.seconds:.2f} s through one view ({how}): "
        f"{rate(result.records, result.seconds)} records/s, "
        f"{rate(result.records * result.record_size / MiB, result.seconds)} MiB/s"
    )
    if not result.complete:
        out(
            f"  the run was interrupted: {result.records:,} of {result.planned:,} records "
            "were committed; only those are checked"
            + (f" (ignored: {', '.join(result.ignored)})" if result.ignored else "")
        )
    if result.ok:
        what = "complete and in order" if result.complete else "in order, with no gap"
        out(
            f"  every record is intact (magic, length, crc32); all {result.tasks} tasks' "
            f"sequence numbers are {what}; "
            f"{result.straddling} records straddle a chunk boundary"
        )
    if result.layout:
        out("layout of the reopened log:")
        out(result.layout)
    if result.ok:
        if result.complete:
            out("OK: the log verified")
        else:
            out(
                "OK: the interrupted log verified up to its last commit "
                f"({result.records:,} records)"
            )
        return
    out(f"FAILED: {result.error_count} problem(s) found")
    for message in result.errors:
        out(f"  {message}")
    if result.error_count > len(result.errors):
        out(f"  ... and {result.error_count - len(result.errors)} more")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run_async(fn: Callable[[], Any], backend: str, uvloop: bool) -> Any:
    """``anyio.run`` on the chosen backend."""
    options: dict[str, Any] = {"use_uvloop": True} if uvloop else {}
    return anyio.run(fn, backend=backend, backend_options=options)


@contextlib.contextmanager
def log_directory(directory: Path | None) -> Iterator[Path]:
    """``directory`` (created if missing; it must not hold a log already), or a fresh temporary
    directory that is removed afterwards."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        if chunk_paths(directory):
            raise FileExistsError(
                f"{directory} already holds a log ({CHUNK_GLOB}); choose another directory, "
                f"or check it with: python -m aiopmem verify {directory}"
            )
        yield directory
        return
    temporary = Path(tempfile.mkdtemp(prefix="aiopmem-demo-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def run_demo(config: DemoConfig, out: Callable[[str], None] = print) -> int:
    """The demo, start to end; returns the exit status (0: verified, 1: it did not)."""
    config.check()
    loop = config.backend + (" + uvloop" if config.uvloop else "")
    out(f"aiopmem {aiopmem.__version__} demo: a growable, persistent log on {loop}")
    with log_directory(config.directory) as directory:
        ok = run_async(partial(demo, config, directory, out), config.backend, config.uvloop)
        if config.directory is None:
            out(f"removing {directory} (pass --dir to keep the log)")
    return 0 if ok else 1


def run_verify(
    directory: Path,
    backend: str = "asyncio",
    uvloop: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """``python -m aiopmem verify DIR``: verify a log the demo left there (``--dir``)."""
    out(f"verifying the log in {directory}")
    result = run_async(partial(verify_directory, directory), backend, uvloop)
    report(result, out)
    return 0 if result.ok else 1
