"""API.md's contract for mappings through ``aiopmem.sync``: views (bounds, read-only, no access,
BufferError while exported), private and shared file mappings, partial last pages, the sources
``map_file`` accepts (paths, descriptors, file objects; no descriptor leaked, O_CLOEXEC), lookups,
and a reservation holding thousands of mappings. The kernel's view (``/proc/self/maps``) is the
ground truth throughout.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import stat
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest

import kernel
from aiopmem.sync import (
    ClosedError,
    Granularity,
    InvalidFileHandleError,
    InvalidFileTypeError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    Mapping,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    PmemError,
    Protection,
    Reservation,
    Sharing,
    SourceEmptyError,
    reserve,
)
from aiopmem.testing import inject
from conftest import make_file
from kernel import assert_matches_kernel as check_kernel
from kernel import snapshot
from sizes import MiB, P

RW = Protection.READ | Protection.WRITE
O_CLOEXEC = 0o2000000


# -- helpers -----------------------------------------------------------------------------------


def span(m: Mapping) -> int:
    return -(-m.size // P) * P


def assert_layout(rsv: Reservation) -> None:
    """The same check as ``kernel.assert_matches_kernel``, linear in the number of VMAs (for
    reservations with thousands of mappings)."""
    lo, hi = rsv.address, rsv.address + rsv.max_size
    maps = rsv.mappings()
    starts = [m.address for m in maps]
    pos = lo
    for v in sorted(kernel.vmas_in(lo, hi), key=lambda v: v.start):
        a, b = max(v.start, lo), min(v.end, hi)
        assert a == pos, f"hole at [{pos:#x}, {a:#x})"
        pos = b
        i = bisect_right(starts, a) - 1
        if i >= 0 and a < starts[i] + span(maps[i]):
            m = maps[i]
            assert b <= m.address + span(m), (m, v)
            assert v.perms == kernel.expected_perms(m), (m, v)
        else:
            assert kernel.is_placeholder(v), v
            assert i + 1 == len(maps) or b <= starts[i + 1], v
    assert pos == hi


def fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags in fdinfo")


def fds_on(path: Path) -> list[int]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                out.append(int(name))
        except OSError:
            pass
    return out


@pytest.fixture
def rsv() -> Iterator[Reservation]:
    with reserve(4 * MiB) as r:
        yield r


# -- views -------------------------------------------------------------------------------------


def test_view_reads_and_writes_the_mapped_memory(rsv: Reservation) -> None:
    m = rsv.map_anonymous(8 * P, 3 * P)
    v = m.view()
    assert isinstance(v, memoryview)
    assert len(v) == m.size == 3 * P
    assert not v.readonly
    assert v.tobytes() == bytes(3 * P)  # zero-filled
    v[:5] = b"hello"
    v[P : P + 10] = b"0123456789"
    v[-3:] = b"end"
    # the view is the memory at m.address
    assert ctypes.string_at(m.address, 5) == b"hello"
    assert ctypes.string_at(m.address + P, 10) == b"0123456789"
    assert ctypes.string_at(m.address + 3 * P - 3, 3) == b"end"
    assert m.address == rsv.address + 8 * P
    del v
    # sub-views see the same bytes and write to the right place
    assert bytes(m.view(0, 5)) == b"hello"
    assert bytes(m.view(P, 10)) == b"0123456789"
    assert bytes(m.view(P + 3, 4)) == b"3456"
    assert bytes(m.view(3 * P - 3)) == b"end"
    assert len(m.view(P)) == 2 * P
    assert len(m.view(3 * P)) == 0
    sub = m.view(2 * P, 4)
    assert len(sub) == 4
    sub[:] = b"WXYZ"
    del sub
    assert ctypes.string_at(m.address + 2 * P, 4) == b"WXYZ"
    m.persist()
    m.persist(P, 10)
    m.unmap()
    check_kernel(rsv)


def test_view_bounds(rsv: Reservation) -> None:
    m = rsv.map_anonymous(0, 2 * P)
    for args in [(-1,), (2 * P + 1,), (2**70,), (-(2**70), 1)]:
        with pytest.raises(OffsetOutOfRangeError):
            m.view(*args)
    for args in [(0, -1), (0, 2 * P + 1), (P, P + 1), (2 * P, 1), (0, 2**70)]:
        with pytest.raises(LengthOutOfRangeError):
            m.view(*args)
    assert len(m.view(0, 2 * P)) == 2 * P
    assert len(m.view(2 * P, 0)) == 0
    m.unmap()  # none of the failed calls left an export behind


HOLDERS: dict[str, Callable[[Mapping], object]] = {
    "view": lambda m: m.view(),
    "sub-view": lambda m: m.view(P, 16),
    "empty-view": lambda m: m.view(m.size),
    "slice": lambda m: m.view()[10:20],
    "cast": lambda m: m.view().cast("Q"),
    "view.obj": lambda m: memoryview(m.view().obj),
    "numpy": lambda m: np.frombuffer(m.view(), dtype=np.uint8),
    "numpy-derived": lambda m: np.frombuffer(m.view(), dtype=np.uint32).reshape(-1, 4)[::2, 1],
    "numpy-asarray": lambda m: np.asarray(m.view()),
    "ctypes": lambda m: (ctypes.c_char * 8).from_buffer(m.view()),
}


@pytest.mark.parametrize("action", ["unmap", "close"])
@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_buffer_error_while_exported(rsv: Reservation, holder: str, action: str) -> None:
    m = rsv.map_anonymous(4 * P, 2 * P)
    other = rsv.map_anonymous(0, P)
    lo, hi = rsv.address, rsv.address + rsv.max_size
    obj = HOLDERS[holder](m)
    gc.collect()
    before = snapshot(rsv)
    with pytest.raises(BufferError):
        m.unmap() if action == "unmap" else rsv.close()
    assert snapshot(rsv) == before
    assert not m.closed
    assert not other.closed
    assert not rsv.closed
    check_kernel(rsv)
    # the mapping still works, through new views and through the holder
    m.view()[:4] = b"live"
    assert ctypes.string_at(m.address, 4) == b"live"
    if holder.startswith("numpy"):
        assert isinstance(obj, np.ndarray)
        assert obj.size > 0
    m.persist()
    # a second attempt fails the same way
    with pytest.raises(BufferError):
        m.unmap()
    del obj
    if action == "unmap":
        m.unmap()
        assert m.closed
        assert rsv.find(4 * P) is None
        check_kernel(rsv)
        [v] = kernel.vmas_in(m.address, m.address + 2 * P)
        assert kernel.is_placeholder(v)
    else:
        rsv.close()
        assert m.closed
        assert other.closed
        assert kernel.is_free(lo, hi)


def test_release_then_unmap(rsv: Reservation) -> None:
    m = rsv.map_anonymous(0, P)
    v = m.view()
    s = v[1:3]
    v.release()  # the slice still holds the memory
    with pytest.raises(BufferError):
        m.unmap()
    s.release()
    m.unmap()
    assert m.closed
    with pytest.raises(ValueError, match="released"):
        s.tobytes()
    check_kernel(rsv)


def test_holding_view_obj_pins_the_mapping(rsv: Reservation) -> None:
    """API.md (export safety): every reference to the exporter ``view.obj`` pins the mapping,
    so no buffer can be taken from it once the memory is gone."""
    m = rsv.map_anonymous(0, P)
    v = m.view()
    obj = v.obj
    v.release()
    with pytest.raises(BufferError):
        m.unmap()
    assert not m.closed
    assert bytes(memoryview(obj)[:1]) == b"\0"  # still mapped
    del obj
    m.unmap()
    with pytest.raises(ClosedError):
        m.view()
    check_kernel(rsv)


@pytest.mark.parametrize("source", ["anonymous", "file"])
def test_read_only_mapping_gives_read_only_views(
    rsv: Reservation, tmp_path: Path, source: str
) -> None:
    if source == "file":
        path = make_file(tmp_path / "ro", 2 * P, b"R")
        path.chmod(0o444)
        m = rsv.map_file(path, 0, protection=Protection.READ)
        content = b"R" * (2 * P)
    else:
        m = rsv.map_anonymous(0, 2 * P, protection=Protection.READ)
        content = bytes(2 * P)
    v = m.view()
    assert v.readonly
    assert v.tobytes() == content
    with pytest.raises(TypeError):
        v[0] = 1
    with pytest.raises(TypeError):
        v[:2] = b"xx"
    assert m.view(P, 5).readonly
    # the exporter itself refuses writable buffers
    raw = memoryview(v.obj)
    assert raw.readonly
    with pytest.raises(TypeError):
        raw[0] = 1
    with pytest.raises((TypeError, BufferError)):
        (ctypes.c_char * 4).from_buffer(v.obj)
    arr = np.frombuffer(v.obj, dtype=np.uint8)  # type: ignore[call-overload]
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1
    with pytest.raises(ValueError, match="WRITEABLE"):
        arr.flags.writeable = True
    assert v.tobytes() == content
    del v, raw, arr
    m.unmap()
    check_kernel(rsv)


@pytest.mark.parametrize(
    "protection",
    [Protection.NONE, Protection.EXEC, Protection.WRITE, Protection.WRITE | Protection.EXEC],
    ids=str,
)
def test_view_without_read_is_no_access(rsv: Reservation, protection: Protection) -> None:
    m = rsv.map_anonymous(0, P, protection=protection)
    assert m.protection == protection
    check_kernel(rsv)
    before = snapshot(rsv)
    for args in [(), (0, 1), (-1,), (2**70, -1)]:
        with pytest.raises(NoAccessError) as info:
            m.view(*args)
        assert isinstance(info.value, PermissionError)
    assert snapshot(rsv) == before
    m.unmap()  # no export was left behind
    check_kernel(rsv)


def test_exec_read_mapping_is_readable(rsv: Reservation) -> None:
    m = rsv.map_anonymous(0, P, protection=Protection.READ | Protection.EXEC)
    v = m.view()
    assert v.readonly
    assert v.tobytes() == bytes(P)
    del v
    check_kernel(rsv)


# -- file mappings: private, shared, partial pages ---------------------------------------------


def test_shared_file_mapping_writes_reach_the_file(rsv: Reservation, tmp_path: Path) -> None:
    path = make_file(tmp_path / "shared", 4 * P, b"A")
    m = rsv.map_file(path, 2 * P)
    assert m.sharing is Sharing.SHARED
    assert m.granularity is Granularity.PAGE  # tmp_path is not on a DAX file system
    twin = rsv.map_file(path, 8 * P, file_offset=P, length=P)  # another view of page 1
    v = m.view()
    assert v.tobytes() == b"A" * (4 * P)
    v[:5] = b"hello"
    v[P + 7 : P + 10] = b"xyz"
    del v
    assert bytes(twin.view(7, 3)) == b"xyz"  # shared: every mapping of the file sees it
    m.persist()
    data = path.read_bytes()
    assert data[:5] == b"hello"
    assert data[P + 7 : P + 10] == b"xyz"
    assert len(data) == 4 * P
    m.unmap()
    assert path.read_bytes() == data
    check_kernel(rsv)


def test_private_file_mapping_writes_stay_private(rsv: Reservation, tmp_path: Path) -> None:
    path = make_file(tmp_path / "private", 4 * P, b"A")
    m = rsv.map_file(path, 0, sharing=Sharing.PRIVATE)
    assert m.sharing is Sharing.PRIVATE
    assert m.granularity is Granularity.BYTE
    shared = rsv.map_file(path, 8 * P, length=P)
    v = m.view()
    v[:5] = b"hello"
    assert bytes(v[:5]) == b"hello"
    del v
    m.persist()
    assert path.read_bytes() == b"A" * (4 * P)
    assert bytes(shared.view(0, 5)) == b"AAAAA"
    check_kernel(rsv)
    m.unmap()
    assert path.read_bytes() == b"A" * (4 * P)


def test_anonymous_mapping_attributes(rsv: Reservation) -> None:
    for sharing in Sharing:
        m = rsv.map_anonymous(4 * P, 2 * P, sharing=sharing)
        assert m.address == rsv.address + 4 * P
        assert m.offset == 4 * P
        assert m.size == 2 * P
        assert m.reservation is rsv
        assert m.file_offset == 0
        assert m.protection == RW
        assert m.sharing is sharing
        assert m.granularity is Granularity.BYTE
        assert not m.closed
        check_kernel(rsv)
        m.unmap()
        assert m.closed


def test_file_mapping_attributes(rsv: Reservation, holey_file: Path) -> None:
    m = rsv.map_file(holey_file, 16 * P, file_offset=2 * P, length=3 * P)
    assert m.address == rsv.address + 16 * P
    assert m.offset == 16 * P
    assert m.size == 3 * P
    assert m.file_offset == 2 * P
    assert m.reservation is rsv
    assert m.protection == RW
    assert m.sharing is Sharing.SHARED
    assert m.granularity is Granularity.PAGE
    [v] = kernel.vmas_in(m.address, m.address + 3 * P)
    assert (v.start, v.end) == (m.address, m.address + 3 * P)
    assert v.inode == holey_file.stat().st_ino
    assert v.offset == 2 * P
    assert v.perms == "rw-s"
    whole = rsv.map_file(holey_file, 2 * MiB, file_offset=15 * MiB, length=0)
    assert whole.size == MiB  # length 0 maps to the end of the file, as None does
    check_kernel(rsv)


def test_partial_last_page(rsv: Reservation, tmp_path: Path) -> None:
    path = make_file(tmp_path / "p10000", 10000, b"x")
    m = rsv.map_file(path, 0)
    assert m.size == 10000
    v = m.view()
    assert len(v) == 10000
    assert v.tobytes() == b"x" * 10000
    # the rest of the last page, past EOF, is zero-filled memory
    assert ctypes.string_at(m.address + 10000, 3 * P - 10000) == bytes(3 * P - 10000)
    v[-1:] = b"y"
    del v
    m.persist()
    m.persist(0, 10000)
    with pytest.raises(LengthOutOfRangeError):
        m.persist(0, 10001)
    with pytest.raises(LengthOutOfRangeError):
        m.view(0, 10001)
    data = path.read_bytes()
    assert len(data) == 10000
    assert data[-2:] == b"xy"
    # the mapping occupies 3 whole pages for overlap checks and find
    before = snapshot(rsv)
    with pytest.raises(MappingExistsError):
        rsv.map_anonymous(2 * P, P)
    with pytest.raises(MappingExistsError):
        rsv.map_file(path, 2 * P)
    assert snapshot(rsv) == before
    assert rsv.find(2 * P + 4000) is m
    assert rsv.find(3 * P - 1) is m
    assert rsv.find(3 * P) is None
    nxt = rsv.map_anonymous(3 * P, P)
    assert rsv.find_next(m) is nxt
    # a whole file of one partial page, and a partial tail from a file offset
    tail = rsv.map_file(path, 8 * P, file_offset=2 * P)
    assert tail.size == 10000 - 2 * P
    assert tail.view().tobytes() == b"x" * (10000 - 2 * P - 1) + b"y"
    with pytest.raises(MapRangeError):
        rsv.map_file(path, 16 * P, file_offset=3 * P)
    with pytest.raises(LengthUnalignedError):
        rsv.map_file(path, 16 * P, length=10000)
    check_kernel(rsv)


def test_map_file_beyond_eof_within_last_page_is_refused(rsv: Reservation, tmp_path: Path) -> None:
    path = make_file(tmp_path / "p10000", 10000, b"x")
    with pytest.raises(MapRangeError):
        rsv.map_file(path, 0, length=3 * P)  # 12288 > 10000
    m = rsv.map_file(path, 0, length=2 * P)
    assert m.size == 2 * P
    check_kernel(rsv)


def test_context_manager_unmap_and_reuse(rsv: Reservation) -> None:
    with rsv.map_anonymous(0, 2 * P) as m:
        m.view()[:1] = b"1"
        assert rsv.find(0) is m
    assert m.closed
    assert rsv.find(0) is None
    [v] = kernel.vmas_in(rsv.address, rsv.address + 2 * P)
    assert kernel.is_placeholder(v)
    m.unmap()  # idempotent
    m.close()
    m2 = rsv.map_anonymous(0, 2 * P)  # the placeholder is reusable
    assert bytes(m2.view(0, 1)) == b"\0"
    check_kernel(rsv)


# -- sources -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("fd_guard")
@pytest.mark.parametrize("kind", ["str", "pathlib", "bytes", "fd", "fileobj", "fileobj-ro"])
def test_sources(rsv: Reservation, tmp_path: Path, kind: str) -> None:
    path = make_file(tmp_path / "src", 2 * P, b"0123456789")
    fobj = None
    fd = -1
    src: object
    if kind == "str":
        src = str(path)
    elif kind == "pathlib":
        src = path
    elif kind == "bytes":
        src = os.fsencode(path)
    elif kind == "fd":
        fd = src = os.open(path, os.O_RDWR)
    else:
        fobj = src = open(path, "rb" if kind == "fileobj-ro" else "r+b")  # noqa: SIM115
    prot = Protection.READ if kind == "fileobj-ro" else RW
    try:
        fds = kernel.open_fds()
        m = rsv.map_file(src, P, protection=prot)
        assert kernel.open_fds() == fds  # a path is closed once mapped; an fd is not dup'ed
        assert m.size == 2 * P
        assert bytes(m.view(0, 10)) == b"0123456789"
        [v] = kernel.vmas_in(m.address, m.address + 2 * P)
        assert v.inode == path.stat().st_ino
        if prot == RW:
            m.view()[:5] = b"HELLO"
            m.persist()
            assert path.read_bytes()[:5] == b"HELLO"
        else:
            assert m.view().readonly
        m.unmap()
        check_kernel(rsv)
        if fd >= 0:
            os.fstat(fd)  # still open: the library does not close the caller's fd
            assert os.pread(fd, 5, 0) == (b"HELLO")
        if fobj is not None:
            assert not fobj.closed
            os.fstat(fobj.fileno())
            fobj.seek(0)
            assert fobj.read(5) == (b"HELLO" if prot == RW else b"01234")
    finally:
        if fd >= 0:
            os.close(fd)
        if fobj is not None:
            fobj.close()


class _Spec(TypedDict, total=False):
    """How one failure case calls ``map_file(file, offset, **the rest)``, or what it injects."""

    file: Path
    offset: int
    inject: tuple[str, int]
    protection: Protection
    file_offset: int
    length: int


def _failure_cases(tmp: Path) -> list[tuple[str, type[BaseException], _Spec]]:
    return [
        ("missing", FileNotFoundError, {"file": tmp / "missing"}),
        ("directory", InvalidFileTypeError, {"file": tmp}),
        ("directory-ro", InvalidFileTypeError, {"file": tmp, "protection": Protection.READ}),
        ("fifo", InvalidFileTypeError, {"file": tmp / "fifo"}),
        ("empty", SourceEmptyError, {"file": tmp / "empty"}),
        ("file_offset-unaligned", OffsetUnalignedError, {"file_offset": 1}),
        ("file_offset-negative", MapRangeError, {"file_offset": -P}),
        ("length-negative", LengthOutOfRangeError, {"length": -P}),
        ("length-unaligned", LengthUnalignedError, {"length": 100}),
        ("past-eof", MapRangeError, {"length": 4 * P}),
        ("nothing-left", MapRangeError, {"file_offset": 2 * P}),
        ("offset-unaligned", OffsetUnalignedError, {"offset": 1}),
        ("does-not-fit", LengthOutOfRangeError, {"offset": 4 * MiB}),
        ("overlap", MappingExistsError, {"offset": 0}),
        ("mmap-enomem", OSError, {"inject": ("mmap", errno.ENOMEM)}),
        ("mmap-eacces", NoAccessError, {"inject": ("mmap", errno.EACCES)}),
        ("fstat-eio", OSError, {"inject": ("fstat", errno.EIO)}),
        ("open-emfile", OSError, {"inject": ("open", errno.EMFILE)}),
    ]


@pytest.mark.usefixtures("fd_guard")
@pytest.mark.parametrize("how", ["path", "fd"])
def test_no_fd_leaked_on_failure(rsv: Reservation, tmp_path: Path, how: str) -> None:
    data = make_file(tmp_path / "data", 2 * P, b"d")
    make_file(tmp_path / "empty", 0)
    os.mkfifo(tmp_path / "fifo")
    rsv.map_anonymous(0, P)
    for name, exc_type, spec in _failure_cases(tmp_path):
        # (a plain dict that mypy cannot match to map_file's keywords: the ignores below)
        kwargs = {k: v for k, v in spec.items() if k not in ("file", "offset", "inject")}
        path = spec.get("file", data)
        file: Path | int = path
        offset = spec.get("offset", 8 * P)
        user_fd = None
        if how == "fd":
            if name in ("missing", "fifo", "open-emfile"):
                continue  # a path-only failure
            user_fd = os.open(path, os.O_RDONLY if name.startswith("directory") else os.O_RDWR)
            file = user_fd
        fds = kernel.open_fds()
        before = snapshot(rsv)
        try:
            if "inject" in spec:
                syscall, err = spec["inject"]
                with inject(syscall, errno=err), pytest.raises(exc_type) as info:
                    rsv.map_file(file, offset, **kwargs)  # type: ignore[arg-type]
            else:
                with pytest.raises(exc_type) as info:
                    rsv.map_file(file, offset, **kwargs)  # type: ignore[arg-type]
            if issubclass(exc_type, PmemError):
                assert type(info.value) is exc_type, (name, info.value)
            assert kernel.open_fds() == fds, name
            assert snapshot(rsv) == before, name
            if user_fd is not None:
                os.fstat(user_fd)  # not closed by the library, even on failure
        finally:
            if user_fd is not None:
                os.close(user_fd)
    check_kernel(rsv)


@pytest.mark.usefixtures("fd_guard")
def test_unusable_descriptors(rsv: Reservation, holey_file: Path) -> None:
    wo = os.open(holey_file, os.O_WRONLY)
    try:
        with pytest.raises(InvalidFileHandleError):
            rsv.map_file(wo, 0, length=P)
        os.fstat(wo)  # the caller's fd stays open
    finally:
        os.close(wo)
    fd = os.open(holey_file, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(InvalidFileHandleError):
        rsv.map_file(fd, 0, length=P)
    with open(holey_file, "rb") as f:
        pass
    with pytest.raises(InvalidFileHandleError):
        rsv.map_file(f, 0, length=P)
    opath = os.open(holey_file, os.O_PATH)
    try:
        with pytest.raises(InvalidFileHandleError):
            rsv.map_file(opath, 0, length=P)
    finally:
        os.close(opath)
    assert rsv.mappings() == []
    check_kernel(rsv)


@pytest.mark.usefixtures("fd_guard")
def test_read_only_descriptor(rsv: Reservation, tmp_path: Path) -> None:
    path = make_file(tmp_path / "ro", 2 * P, b"r")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = snapshot(rsv)
        with pytest.raises(NoAccessError):
            rsv.map_file(fd, 4 * P)  # READ|WRITE, SHARED by default
        assert snapshot(rsv) == before
        [v] = kernel.vmas_in(rsv.address + 4 * P, rsv.address + 6 * P)
        assert kernel.is_placeholder(v)
        m = rsv.map_file(fd, 4 * P, protection=Protection.READ)
        assert m.view().readonly
        assert bytes(m.view(0, 3)) == b"rrr"
        # a private mapping may write: copy-on-write, the file is untouched
        p = rsv.map_file(fd, 8 * P, sharing=Sharing.PRIVATE)
        p.view()[:3] = b"PPP"
        assert bytes(p.view(0, 3)) == b"PPP"
        check_kernel(rsv)
        m.unmap()
        p.unmap()
        os.fstat(fd)
        assert path.read_bytes() == b"r" * (2 * P)
    finally:
        os.close(fd)


def _flags_during_map(
    rsv: Reservation, path: Path, **kwargs: object
) -> tuple[list[int], Mapping | BaseException]:
    """Map ``path`` in a thread with a slow mmap; meanwhile read the open flags of every
    descriptor the library holds on the file."""
    result: list[Mapping | BaseException] = []

    def worker() -> None:
        try:
            result.append(rsv.map_file(path, 0, **kwargs))  # type: ignore[arg-type]
        except BaseException as exc:
            result.append(exc)

    flags: list[int] = []
    with inject("mmap", delay=0.3) as inj:
        t = threading.Thread(target=worker)
        t.start()
        deadline = time.monotonic() + 10
        while not inj.fired and time.monotonic() < deadline:
            time.sleep(0.002)
        for fd in fds_on(path):
            with contextlib.suppress(FileNotFoundError):
                flags.append(fd_flags(fd))
        t.join()
    return flags, result[0]


@pytest.mark.usefixtures("fd_guard")
@pytest.mark.parametrize(
    ("protection", "sharing", "accmode"),
    [
        (RW, Sharing.SHARED, os.O_RDWR),
        (Protection.READ, Sharing.SHARED, os.O_RDONLY),
        (Protection.READ, Sharing.PRIVATE, os.O_RDONLY),
        (Protection.READ | Protection.EXEC, Sharing.SHARED, os.O_RDONLY),
    ],
    ids=["rw-shared", "r-shared", "r-private", "rx-shared"],
)
def test_path_opened_cloexec_with_the_right_access(
    rsv: Reservation,
    tmp_path: Path,
    protection: Protection,
    sharing: Sharing,
    accmode: int,
) -> None:
    path = make_file(tmp_path / "f", 2 * P, b"c")
    if accmode == os.O_RDONLY:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # a read-only file
    flags, m = _flags_during_map(rsv, path, protection=protection, sharing=sharing)
    assert isinstance(m, Mapping), m
    assert len(flags) == 1, flags
    assert flags[0] & O_CLOEXEC, oct(flags[0])
    assert flags[0] & os.O_ACCMODE == accmode, oct(flags[0])
    assert fds_on(path) == []  # closed once mapped
    assert bytes(m.view(0, 2)) == b"cc"
    check_kernel(rsv)


# -- lookups -----------------------------------------------------------------------------------


def test_lookups(rsv: Reservation, tmp_path: Path) -> None:
    small = make_file(tmp_path / "small", 10000, b"s")
    a = rsv.map_anonymous(0, P)
    b = rsv.map_anonymous(4 * P, 2 * P)
    c = rsv.map_file(small, 10 * P)  # pages 10..12, the last one partial
    d = rsv.map_anonymous(20 * P, P)
    assert rsv.mappings() == [a, b, c, d]
    assert rsv.find_first() is a
    assert rsv.find_last() is d
    assert rsv.find(0) is a
    assert rsv.find(P - 1) is a
    assert rsv.find(P) is None
    assert rsv.find(P, 3 * P) is None
    assert rsv.find(P, 3 * P + 1) is b
    assert rsv.find(5 * P + 100) is b
    assert rsv.find(12 * P + 5) is c
    assert rsv.find(13 * P) is None
    assert rsv.find(0, 64 * P) is a
    assert rsv.find(P, 64 * P) is b
    assert rsv.find(6 * P, 100 * P) is c
    assert rsv.find(13 * P, 7 * P) is None
    assert rsv.find(13 * P, 7 * P + 1) is d
    assert rsv.find(21 * P, rsv.size) is None
    assert [rsv.find_next(x) for x in (a, b, c, d)] == [b, c, d, None]
    assert [rsv.find_prev(x) for x in (a, b, c, d)] == [None, a, b, c]
    snap = rsv.mappings()
    snap.clear()  # a copy
    assert rsv.mappings() == [a, b, c, d]
    before = rsv.mappings()
    b.unmap()
    assert before == [a, b, c, d]
    assert rsv.mappings() == [a, c, d]
    assert rsv.find_next(a) is c
    assert rsv.find_prev(c) is a
    assert rsv.find_prev(b) is None
    assert rsv.find_next(b) is None
    with reserve(MiB) as other:
        assert other.find_next(a) is None
        assert other.find_prev(a) is None
        assert other.find_first() is None
        assert other.find_last() is None
        assert other.mappings() == []
        assert other.find(0) is None


def test_in_flight_map_is_invisible_and_blocks_overlap(rsv: Reservation) -> None:
    done: list[object] = []
    with inject("mmap", delay=0.5) as inj:
        t = threading.Thread(target=lambda: done.append(rsv.map_anonymous(8 * P, 2 * P)))
        t.start()
        deadline = time.monotonic() + 10
        while not inj.fired and time.monotonic() < deadline:
            time.sleep(0.002)
        assert inj.fired == 1
        t0 = time.monotonic()
        assert rsv.find(8 * P) is None
        assert rsv.find(0, rsv.size) is None
        assert rsv.mappings() == []
        assert rsv.find_first() is None
        with pytest.raises(MappingExistsError):
            rsv.map_anonymous(9 * P, 4 * P)
        assert time.monotonic() - t0 < 0.3  # nothing waited for the slow mmap
        t.join()
    [m] = done
    assert rsv.find(9 * P) is m
    assert rsv.mappings() == [m]
    check_kernel(rsv)


def test_unmap_in_flight_stays_visible(rsv: Reservation) -> None:
    m = rsv.map_anonymous(8 * P, 2 * P)
    with inject("mmap", delay=0.5) as inj:
        t = threading.Thread(target=m.unmap)
        t.start()
        deadline = time.monotonic() + 10
        while not inj.fired and time.monotonic() < deadline:
            time.sleep(0.002)
        t0 = time.monotonic()
        assert rsv.find(8 * P) is m
        assert rsv.mappings() == [m]
        assert not m.closed
        assert time.monotonic() - t0 < 0.3
        t.join()
    assert m.closed
    assert rsv.find(8 * P) is None
    check_kernel(rsv)


# -- thousands of mappings ---------------------------------------------------------------------


def test_thousands_of_mappings() -> None:
    n = 2500
    with reserve(2 * n * P) as rsv:
        lo, hi = rsv.address, rsv.address + rsv.max_size
        ms = [rsv.map_anonymous(2 * i * P, P) for i in range(n)]
        for i in range(0, n, 7):
            ms[i].view()[:4] = i.to_bytes(4, "little")
        assert rsv.mappings() == ms
        assert rsv.find_first() is ms[0]
        assert rsv.find_last() is ms[-1]
        for i, m in enumerate(ms):
            assert m.offset == 2 * i * P
            assert rsv.find(2 * i * P) is m
            assert rsv.find(2 * i * P + P - 1) is m
            assert rsv.find((2 * i + 1) * P) is None
            assert rsv.find((2 * i + 1) * P, P) is None
            assert rsv.find_prev(m) is (ms[i - 1] if i else None)
            assert rsv.find_next(m) is (ms[i + 1] if i + 1 < n else None)
            if i + 1 < n:
                assert rsv.find((2 * i + 1) * P, P + 1) is ms[i + 1]
        assert rsv.find(-P, 2 * n * P + P) is ms[0]
        assert len(kernel.vmas_in(lo, lo + 2 * n * P)) == 2 * n  # none merged
        assert_layout(rsv)
        # unmap every third one; the rest is unchanged
        for m in ms[::3]:
            m.unmap()
        left = [m for i, m in enumerate(ms) if i % 3]
        assert rsv.mappings() == left
        assert rsv.find_first() is ms[1]
        for i in range(1, n, 3):
            assert rsv.find(2 * (i - 1) * P) is None
            assert rsv.find_prev(ms[i]) is (ms[i - 2] if i > 1 else None)
        for i in range(0, n, 7):
            if i % 3:
                assert ms[i].view(0, 4) == i.to_bytes(4, "little")
        assert_layout(rsv)
        # mappings fill the freed pages again
        again = [rsv.map_anonymous(2 * i * P, P) for i in range(0, n, 3)]
        assert rsv.find_first() is again[0]
        assert len(rsv.mappings()) == n
        assert_layout(rsv)
    assert kernel.is_free(lo, hi)
    assert all(m.closed for m in again)
