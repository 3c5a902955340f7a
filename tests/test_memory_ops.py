"""Memory operations (contract v1.1): populate, advise, protect, lock/unlock, the copies
(write, read, read_into) of mappings and of reservation ranges, ``reserve(alignment=)`` and
``populate=`` of the maps.

Each scenario runs on the sync API and on the async API of every backend (the ``api``
fixture), and checks what the kernel shows: ``Rss``, ``Locked``, ``AnonHugePages`` and
``VmFlags`` in /proc/self/smaps, permissions in /proc/self/maps, VmSize.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import apis
import kernel
from aiopmem.sync import (
    ALIGNMENT,
    AddressUnalignedError,
    Advice,
    AlignmentError,
    ClosedError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    NoAccessError,
    OffsetOutOfRangeError,
    Protection,
    Sharing,
)
from aiopmem.testing import inject
from conftest import make_file
from sizes import MiB

P = ALIGNMENT
R = Protection.READ
RW = Protection.READ | Protection.WRITE
THP = 2 * MiB


def rss(m: Any) -> int:
    return kernel.smaps(m.address, m.address + m.size).get("Rss", 0)


def perms(m: Any) -> str:
    (v,) = kernel.vmas_in(m.address, m.address + m.size)
    return v.perms


# -- populate ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("api")
def test_populate_faults_the_range_in(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", 4 * MiB)
    with apis.reserve(16 * MiB) as rsv:
        anon = rsv.map_anonymous(0, 2 * MiB)
        file = rsv.map_file(f, 4 * MiB)
        assert rss(anon) == 0 and rss(file) == 0
        anon.populate(P, 4 * P)
        assert rss(anon) == 4 * P
        anon.populate()
        assert rss(anon) == 2 * MiB
        # For writing: the file's pages are dirty-ready (shared), so they are resident.
        file.populate()
        assert rss(file) == 4 * MiB
        # A range not on page boundaries is rounded out to whole pages.
        anon2 = rsv.map_anonymous(8 * MiB, 8 * P)
        anon2.populate(P + 1, 2)
        assert rss(anon2) == P
        kernel.assert_matches_kernel(rsv)


@pytest.mark.usefixtures("api")
def test_populate_private_file_mapping_for_writing_makes_private_copies(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB, b"z")
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_file(f, 0, sharing=Sharing.PRIVATE)
        m.populate()
        fields = kernel.smaps(m.address, m.address + m.size)
        assert fields["Rss"] == MiB and fields["Anonymous"] == MiB  # copied on write
        ro = rsv.map_file(f, 2 * MiB, protection=R, sharing=Sharing.PRIVATE)
        ro.populate()
        fields = kernel.smaps(ro.address, ro.address + ro.size)
        assert fields["Rss"] == MiB and fields["Anonymous"] == 0  # read: the file's pages
        assert bytes(ro.view()[:3]) == b"zzz"


@pytest.mark.usefixtures("api")
def test_populate_falls_back_to_touching_pages() -> None:
    """A kernel without MADV_POPULATE_* refuses it with EINVAL: each page is touched instead,
    and its contents stay (the write touch adds zero atomically)."""
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, 64 * P)
        m.view()[5 * P] = 7
        with inject("madvise", errno=errno.EINVAL) as inj:
            m.populate()
        assert inj.fired == 1
        assert rss(m) == 64 * P
        assert m.view()[5 * P] == 7


@pytest.mark.usefixtures("api")
def test_populate_errors() -> None:
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, 4 * P)
        with pytest.raises(OffsetOutOfRangeError):
            m.populate(5 * P)
        with pytest.raises(LengthOutOfRangeError):
            m.populate(0, 5 * P)
        with pytest.raises(LengthOutOfRangeError):
            m.populate(0, -1)
        with pytest.raises(TypeError):
            m.populate(0.5)
        with inject("madvise", errno=errno.ENOMEM), pytest.raises(OSError) as err:
            m.populate()
        assert err.value.errno == errno.ENOMEM and type(err.value) is OSError
        none = rsv.map_anonymous(P * 8, P, protection=Protection.NONE)
        with pytest.raises(NoAccessError):
            none.populate()
        assert rss(none) == 0
        m.unmap()
        with pytest.raises(ClosedError):
            m.populate()


@pytest.mark.usefixtures("api")
def test_map_with_populate(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    with apis.reserve(8 * MiB) as rsv:
        a = rsv.map_anonymous(0, MiB, populate=True)
        b = rsv.map_file(f, 2 * MiB, populate=True)
        c = rsv.map_file(str(f), 4 * MiB, populate=True, protection=R)
        assert rss(a) == MiB and rss(b) == MiB and rss(c) == MiB
        # A populate that fails undoes the map: nothing is left, the range is a placeholder.
        with inject("madvise", errno=errno.ENOMEM), pytest.raises(OSError):
            rsv.map_anonymous(6 * MiB, MiB, populate=True)
        assert rsv.find(6 * MiB) is None and len(rsv.mappings()) == 3
        with pytest.raises(NoAccessError):
            rsv.map_anonymous(6 * MiB, MiB, protection=Protection.NONE, populate=True)
        assert rsv.find(6 * MiB) is None
        kernel.assert_matches_kernel(rsv)


# -- advise ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("api")
def test_advise_reaches_the_kernel() -> None:
    with apis.reserve(8 * MiB) as rsv:
        m = rsv.map_anonymous(0, 4 * MiB, sharing=Sharing.PRIVATE)
        for advice, flag in [
            (Advice.RANDOM, "rr"),
            (Advice.SEQUENTIAL, "sr"),
            (Advice.HUGEPAGE, "hg"),
            (Advice.NOHUGEPAGE, "nh"),
        ]:
            m.advise(advice)
            assert flag in kernel.vm_flags(m.address), advice
        m.advise(Advice.NORMAL)
        assert not {"rr", "sr"} & kernel.vm_flags(m.address)
        # Part of the range: the kernel splits the VMA there.
        m.advise(Advice.RANDOM, MiB, MiB)
        assert "rr" in kernel.vm_flags(m.address + MiB)
        assert "rr" not in kernel.vm_flags(m.address)
        # DONTNEED drops private anonymous pages: they read back as zeros.
        m.view()[:4] = b"abcd"
        m.advise(Advice.DONTNEED, 0, P)
        assert bytes(m.view()[:4]) == b"\0\0\0\0"
        for advice in (Advice.WILLNEED, Advice.COLD, Advice.PAGEOUT):
            m.advise(advice)
        kernel.assert_matches_kernel(rsv)


@pytest.mark.usefixtures("api")
def test_advise_errors() -> None:
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, 4 * P)
        for bad in (4, "RANDOM", None, Protection.READ):
            with pytest.raises(TypeError):
                m.advise(bad)
        with pytest.raises(OffsetOutOfRangeError):
            m.advise(Advice.RANDOM, -1)
        with pytest.raises(LengthOutOfRangeError):
            m.advise(Advice.RANDOM, P, 4 * P)
        with inject("madvise", errno=errno.EAGAIN) as inj, pytest.raises(OSError) as err:
            m.advise(Advice.WILLNEED)
        assert err.value.errno == errno.EAGAIN and inj.fired == 1


# -- protect -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("api")
def test_protect_changes_the_kernels_permissions(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_file(f, 0)
        assert perms(m) == "rw-s"
        m.protect(R)
        assert perms(m) == "r--s" and m.protection == R
        assert m.view().readonly
        with pytest.raises(NoAccessError):
            m.write(0, b"x")
        m.protect(Protection.NONE)
        assert perms(m) == "---s"
        with pytest.raises(NoAccessError):
            m.view()
        m.protect(RW)
        assert perms(m) == "rw-s" and not m.view().readonly
        m.write(0, b"ok")
        assert f.read_bytes()[:2] == b"ok"
        kernel.assert_matches_kernel(rsv)


@pytest.mark.usefixtures("api")
def test_protect_and_live_views() -> None:
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, 4 * P, protection=R)
        view = m.view()
        # Adding access is allowed while buffers are exported; the view keeps its access.
        m.protect(RW)
        assert perms(m) == "rw-s" and view.readonly
        # Taking access away is not.
        for less in (R, Protection.NONE, Protection.WRITE):
            with pytest.raises(BufferError):
                m.protect(less)
            assert perms(m) == "rw-s" and m.protection == RW
        # EXEC alone is not access a buffer has.
        m.protect(RW | Protection.EXEC)
        assert perms(m) == "rwxs"
        view.release()
        m.protect(R)
        assert perms(m) == "r--s"


@pytest.mark.usefixtures("api")
def test_protect_errors(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    fd = os.open(f, os.O_RDONLY)
    try:
        with apis.reserve(4 * MiB) as rsv:
            ro = rsv.map_file(fd, 0, protection=R)
            with pytest.raises(NoAccessError):
                ro.protect(RW)  # a shared mapping of a read-only descriptor
            assert perms(ro) == "r--s" and ro.protection == R
            path_ro = rsv.map_file(str(f), 2 * MiB, protection=R)
            with pytest.raises(NoAccessError):
                path_ro.protect(RW)  # the library opened it read-only
            private = rsv.map_file(fd, MiB, protection=R, sharing=Sharing.PRIVATE)
            private.protect(RW)  # copy-on-write: allowed
            assert perms(private) == "rw-p"
            for bad in (1, "READ", None, Advice.NORMAL):
                with pytest.raises(TypeError):
                    ro.protect(bad)
            with inject("mprotect", errno=errno.ENOMEM) as inj, pytest.raises(OSError) as err:
                private.protect(R)
            assert err.value.errno == errno.ENOMEM and inj.fired == 1
            assert perms(private) == "rw-p" and private.protection == RW
            ro.unmap()
            with pytest.raises(ClosedError):
                ro.protect(R)
    finally:
        os.close(fd)


# -- lock --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("api")
def test_lock_and_unlock(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    with apis.reserve(4 * MiB) as rsv:
        for m in (rsv.map_anonymous(0, MiB), rsv.map_file(f, 2 * MiB)):
            assert not m.locked
            m.lock()
            fields = kernel.smaps(m.address, m.address + m.size)
            assert m.locked and fields["Locked"] == MiB and fields["Rss"] == MiB
            m.lock()  # idempotent
            assert m.locked
            m.unlock()
            assert not m.locked
            assert kernel.smaps(m.address, m.address + m.size)["Locked"] == 0
            m.unlock()
            m.lock()
            m.unmap()  # a locked mapping unmaps: its placeholder is not locked
            (v,) = kernel.vmas_in(m.address, m.address + MiB)
            assert kernel.is_placeholder(v)
            assert kernel.smaps(m.address, m.address + MiB)["Locked"] == 0


@pytest.mark.usefixtures("api")
def test_lock_refused_stays_unlocked() -> None:
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, MiB)
        with inject("mlock", errno=errno.ENOMEM) as inj, pytest.raises(OSError) as err:
            m.lock()
        assert err.value.errno == errno.ENOMEM and inj.fired == 1
        assert not m.locked and kernel.smaps(m.address, m.address + MiB)["Locked"] == 0
        m.lock()
        with inject("munlock", errno=errno.EAGAIN), pytest.raises(OSError):
            m.unlock()
        assert m.locked
        m.unlock()
        assert not m.locked


def test_lock_beyond_rlimit_memlock() -> None:
    """Beyond RLIMIT_MEMLOCK: OSError (ENOMEM for an unprivileged process, EPERM with a zero
    limit), and nothing stays locked. Run as an unprivileged user when the tests run as root
    (CAP_IPC_LOCK ignores the limit)."""
    script = textwrap.dedent(
        """
        import errno, os, resource
        import aiopmem.sync as s
        import kernel
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
        rsv = s.reserve(1 << 24)
        m = rsv.map_anonymous(0, 1 << 20)
        if os.geteuid() == 0:
            os.setresuid(65534, 65534, 65534)
        try:
            m.lock()
        except OSError as e:
            assert e.errno in (errno.ENOMEM, errno.EPERM, errno.EAGAIN), e
            assert not m.locked
            assert kernel.smaps(m.address, m.address + (1 << 20)).get("Locked", 0) == 0
            print("refused", errno.errorcode[e.errno])
        small = rsv.map_anonymous(4 << 20, 16 * 1024)
        small.lock()
        assert small.locked
        print("small locked")
        """
    )
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    refused, small = out.stdout.splitlines()
    assert refused in ("refused ENOMEM", "refused EPERM", "refused EAGAIN")
    assert small == "small locked"


# -- copies ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("api")
def test_mapping_write_read(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_file(f, 0)
        assert m.write(10, b"hello") == 5
        assert m.read(10, 5) == b"hello"
        assert bytes(m.view()[10:15]) == b"hello"
        assert m.write(MiB - 3, bytearray(b"end")) == 3
        assert m.read(MiB - 3) == b"end"
        assert m.read(MiB) == b"" and m.write(MiB, b"") == 0
        import numpy as np

        arr = np.arange(1000, dtype=np.int64)
        assert m.write(P, arr) == 8000  # in bytes, whatever the item size
        assert m.read(P, 8000) == arr.tobytes()
        out = np.zeros(1000, dtype=np.int64)
        assert m.read_into(out, P) == 8000
        assert (out == arr).all()
        buf = bytearray(5)
        assert m.read_into(memoryview(buf), 10) == 5 and buf == b"hello"
        whole = m.read()
        assert len(whole) == MiB and type(whole) is bytes
        m.persist()
        data = f.read_bytes()
        assert data[10:15] == b"hello" and data[-3:] == b"end"
        kernel.assert_matches_kernel(rsv)


@pytest.mark.usefixtures("api")
def test_mapping_copy_errors_in_order() -> None:
    with apis.reserve(4 * MiB) as rsv:
        m = rsv.map_anonymous(0, 4 * P)
        ro = rsv.map_anonymous(8 * P, 4 * P, protection=R)
        none = rsv.map_anonymous(16 * P, P, protection=Protection.NONE)
        for bad in ("text", 5, None, [1, 2]):
            with pytest.raises(TypeError):
                m.write(0, bad)
        import numpy as np

        with pytest.raises(TypeError):  # not C-contiguous
            m.write(0, np.zeros((4, 4))[:, 0])
        with pytest.raises(TypeError):  # read_into a read-only buffer
            m.read_into(b"12345", 0)
        with pytest.raises(TypeError):
            m.write(1.0, b"x")
        # offset, then length, then access: each check wins over the later ones.
        with pytest.raises(OffsetOutOfRangeError):
            ro.write(-1, b"x" * (5 * P))
        with pytest.raises(OffsetOutOfRangeError):
            m.write(4 * P + 1, b"x")
        with pytest.raises(LengthOutOfRangeError):
            ro.write(P, b"x" * (4 * P))
        with pytest.raises(NoAccessError):
            ro.write(0, b"x")
        with pytest.raises(NoAccessError):
            none.read(0, 1)
        with pytest.raises(NoAccessError):
            none.read_into(bytearray(1))
        with pytest.raises(LengthOutOfRangeError):
            m.read(0, 4 * P + 1)
        with pytest.raises(LengthOutOfRangeError):
            m.read(0, -1)
        with pytest.raises(LengthOutOfRangeError):
            m.read_into(bytearray(4 * P + 1), 0)
        assert ro.read(0, 4) == b"\0" * 4
        m.unmap()
        with pytest.raises(ClosedError):
            m.write(0, b"x")
        with pytest.raises(ClosedError):
            m.read()


@pytest.mark.usefixtures("api")
def test_reservation_copies_across_mappings(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", 2 * P)
    with apis.reserve(4 * MiB) as rsv:
        a = rsv.map_anonymous(0, 2 * P)
        b = rsv.map_file(f, 2 * P)
        c = rsv.map_anonymous(4 * P, 2 * P)
        data = bytes(range(256)) * (6 * P // 256)
        assert rsv.write(0, data) == 6 * P
        assert rsv.read(0, 6 * P) == data
        assert bytes(a.view()) + bytes(b.view()) + bytes(c.view()) == data
        buf = bytearray(3 * P)
        assert rsv.read_into(buf, P + 1) == 3 * P
        assert buf == data[P + 1 : 4 * P + 1]
        rsv.persist()
        assert f.read_bytes() == data[2 * P : 4 * P]
        rsv.populate(0, 6 * P)
        assert rss(a) + rss(b) + rss(c) == 6 * P
        kernel.assert_matches_kernel(rsv)


@pytest.mark.usefixtures("api")
def test_reservation_copy_errors() -> None:
    with apis.reserve(4 * MiB) as rsv:
        size = rsv.size
        rsv.map_anonymous(0, 2 * P)
        rsv.map_anonymous(4 * P, 2 * P, protection=R)
        with pytest.raises(TypeError):
            rsv.write(0, "text")
        with pytest.raises(OffsetOutOfRangeError):
            rsv.write(-1, b"x")
        with pytest.raises(OffsetOutOfRangeError):
            rsv.read(size + 1, 0)
        with pytest.raises(LengthOutOfRangeError):
            rsv.read(size - 1, 2)
        with pytest.raises(LengthOutOfRangeError):
            rsv.populate(0, size + 1)
        # The first byte not mapped is named, and nothing is copied.
        with pytest.raises(NoAccessError, match=f"offset {2 * P:#x} .*not mapped"):
            rsv.write(P, b"y" * (2 * P))
        assert rsv.read(P, P) == b"\0" * P
        with pytest.raises(NoAccessError, match=f"offset {4 * P:#x}"):
            rsv.write(4 * P, b"y")  # mapped without WRITE
        with pytest.raises(NoAccessError, match=f"offset {6 * P:#x} .*not mapped"):
            rsv.read(4 * P, 3 * P)
        with pytest.raises(NoAccessError, match=f"offset {2 * P:#x}"):
            rsv.populate()
        assert rsv.read(4 * P, 2) == b"\0\0"  # READ is enough to read
        assert rsv.write(0, b"") == 0 and rsv.read(size, 0) == b""


@pytest.mark.usefixtures("api")
def test_reservation_persist_skips_what_needs_no_msync(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB)
    g = make_file(tmp_path / "g", MiB)
    with apis.reserve(16 * MiB) as rsv:
        rsv.map_file(f, 0)
        rsv.map_anonymous(2 * MiB, MiB)
        rsv.map_file(g, 4 * MiB, sharing=Sharing.PRIVATE)
        rsv.map_file(g, 6 * MiB)
        with inject("msync", times=100) as inj:
            rsv.persist()
        assert inj.seen == 2  # the two shared file mappings; the gaps skipped
        with inject("msync", times=100) as inj:
            rsv.persist(2 * MiB, 4 * MiB)
        assert inj.seen == 0
        with inject("msync", errno=errno.EIO), pytest.raises(OSError) as err:
            rsv.persist(6 * MiB, P)
        assert err.value.errno == errno.EIO


# -- memory never goes away under an operation in flight ---------------------------------------


def test_unmap_and_close_wait_for_memory_operations() -> None:
    """A populate slowed by 0.4 s: unmap(), protect() and close() in other threads wait for
    it (sync API; the async one shares the core, and its unmap waits the same way)."""
    import aiopmem.sync as s

    rsv = s.reserve(4 * MiB)
    m = rsv.map_anonymous(0, MiB)
    done: dict[str, float] = {}

    def populate() -> None:
        m.populate()
        done["populate"] = time.monotonic()

    with inject("madvise", delay=0.4):
        t = threading.Thread(target=populate)
        t.start()
        time.sleep(0.1)
        m.unmap()
        done["unmap"] = time.monotonic()
        t.join()
    assert done["unmap"] >= done["populate"]
    m2 = rsv.map_anonymous(0, MiB)
    with inject("mlock", delay=0.4):
        t = threading.Thread(target=m2.lock)
        t.start()
        time.sleep(0.1)
        rsv.close()
        t.join()
    assert rsv.closed and kernel.is_free(rsv.address, rsv.address + rsv.max_size)


@pytest.mark.anyio
async def test_async_memory_operation_keeps_the_loop_running() -> None:
    """A populate and a write slowed by 0.4 s in the executor: a heartbeat on the event loop
    keeps ticking, and two of them overlap instead of adding up."""
    import anyio

    import aiopmem

    async with aiopmem.reserve(8 * MiB) as rsv:
        m = await rsv.map_anonymous(0, 4 * MiB)
        gaps: list[float] = []
        stop = anyio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            start = time.monotonic()
            with inject("madvise", delay=0.4, times=2):
                async with anyio.create_task_group() as inner:
                    inner.start_soon(m.populate, 0, 2 * MiB)
                    inner.start_soon(m.populate, 2 * MiB, 2 * MiB)
            took = time.monotonic() - start
            await m.write(0, b"q" * (3 * MiB))
            stop.set()
        assert took < 0.75, took
        assert max(gaps) < 0.2, max(gaps)
        assert await rsv.read(3 * MiB - 1, 2) == b"q\0"


@pytest.mark.anyio
async def test_async_memory_operations_are_checkpoints() -> None:
    import anyio

    import aiopmem

    async with aiopmem.reserve(8 * MiB) as rsv:
        m = await rsv.map_anonymous(0, MiB)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await m.write(0, b"x")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await rsv.write(0, b"y")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await m.lock()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await m.protect(R)
        assert rss(m) == 0  # nothing was written, nothing locked
        assert m.view()[0] == 0 and not m.locked and m.protection == RW


# -- reserve(alignment=) -----------------------------------------------------------------------


def _growth_of_reserve(alignment: int, max_size: int | None) -> tuple[int, int]:
    """(bytes VmSize grew by while the reservation stands, its max_size), checking its
    address, its placeholders and that close() gives all of it back."""
    before = kernel.vm_size()
    with apis.reserve(2 * MiB, alignment=alignment, max_size=max_size) as rsv:
        assert rsv.address % alignment == 0
        held = rsv.max_size
        grown = kernel.vm_size() - before
        pieces = kernel.coverage(rsv.address, rsv.address + held)
        assert all(kernel.is_placeholder(v) for _, _, v in pieces)
        rsv.shrink(0, P)  # a front shrink keeps the address a multiple of the page only
        assert rsv.address % P == 0
    assert kernel.is_free(rsv.address, rsv.address + rsv.max_size)
    return grown, held


@pytest.mark.usefixtures("api")
def test_reserve_alignment_returns_the_padding() -> None:
    """VmSize grows by the reservation alone: the padding taken to reach the alignment is
    gone. Other threads (a new worker's stack, a malloc arena) can grow VmSize meanwhile, so
    a measurement is taken again when it is off; padding left mapped would show every time."""
    for alignment in (P, 2 * P, THP, 64 * MiB):
        for max_size in (None, 8 * MiB):
            seen = []
            for _ in range(5):
                grown, held = _growth_of_reserve(alignment, max_size)
                seen.append(grown - held)
                if 0 <= grown - held < MiB:
                    break
            else:
                raise AssertionError(f"VmSize grew by more than the reservation: {seen}")


def test_reserve_alignment_does_not_leave_padding_mapped() -> None:
    """With a 1 GiB alignment the padding would be up to 1 GiB: VmSize grows by the
    reservation alone."""
    import aiopmem.sync as s

    before = kernel.vm_size()
    rsv = s.reserve(2 * MiB, max_size=2 * MiB, alignment=1 << 30)
    try:
        assert rsv.address % (1 << 30) == 0
        assert kernel.vm_size() - before < 64 * MiB
        (v,) = kernel.vmas_in(rsv.address - P, rsv.address + 2 * MiB + P)
        assert (v.start, v.end) == (rsv.address, rsv.address + 2 * MiB)
    finally:
        rsv.close()


@pytest.mark.usefixtures("api")
def test_reserve_alignment_validation() -> None:
    for bad in (0, -P, 2048, 3 * P, P + 1, -(2**40)):
        with pytest.raises(AlignmentError):
            apis.reserve(MiB, alignment=bad)
    for bad_type in (2.0, "4096", True):
        with pytest.raises(TypeError):
            apis.reserve(MiB, alignment=bad_type)
    # Order: size and max_size first, then alignment, then the address against it.
    with pytest.raises(LengthUnalignedError):
        apis.reserve(MiB + 1, alignment=3)
    with pytest.raises(LengthOutOfRangeError):
        apis.reserve(MiB, max_size=P, alignment=3)
    with pytest.raises(AddressUnalignedError):
        apis.reserve(MiB, address=kernel.quiet_address(4 * MiB) + P, alignment=THP)
    with pytest.raises(AlignmentError):
        apis.reserve(MiB, address=kernel.quiet_address(4 * MiB) + P, alignment=3 * P)
    addr = kernel.quiet_address(4 * MiB)
    with apis.reserve(MiB, address=addr, alignment=THP) as rsv:
        assert rsv.address == addr
    with pytest.raises(OSError):
        apis.reserve(MiB, alignment=2**64)


def thp_allowed() -> str | None:
    """Why transparent huge pages cannot be shown here, or None."""
    try:
        enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "no transparent huge pages in this kernel"
    if "[never]" in enabled:
        return "transparent huge pages are disabled ([never])"
    return None


@pytest.mark.usefixtures("api")
def test_huge_pages_back_an_aligned_advised_populated_mapping() -> None:
    why = thp_allowed()
    if why is not None:
        pytest.skip(why)
    with apis.reserve(8 * MiB, alignment=THP) as rsv:
        m = rsv.map_anonymous(0, 4 * MiB, sharing=Sharing.PRIVATE)
        m.advise(Advice.HUGEPAGE)
        m.populate()
        huge = kernel.smaps(m.address, m.address + m.size).get("AnonHugePages", 0)
        if (
            huge == 0
            and "defer"
            not in Path("/sys/kernel/mm/transparent_hugepage/defrag").read_text().split("[")[1]
        ):
            # The kernel had no free huge page at fault time (fragmented memory): retry once
            # after dropping the range.
            m.advise(Advice.DONTNEED)
            m.populate()
            huge = kernel.smaps(m.address, m.address + m.size).get("AnonHugePages", 0)
        assert huge >= THP, kernel.smaps(m.address, m.address + m.size)
        assert "hg" in kernel.vm_flags(m.address)


def test_a_view_never_gets_access_a_protect_took_away() -> None:
    """view() racing protect() in another thread: the view gets the access the mapping has
    when it is registered, never what the caller saw before (a store through a view that a
    protect made read-only would crash the interpreter: it did within a second before the
    fix). In a subprocess: a crash is a failure, not the end of the suite."""
    script = textwrap.dedent(
        """
        import sys, threading, time
        from aiopmem.sync import reserve, Protection, NoAccessError
        sys.setswitchinterval(1e-6)
        RW = Protection.READ | Protection.WRITE
        rsv = reserve(1 << 20)
        m = rsv.map_anonymous(0, 4096)
        stop = False
        def toggler():
            while not stop:
                for p in (Protection.READ, Protection.NONE):
                    try:
                        m.protect(p)
                    except BufferError:
                        pass
                    m.protect(RW)
        t = threading.Thread(target=toggler, daemon=True)
        t.start()
        deadline, n, refused = time.time() + 1, 0, 0
        while time.time() < deadline:
            try:
                v = m.view()
            except NoAccessError:
                refused += 1
                continue
            if not v.readonly:
                v[0] = 1
            else:
                v[0]
            v.release()
            n += 1
        stop = True
        t.join()
        print("views", n, "refused", refused)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout.startswith("views ")


def test_a_refused_trim_of_the_alignment_padding_unmaps_only_its_own() -> None:
    """reserve(alignment=) gives the head padding back, then the tail; if the tail's munmap is
    refused, the reservation fails and releases what it still holds, and nothing that another
    thread mapped meanwhile in the head's freed range."""
    import ctypes

    import aiopmem.sync as s

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    g = 1 << 30
    before = {(v.start, v.end) for v in kernel.vmas()}
    taken: list[int] = []

    def take_the_freed_head() -> None:
        time.sleep(0.15)  # inside the delay of the tail's munmap: the head is free again
        for v in kernel.vmas():
            if (v.start, v.end) not in before and kernel.is_placeholder(v) and v.start % g == 0:
                p = libc.mmap(v.start - P, P, 3, 0x22 | 0x100000, -1, 0)  # FIXED_NOREPLACE
                if p not in (None, 2**64 - 1):
                    taken.append(p)
                return

    for _ in range(10):
        t = threading.Thread(target=take_the_freed_head)
        t.start()
        refused: list[int | None] = []
        try:
            with inject("munmap", errno=errno.ENOMEM, after=1, times=1, delay=0.4):
                rsv = s.reserve(MiB, max_size=MiB, alignment=g)
        except OSError as exc:
            refused.append(exc.errno)
        else:
            rsv.close()  # the head was not trimmed (already aligned): try again
        t.join()
        assert refused in ([], [errno.ENOMEM])
        if taken:
            break
    assert taken, "could not place a page in the freed head"
    (v,) = kernel.vmas_in(taken[0], taken[0] + P)
    assert (v.start, v.perms) == (taken[0], "rw-p")  # still there
    libc.munmap(taken[0], P)
