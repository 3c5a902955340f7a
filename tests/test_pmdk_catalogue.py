"""libpmem2's reservation test catalogue (``src/test/pmem2_vm_reservation``), ported to
``aiopmem.sync`` and run on the async API too (the ``api`` fixture): one test per TEST row
(the devdax twins are skipped), named after the C case, plus the "extra cases worth adding"
of the reference and the ``map_multiple_files`` example.

Where API.md deliberately differs from libpmem2 the test checks aiopmem's documented behaviour:
closing a reservation with mappings unmaps them (TEST20), extend works thanks to headroom
(TEST33/34 must succeed), not-found lookups return None (TEST46/48).

Every test checks the kernel's view (``/proc/self/maps``) while the reservation is open and that
the whole held range ``[address, address + max_size)`` is free once it is closed.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import kernel
from aiopmem import _ffi
from aiopmem.sync import (
    ALIGNMENT,
    AddressUnalignedError,
    LengthOutOfRangeError,
    LengthUnalignedError,
    Mapping,
    MappingExistsError,
    NoAccessError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    PmemError,
    Protection,
    Reservation,
    ReservationNotEmptyError,
)
from aiopmem.testing import inject
from apis import is_mapping, reserve
from conftest import S, make_file
from sizes import MiB

HALF = S // 2  # ALIGN_UP(S/2, align) == ALIGN_DOWN(S/2, align) == 8 MiB

pytestmark = pytest.mark.usefixtures("api", "fd_guard")

ENOMEM = rf"^\[Errno {errno.ENOMEM}\] "
EIO = rf"^\[Errno {errno.EIO}\] "

_CODES = {
    AddressUnalignedError: ("PMEM2_E_ADDRESS_UNALIGNED", -100022),
    OffsetUnalignedError: ("PMEM2_E_OFFSET_UNALIGNED", -100011),
    LengthUnalignedError: ("PMEM2_E_LENGTH_UNALIGNED", -100015),
    OffsetOutOfRangeError: ("PMEM2_E_OFFSET_OUT_OF_RANGE", -100010),
    LengthOutOfRangeError: ("PMEM2_E_LENGTH_OUT_OF_RANGE", -100030),
    NotSupportedError: ("PMEM2_E_NOSUPP", -100001),
    MappingExistsError: ("PMEM2_E_MAPPING_EXISTS", -100007),
    ReservationNotEmptyError: ("PMEM2_E_VM_RESERVATION_NOT_EMPTY", -100033),
    NoAccessError: ("PMEM2_E_NO_ACCESS", -100032),
}


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def pmem_error(cls: type[PmemError]) -> Iterator[pytest.ExceptionInfo[PmemError]]:
    """Like ``pytest.raises(cls)``, also checking the exact class and the libpmem2 code."""
    with pytest.raises(cls) as info:
        yield info
    assert type(info.value) is cls
    assert (info.value.code, info.value.value) == _CODES[cls]


def held(rsv: Reservation) -> tuple[int, int]:
    """The whole range the reservation holds, headroom included."""
    return rsv.address, rsv.address + rsv.max_size


def close_and_check_free(rsv: Reservation, start: int, end: int) -> None:
    """Close ``rsv`` and check that it left nothing behind in ``[start, end)``."""
    maps = rsv.mappings()
    rsv.close()
    assert rsv.closed
    assert rsv.mappings() == []
    assert rsv.find_first() is None
    assert all(m.closed for m in maps)
    assert kernel.is_free(start, end), kernel.vmas_in(start, end)


def assert_placeholder(start: int, end: int) -> None:
    """``[start, end)`` is entirely covered by inaccessible placeholders (no hole)."""
    pieces = kernel.coverage(start, end)
    assert pieces
    for _, _, v in pieces:
        assert kernel.is_placeholder(v), v


def assert_untakeable(addr: int, length: int) -> None:
    """Nothing else can be placed in ``[addr, addr+length)`` (it is held, not a hole)."""
    flags = _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS | _ffi.MAP_FIXED_NOREPLACE
    with pytest.raises(FileExistsError) as info:
        _ffi.mmap_fixed(addr, length, _ffi.PROT_NONE, flags)
    assert info.value.errno == errno.EEXIST


def free_window(length: int) -> int:
    """An address where ``length`` bytes of address space are free and stay free: far below
    where the kernel places new mappings (worker threads' stacks included)."""
    return kernel.quiet_address(length)


def mmap_address(mm: mmap.mmap) -> int:
    buf = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf


PATTERN = b"foreign mapping, do not touch!!\n"


class Foreign:
    """A mapping of ``path`` made outside aiopmem, filled with a known pattern."""

    def __init__(self, path: Path, addr: int, length: int) -> None:
        self.path = path
        self.addr = addr
        self.length = length
        self.inode = os.stat(path).st_ino
        ctypes.memmove(addr, PATTERN, len(PATTERN))
        ctypes.memmove(addr + length - len(PATTERN), PATTERN, len(PATTERN))

    def assert_intact(self) -> None:
        assert ctypes.string_at(self.addr, len(PATTERN)) == PATTERN
        end = self.addr + self.length
        assert ctypes.string_at(end - len(PATTERN), len(PATTERN)) == PATTERN
        for a, _, v in kernel.coverage(self.addr, end):
            assert v.perms == "rw-s", v
            assert v.inode == self.inode, v
            assert v.offset + (a - v.start) == a - self.addr, v  # file offset 0 at addr


@contextmanager
def foreign_mmap(path: Path, length: int) -> Iterator[Foreign]:
    """A foreign shared mapping of ``path`` made with Python's ``mmap`` module, where the
    kernel chooses."""
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), length) as mm:
        yield Foreign(path, mmap_address(mm), length)
        mm.flush()


@contextmanager
def foreign_fixed(path: Path, addr: int, length: int) -> Iterator[Foreign]:
    """A foreign shared mapping of ``path`` placed exactly at ``addr`` (outside aiopmem)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        _ffi.mmap_fixed(
            addr,
            length,
            _ffi.PROT_READ | _ffi.PROT_WRITE,
            _ffi.MAP_SHARED | _ffi.MAP_FIXED_NOREPLACE,
            fd,
            0,
        )
    finally:
        os.close(fd)
    try:
        yield Foreign(path, addr, length)
    finally:
        _ffi.munmap(addr, length)


# -- TEST0..TEST14: reservation creation --------------------------------------------------------


def test_new_unaligned_addr() -> None:
    """TEST0: new(addr=Mmap_align-1, S) -> ADDRESS_UNALIGNED (checked before the size)."""
    addr = free_window(2 * S)
    with pmem_error(AddressUnalignedError):
        reserve(S, address=addr + ALIGNMENT - 1)
    with pmem_error(AddressUnalignedError):
        reserve(S - 1, address=ALIGNMENT - 1)  # address is checked before size
    assert kernel.is_free(addr, addr + 2 * S)


def test_new_unaligned_size() -> None:
    """TEST2: new(NULL, S-1) -> LENGTH_UNALIGNED."""
    with pmem_error(LengthUnalignedError):
        reserve(S - 1)
    addr = free_window(2 * S)
    with pmem_error(LengthUnalignedError):
        reserve(S - 1, address=addr)
    assert kernel.is_free(addr, addr + 2 * S)


def test_new_valid_addr(holey_file: Path) -> None:
    """TEST4: map the file without a reservation at A, unmap it, reserve 8 MiB at A; mapping
    8 MiB of the file at offset 0 lands exactly at A."""
    with foreign_mmap(holey_file, S) as f:
        a = f.addr
    assert kernel.is_free(a, a + S)
    with reserve(HALF, address=a) as rsv:
        start, end = held(rsv)
        assert rsv.address == a
        assert rsv.size == HALF
        assert rsv.max_size >= HALF
        kernel.assert_matches_kernel(rsv)
        m = rsv.map_file(holey_file, 0, length=HALF)
        assert m.address == a
        assert m.size == HALF
        assert rsv.find(0) is m
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        assert m.closed
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(a, a + HALF)
        close_and_check_free(rsv, start, end)


def test_new_region_occupied_reserv() -> None:
    """TEST6: reserving at the address of a live reservation -> MAPPING_EXISTS; so does
    reserving in its headroom; the first reservation is untouched."""
    rsv1 = reserve(S)
    start, end = held(rsv1)
    assert rsv1.address != 0
    assert rsv1.size == S
    with pmem_error(MappingExistsError):
        reserve(S, address=rsv1.address)
    with pmem_error(MappingExistsError):
        reserve(S, address=rsv1.address + ALIGNMENT, max_size=S)
    if rsv1.max_size > rsv1.size:  # the headroom is held too
        with pmem_error(MappingExistsError):
            reserve(ALIGNMENT, address=rsv1.address + rsv1.size, max_size=ALIGNMENT)
    assert (rsv1.address, rsv1.size) == (start, S)
    assert held(rsv1) == (start, end)
    kernel.assert_matches_kernel(rsv1)
    close_and_check_free(rsv1, start, end)


def test_new_region_occupied_map(holey_file: Path) -> None:
    """TEST8: a file mapped outside aiopmem at A; reserve(S, address=A) -> MAPPING_EXISTS and
    the foreign mapping is intact."""
    with foreign_mmap(holey_file, S) as f:
        with pmem_error(MappingExistsError):
            reserve(S, address=f.addr)
        with pmem_error(MappingExistsError):
            reserve(ALIGNMENT, address=f.addr + S - ALIGNMENT, max_size=ALIGNMENT)
        f.assert_intact()
    assert kernel.is_free(f.addr, f.addr + S)
    assert holey_file.read_bytes()[: len(PATTERN)] == PATTERN


def test_new_region_occupied_map_below(holey_file: Path) -> None:
    """TEST10: file mapped at A; reserve(S, address=A - 8 MiB) overlaps its lower half ->
    MAPPING_EXISTS; nothing is left in the free space below A; the foreign mapping is intact."""
    base = free_window(3 * S)
    a = base + S
    with foreign_fixed(holey_file, a, S) as f:
        assert kernel.is_free(a - HALF, a)
        with pmem_error(MappingExistsError):
            reserve(S, address=a - HALF)
        with pmem_error(MappingExistsError):
            reserve(HALF, address=a - HALF, max_size=S)  # only max_size overlaps
        assert kernel.is_free(base, a)
        f.assert_intact()
    assert kernel.is_free(base, base + 3 * S)


def test_new_region_occupied_map_above(holey_file: Path) -> None:
    """TEST12: file mapped at A; reserve(S, address=A + 8 MiB) overlaps its upper half ->
    MAPPING_EXISTS; nothing is left in the free space above it; the foreign mapping is intact."""
    base = free_window(3 * S)
    a = base + S
    with foreign_fixed(holey_file, a, S) as f:
        with pmem_error(MappingExistsError):
            reserve(S, address=a + HALF)
        assert kernel.is_free(a + S, base + 3 * S)
        f.assert_intact()
    assert kernel.is_free(base, base + 3 * S)


def test_new_alloc_enomem() -> None:
    """TEST14 (malloc fault injection) as mmap fault injection: reserve -> OSError(ENOMEM),
    nothing is created, and the next reserve works."""
    with inject("mmap", errno=errno.ENOMEM) as inj, pytest.raises(OSError, match=ENOMEM) as info:
        reserve(S, max_size=S)
    assert info.value.errno == errno.ENOMEM
    assert not isinstance(info.value, PmemError)
    assert inj.fired == inj.seen == 1
    # Without max_size the library settles for less headroom on ENOMEM; when every attempt
    # fails, reserve fails with ENOMEM (and no mmap succeeded, so nothing can have leaked).
    with (
        inject("mmap", errno=errno.ENOMEM, times=10**6) as inj,
        pytest.raises(OSError, match=ENOMEM) as info,
    ):
        reserve(S)
    assert info.value.errno == errno.ENOMEM
    assert inj.fired == inj.seen >= 1
    with reserve(S) as rsv:
        start, end = held(rsv)
        assert rsv.size == S
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


# -- TEST16..TEST30: mapping into a reservation -------------------------------------------------


def test_map_file(holey_file: Path) -> None:
    """TEST16: the whole file at offset 0 lands at the reservation's address."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        assert is_mapping(m)
        assert m.address == rsv.address
        assert (m.size, m.offset, m.file_offset) == (S, 0, 0)
        assert m.reservation is rsv
        assert rsv.mappings() == [m]
        kernel.assert_matches_kernel(rsv)
        [v] = kernel.vmas_in(m.address, m.address + S)
        assert (v.start, v.end, v.perms) == (m.address, m.address + S, "rw-s")
        with m.view() as mv:
            mv[S - 3 :] = b"end"
        m.unmap()
        assert m.closed
        assert rsv.mappings() == []
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        close_and_check_free(rsv, start, end)
    assert holey_file.read_bytes()[-3:] == b"end"


def test_map_part_file(holey_file: Path) -> None:
    """TEST18: file offset 8 MiB to the end into a reservation of exactly 8 MiB."""
    with reserve(S - HALF) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0, file_offset=HALF)
        assert m.address == rsv.address
        assert (m.size, m.file_offset) == (S - HALF, HALF)
        kernel.assert_matches_kernel(rsv)  # checks the file offset of the VMA too
        with m.view() as mv:
            mv[:4] = b"half"
        m.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)
    data = holey_file.read_bytes()
    assert data[HALF : HALF + 4] == b"half"
    assert data[:4] == b"\0\0\0\0"


def test_delete_contains_mapping(holey_file: Path) -> None:
    """TEST20: libpmem2 refuses to delete a reservation holding a mapping; aiopmem's close()
    unmaps it instead (deliberate difference). With a view alive, close refuses and changes
    nothing."""
    rsv = reserve(S)
    start, end = held(rsv)
    m = rsv.map_file(holey_file, 0)
    mv = m.view()
    mv[:5] = b"hello"
    with pytest.raises(BufferError):
        rsv.close()
    assert not rsv.closed
    assert not m.closed
    assert rsv.mappings() == [m]
    assert mv[:5] == b"hello"
    kernel.assert_matches_kernel(rsv)
    mv.release()
    rsv.close()
    assert rsv.closed
    assert m.closed
    assert rsv.mappings() == []
    assert rsv.find(0) is None
    assert kernel.is_free(start, end)
    m.unmap()  # idempotent, the reservation already unmapped it
    rsv.close()  # idempotent
    assert holey_file.read_bytes()[:5] == b"hello"


def test_map_unmap_multiple_files(holey_file: Path) -> None:
    """TEST21: the file mapped 10 times at i*S; unmap the even ones, map them again, unmap
    all."""
    with reserve(10 * S) as rsv:
        start, end = held(rsv)
        maps = []
        for i in range(10):
            m = rsv.map_file(holey_file, i * S)
            assert m.address == rsv.address + i * S
            maps.append(m)
        assert rsv.mappings() == maps
        kernel.assert_matches_kernel(rsv)
        for i in range(0, 10, 2):
            maps[i].unmap()
            assert maps[i].closed
            assert rsv.find(i * S) is None
        assert rsv.mappings() == maps[1::2]
        kernel.assert_matches_kernel(rsv)
        for i in range(0, 10, 2):
            assert_placeholder(rsv.address + i * S, rsv.address + (i + 1) * S)
            m = rsv.map_file(holey_file, i * S)
            assert m.address == rsv.address + i * S
            maps[i] = m
        assert rsv.mappings() == maps
        kernel.assert_matches_kernel(rsv)
        for m in maps:
            m.unmap()
        assert rsv.mappings() == []
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        close_and_check_free(rsv, start, end)


def test_map_insufficient_space(holey_file: Path) -> None:
    """TEST23: a 16 MiB file does not fit in an 8 MiB reservation (its headroom does not
    count) -> LENGTH_OUT_OF_RANGE."""
    with reserve(HALF) as rsv:
        start, end = held(rsv)
        with pmem_error(LengthOutOfRangeError):
            rsv.map_file(holey_file, 0)
        assert rsv.mappings() == []
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        close_and_check_free(rsv, start, end)


def test_map_full_overlap(holey_file: Path) -> None:
    """TEST24: mapping twice at the same offset -> MAPPING_EXISTS; the first is untouched."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        with m.view() as mv:
            mv[:3] = b"one"
        with pmem_error(MappingExistsError):
            rsv.map_file(holey_file, 0)
        assert rsv.mappings() == [m]
        assert not m.closed
        with m.view() as mv:
            assert mv[:3] == b"one"
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        close_and_check_free(rsv, start, end)


def test_map_partial_overlap_below(holey_file: Path) -> None:
    """TEST26: [8, 24) MiB mapped; mapping [0, 16) -> MAPPING_EXISTS."""
    with reserve(S + HALF) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, HALF)
        assert m.address == rsv.address + HALF
        with pmem_error(MappingExistsError):
            rsv.map_file(holey_file, 0)
        assert rsv.mappings() == [m]
        assert rsv.find(0, HALF) is None
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, start + HALF)
        m.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_map_partial_overlap_above(holey_file: Path) -> None:
    """TEST28: [0, 16) MiB mapped; mapping [8, 24) -> MAPPING_EXISTS."""
    with reserve(S + HALF) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        with pmem_error(MappingExistsError):
            rsv.map_file(holey_file, HALF)
        assert rsv.mappings() == [m]
        assert rsv.find(S, HALF) is None
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start + S, start + S + HALF)
        m.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_map_invalid_granularity(holey_file: Path) -> None:
    """TEST30, adapted (aiopmem has no requested granularity): a map failing in the kernel
    (injected EIO) leaves the range a clean, unregistered placeholder, and a whole-file map
    over it at offset 0 then succeeds."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        with inject("mmap", errno=errno.EIO) as inj, pytest.raises(OSError, match=EIO) as info:
            rsv.map_file(holey_file, S // 4, file_offset=HALF)
        assert inj.fired == 1
        assert info.value.errno == errno.EIO
        assert not isinstance(info.value, PmemError)
        assert rsv.mappings() == []
        assert rsv.find(S // 4) is None
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        m = rsv.map_file(holey_file, 0)
        assert m.address == rsv.address
        assert (m.size, m.file_offset) == (S, 0)
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        close_and_check_free(rsv, start, end)


def test_async_map_unmap_multiple_files(holey_file: Path, api: str) -> None:
    """TEST31: 32 threads, each mapping and unmapping the file into its own 16 MiB slot of one
    512 MiB reservation, many times, through one shared descriptor. Through the async API every
    call of every thread crosses one event loop's portal, so fewer rounds there."""
    threads, iterations = 32, (1000 if api == "sync" else 40)
    fd = os.open(holey_file, os.O_RDWR | os.O_CLOEXEC)
    try:
        with reserve(threads * S) as rsv:
            start, end = held(rsv)
            barrier = threading.Barrier(threads)
            errors: list[BaseException] = []

            def worker(n: int) -> None:
                off = n * S
                try:
                    barrier.wait()
                    for _ in range(iterations):
                        m = rsv.map_file(fd, off, length=S)
                        assert m.address == rsv.address + off
                        assert m.offset == off
                        assert rsv.find(off, S) is m
                        m.unmap()
                        assert m.closed
                        assert rsv.find(off, S) is None
                except BaseException as exc:
                    errors.append(exc)
                    barrier.abort()

            t0 = time.monotonic()
            pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            assert not errors, errors[:3]
            assert time.monotonic() - t0 < 30
            assert rsv.mappings() == []
            assert rsv.address == start
            assert rsv.size == threads * S
            kernel.assert_matches_kernel(rsv)
            assert_placeholder(start, end)
            close_and_check_free(rsv, start, end)
    finally:
        os.close(fd)


# -- TEST33..TEST41: extend and shrink ----------------------------------------------------------


def test_empty_extend() -> None:
    """TEST33: extend(S) of an empty S reservation succeeds (headroom), address unchanged."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        assert rsv.max_size >= 2 * S
        rsv.extend(S)
        assert (rsv.address, rsv.size) == (start, 2 * S)
        assert held(rsv) == (start, end)
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_map_extend(holey_file: Path) -> None:
    """TEST34: map at 0, extend(S), map at S: both in place, the first untouched."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m0 = rsv.map_file(holey_file, 0)
        with pmem_error(LengthOutOfRangeError):
            rsv.map_file(holey_file, S)
        rsv.extend(S)
        assert (rsv.address, rsv.size) == (start, 2 * S)
        assert (m0.address, m0.offset, m0.closed) == (start, 0, False)
        m1 = rsv.map_file(holey_file, S)
        assert m1.address == rsv.address + S
        assert rsv.mappings() == [m0, m1]
        kernel.assert_matches_kernel(rsv)
        m1.unmap()
        m0.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_unaligned_extend() -> None:
    """TEST35: extend(S-1) -> LENGTH_UNALIGNED, nothing changes."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        with pmem_error(LengthUnalignedError):
            rsv.extend(S - 1)
        assert (rsv.address, rsv.size) == (start, S)
        assert held(rsv) == (start, end)
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_empty_shrink(holey_file: Path) -> None:
    """TEST36: 3S reservation; shrink(0, S) returns the head, shrink(S, S) cuts the tail into
    headroom; then the file maps at offset 0 of what is left."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        rsv.shrink(0, S)
        assert (rsv.address, rsv.size) == (start + S, 2 * S)
        assert held(rsv) == (start + S, end)  # max_size dropped by S, the end stays
        assert kernel.is_free(start, start + S)  # the head went back to the system
        kernel.assert_matches_kernel(rsv)
        rsv.shrink(S, S)
        assert (rsv.address, rsv.size) == (start + S, S)
        assert held(rsv) == (start + S, end)  # the tail stays held as headroom
        assert_untakeable(start + 2 * S, S)
        kernel.assert_matches_kernel(rsv)
        m = rsv.map_file(holey_file, 0)
        assert m.address == rsv.address == start + S
        with pmem_error(LengthOutOfRangeError):
            rsv.map_anonymous(S, ALIGNMENT)  # the cut tail is no longer usable
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        close_and_check_free(rsv, start, end)


def test_map_shrink(holey_file: Path) -> None:
    """TEST37: a mapping at S survives shrink(0, S) (now at offset 0, same address) and
    shrink(S, S)."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, S)
        addr = m.address
        rsv.shrink(0, S)
        assert (rsv.address, rsv.size) == (start + S, 2 * S)
        assert (m.address, m.offset) == (addr, 0)
        assert rsv.find(0) is m
        kernel.assert_matches_kernel(rsv)
        rsv.shrink(S, S)
        assert rsv.size == S
        assert (m.address, m.offset) == (addr, 0)
        assert rsv.mappings() == [m]
        kernel.assert_matches_kernel(rsv)
        with m.view() as mv:
            mv[:6] = b"shrunk"
        m.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)
    assert holey_file.read_bytes()[:6] == b"shrunk"


def _assert_unchanged(rsv: Reservation, start: int, end: int, size: int) -> None:
    assert (rsv.address, rsv.size) == (start, size)
    assert held(rsv) == (start, end)
    kernel.assert_matches_kernel(rsv)


def test_unaligned_shrink() -> None:
    """TEST38: shrink(S-1, S) -> OFFSET_UNALIGNED; shrink(S, S-1) -> LENGTH_UNALIGNED."""
    with reserve(2 * S) as rsv:
        start, end = held(rsv)
        with pmem_error(OffsetUnalignedError):
            rsv.shrink(S - 1, S)
        with pmem_error(LengthUnalignedError):
            rsv.shrink(S, S - 1)
        _assert_unchanged(rsv, start, end, 2 * S)
        close_and_check_free(rsv, start, end)


def test_out_of_range_shrink() -> None:
    """TEST39: shrink(3S, S) -> OFFSET_OUT_OF_RANGE; shrink(0, 3S) and shrink(0, 0) ->
    LENGTH_OUT_OF_RANGE."""
    with reserve(2 * S) as rsv:
        start, end = held(rsv)
        with pmem_error(OffsetOutOfRangeError):
            rsv.shrink(3 * S, S)
        with pmem_error(OffsetOutOfRangeError):
            rsv.shrink(2 * S, S)  # offset == size
        with pmem_error(LengthOutOfRangeError):
            rsv.shrink(0, 3 * S)
        with pmem_error(LengthOutOfRangeError):
            rsv.shrink(0, 0)
        _assert_unchanged(rsv, start, end, 2 * S)
        close_and_check_free(rsv, start, end)


def test_unsupported_shrink() -> None:
    """TEST40: shrink of the middle or of the whole reservation -> NOSUPP."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        with pmem_error(NotSupportedError):
            rsv.shrink(S, S)
        with pmem_error(NotSupportedError):
            rsv.shrink(0, 3 * S)
        _assert_unchanged(rsv, start, end, 3 * S)
        close_and_check_free(rsv, start, end)


def test_occupied_region_shrink(holey_file: Path) -> None:
    """TEST41: shrinking the tail holding a mapping -> VM_RESERVATION_NOT_EMPTY; so does a
    region holding only part of one."""
    with reserve(2 * S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, S)
        with pmem_error(ReservationNotEmptyError):
            rsv.shrink(S, S)
        with pmem_error(ReservationNotEmptyError):
            rsv.shrink(2 * S - ALIGNMENT, ALIGNMENT)
        with pmem_error(ReservationNotEmptyError):
            rsv.shrink(0, S + ALIGNMENT)
        _assert_unchanged(rsv, start, end, 2 * S)
        assert rsv.mappings() == [m]
        assert not m.closed
        m.unmap()
        close_and_check_free(rsv, start, end)


# -- TEST42..TEST48: lookups --------------------------------------------------------------------


def test_one_map_find(holey_file: Path) -> None:
    """TEST42: every range intersecting the only mapping finds it."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        assert rsv.find(0, HALF) is m
        assert rsv.find(HALF, HALF) is m
        assert rsv.find(0, S) is m
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        assert rsv.find(0, S) is None
        close_and_check_free(rsv, start, end)


def test_two_maps_find(holey_file: Path) -> None:
    """TEST43: A at 0, B at S; find(0,S) is A, find(S,S) is B, find(0,2S) the earliest, A."""
    with reserve(2 * S) as rsv:
        start, end = held(rsv)
        a = rsv.map_file(holey_file, 0)
        b = rsv.map_file(holey_file, S)
        assert rsv.find(0, S) is a
        assert rsv.find(S, S) is b
        assert rsv.find(0, 2 * S) is a
        assert rsv.find(S - ALIGNMENT, 2 * ALIGNMENT) is a
        kernel.assert_matches_kernel(rsv)
        a.unmap()
        assert rsv.find(0, 2 * S) is b
        b.unmap()
        close_and_check_free(rsv, start, end)


def _five_maps(rsv: Reservation, path: Path) -> list[Mapping]:
    maps = [rsv.map_file(path, i * 2 * S) for i in range(5)]
    for i, m in enumerate(maps):
        assert m.address == rsv.address + i * 2 * S
    return maps


def test_prev_map_find(holey_file: Path) -> None:
    """TEST44: five maps at i*2S; find_prev(map[i]) is map[i-1]."""
    with reserve(10 * S) as rsv:
        start, end = held(rsv)
        maps = _five_maps(rsv, holey_file)
        for i in range(4, 0, -1):
            assert rsv.find_prev(maps[i]) is maps[i - 1]
        assert rsv.find_prev(maps[0]) is None
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_next_map_find(holey_file: Path) -> None:
    """TEST45: five maps at i*2S; find_next(map[i]) is map[i+1]."""
    with reserve(10 * S) as rsv:
        start, end = held(rsv)
        maps = _five_maps(rsv, holey_file)
        for i in range(4):
            assert rsv.find_next(maps[i]) is maps[i + 1]
        assert rsv.find_next(maps[4]) is None
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_not_existing_prev_next_map_find(holey_file: Path) -> None:
    """TEST46: a lone mapping has no neighbours: None (libpmem2: MAPPING_NOT_FOUND)."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, S)
        assert rsv.find_prev(m) is None
        assert rsv.find_next(m) is None
        assert rsv.find_first() is m
        assert rsv.find_last() is m
        kernel.assert_matches_kernel(rsv)
        m.unmap()
        assert rsv.find_prev(m) is None
        assert rsv.find_next(m) is None
        close_and_check_free(rsv, start, end)


def test_same_first_last_map_find(holey_file: Path) -> None:
    """TEST47: with one mapping, find_first and find_last are the same mapping."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        assert rsv.find_first() is None
        assert rsv.find_last() is None
        m = rsv.map_file(holey_file, 0)
        first, last = rsv.find_first(), rsv.find_last()
        assert first is not None
        assert first is last is m
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)
    assert rsv.find_first() is None
    assert rsv.find_last() is None


def test_first_last_map_find(holey_file: Path) -> None:
    """TEST48: ten maps at i*S; peel the first and the last off, five times."""
    with reserve(10 * S) as rsv:
        start, end = held(rsv)
        maps = [rsv.map_file(holey_file, i * S) for i in range(10)]
        for i in range(5):
            first, last = rsv.find_first(), rsv.find_last()
            assert first is maps[i]
            assert last is maps[9 - i]
            first.unmap()
            last.unmap()
            assert len(rsv.mappings()) == 8 - 2 * i
        assert rsv.find_first() is None
        assert rsv.find_last() is None
        assert rsv.mappings() == []
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        close_and_check_free(rsv, start, end)


# -- ex_libpmem2 TEST4: map_multiple_files ------------------------------------------------------


def test_map_multiple_files_one_memset(tmp_path: Path) -> None:
    """Nine 1 MiB files back to back in one reservation; one memset and one memmove across the
    whole reservation prove the mappings are contiguous and in order."""
    n = 9
    paths = [make_file(tmp_path / f"file{i}", MiB) for i in range(n)]
    with reserve(n * MiB) as rsv:
        start, end = held(rsv)
        maps = [rsv.map_file(p, i * MiB) for i, p in enumerate(paths)]
        for i, m in enumerate(maps):
            assert m.address == rsv.address + i * MiB
        kernel.assert_matches_kernel(rsv)
        ctypes.memset(rsv.address, 0xA5, n * MiB)
        for m in maps:
            with m.view() as mv:
                assert mv.tobytes() == b"\xa5" * MiB
        # one position-dependent write across all nine files: order and contiguity
        pattern = bytes(range(251)) * (n * MiB // 251 + 1)
        pattern = pattern[ALIGNMENT : ALIGNMENT + n * MiB - 2 * ALIGNMENT]
        ctypes.memmove(rsv.address + ALIGNMENT, pattern, len(pattern))
        for m in maps:
            m.unmap()
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)
    expected = b"\xa5" * ALIGNMENT + pattern + b"\xa5" * ALIGNMENT
    for i, p in enumerate(paths):
        assert p.read_bytes() == expected[i * MiB : (i + 1) * MiB], p


# -- extra cases worth adding --------------------------------------------------------------------


def test_adjacent_maps_below_and_above(holey_file: Path) -> None:
    """Mappings touching an existing one from below and from above succeed."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        mid = rsv.map_file(holey_file, S)
        below = rsv.map_file(holey_file, 0)
        above = rsv.map_file(holey_file, 2 * S)
        assert below.address + S == mid.address
        assert mid.address + S == above.address
        assert rsv.mappings() == [below, mid, above]
        assert rsv.find_prev(mid) is below
        assert rsv.find_next(mid) is above
        kernel.assert_matches_kernel(rsv)
        mid.unmap()
        assert rsv.find_next(below) is above
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_overlap_of_one_page_at_tail(holey_file: Path, tmp_path: Path) -> None:
    """A 4 KiB overlap with the tail of a mapping -> MAPPING_EXISTS, including the partial
    last page of a file whose size is not page-aligned; one page further is fine."""
    odd = make_file(tmp_path / "odd", S - 100)
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        a = rsv.map_file(holey_file, 0)
        with pmem_error(MappingExistsError):
            rsv.map_file(holey_file, S - ALIGNMENT)
        with pmem_error(MappingExistsError):
            rsv.map_anonymous(S - ALIGNMENT, ALIGNMENT)
        b = rsv.map_file(odd, S)
        assert b.size == S - 100
        # b occupies [S, 2S) in full: its partial last page counts
        assert rsv.find(2 * S - 50) is b
        with pmem_error(MappingExistsError):
            rsv.map_anonymous(2 * S - ALIGNMENT, ALIGNMENT)
        c = rsv.map_anonymous(2 * S, ALIGNMENT)
        assert c.address == rsv.address + 2 * S
        assert rsv.mappings() == [a, b, c]
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_map_at_offset_equal_to_size(holey_file: Path) -> None:
    """Reservation offset == size -> LENGTH_OUT_OF_RANGE (the headroom is not usable)."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        assert rsv.max_size > rsv.size
        with pmem_error(LengthOutOfRangeError):
            rsv.map_file(holey_file, S)
        with pmem_error(LengthOutOfRangeError):
            rsv.map_anonymous(S, ALIGNMENT)
        with pmem_error(LengthOutOfRangeError):
            rsv.map_anonymous(S - ALIGNMENT, 2 * ALIGNMENT)
        assert rsv.mappings() == []
        kernel.assert_matches_kernel(rsv)
        assert_placeholder(start, end)
        close_and_check_free(rsv, start, end)


def test_read_only_fd_with_write_protection(holey_file: Path) -> None:
    """A read-only descriptor with READ|WRITE -> NO_ACCESS; the range stays reserved and can
    be mapped right after (read-only through the same descriptor, read-write by path)."""
    fd = os.open(holey_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with reserve(S) as rsv:
            start, end = held(rsv)
            with pmem_error(NoAccessError) as info:
                rsv.map_file(fd, 0)
            assert isinstance(info.value, PermissionError)
            assert rsv.mappings() == []
            kernel.assert_matches_kernel(rsv)
            assert_placeholder(start, end)
            assert_untakeable(start, S)
            ro = rsv.map_file(fd, 0, protection=Protection.READ)
            assert ro.address == rsv.address
            with ro.view() as mv:
                assert mv.readonly
            kernel.assert_matches_kernel(rsv)
            ro.unmap()
            rw = rsv.map_file(holey_file, 0)
            assert rw.address == rsv.address
            kernel.assert_matches_kernel(rsv)
            close_and_check_free(rsv, start, end)
    finally:
        os.close(fd)


def test_unmapped_range_is_placeholder_not_hole(holey_file: Path) -> None:
    """After unmap the range is PROT_NONE and held: nothing else can be placed there."""
    with reserve(2 * S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, HALF)
        m.unmap()
        assert_placeholder(start + HALF, start + HALF + S)
        assert_untakeable(start + HALF, S)
        assert_untakeable(start + HALF + ALIGNMENT, ALIGNMENT)
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_find_with_zero_length(holey_file: Path) -> None:
    """find(offset) with length 0 finds the mapping containing offset, and only that."""
    with reserve(3 * S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, S)
        assert rsv.find(S) is m
        assert rsv.find(S, 0) is m
        assert rsv.find(2 * S - 1) is m
        assert rsv.find(S + 12345) is m
        assert rsv.find(S - 1) is None
        assert rsv.find(2 * S) is None
        assert rsv.find(0) is None
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_find_beyond_reservation(holey_file: Path) -> None:
    """Ranges outside the reservation (past the end, negative, huge) find nothing."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        assert rsv.find(S) is None
        assert rsv.find(S, S) is None
        assert rsv.find(10 * S, S) is None
        assert rsv.find(-1) is None
        assert rsv.find(-S, S) is None
        assert rsv.find(2**70) is None
        assert rsv.find(2**70, 2**70) is None
        assert rsv.find(S - 1) is m  # the edge is still found
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)
    assert rsv.find(0) is None


def test_extend_zero_is_noop(holey_file: Path) -> None:
    """extend(0) succeeds and changes nothing."""
    with reserve(S) as rsv:
        start, end = held(rsv)
        m = rsv.map_file(holey_file, 0)
        rsv.extend(0)
        assert (rsv.address, rsv.size) == (start, S)
        assert held(rsv) == (start, end)
        assert rsv.mappings() == [m]
        assert m.address == start
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, end)


def test_extend_blocked_by_foreign_mapping(holey_file: Path) -> None:
    """Past max_size, extend grows in place only: a foreign mapping right after the
    reservation -> MAPPING_EXISTS with nothing changed; once it is gone, extend succeeds and
    max_size follows."""
    base = free_window(3 * S)
    with reserve(S, address=base, max_size=S) as rsv:
        start = base
        assert held(rsv) == (base, base + S)
        with foreign_fixed(holey_file, base + S, S) as f:
            with pmem_error(MappingExistsError):
                rsv.extend(S)
            with pmem_error(MappingExistsError):
                rsv.extend(ALIGNMENT)
            assert (rsv.address, rsv.size, rsv.max_size) == (base, S, S)
            kernel.assert_matches_kernel(rsv)
            f.assert_intact()
        rsv.extend(S)
        assert (rsv.address, rsv.size, rsv.max_size) == (base, 2 * S, 2 * S)
        m = rsv.map_file(holey_file, S)
        assert m.address == base + S
        kernel.assert_matches_kernel(rsv)
        close_and_check_free(rsv, start, base + 2 * S)
    assert kernel.is_free(base, base + 3 * S)


def test_shrink_error_precedence() -> None:
    """Alignment is checked before range, offset before length: shrink(100, 0) ->
    OFFSET_UNALIGNED, shrink(2 MiB, 0) on 1 MiB -> OFFSET_OUT_OF_RANGE."""
    with reserve(MiB) as rsv:
        start, end = held(rsv)
        with pmem_error(OffsetUnalignedError):
            rsv.shrink(100, 0)
        with pmem_error(OffsetUnalignedError):
            rsv.shrink(100, 100)
        with pmem_error(LengthUnalignedError):
            rsv.shrink(2 * MiB, 100)
        with pmem_error(OffsetOutOfRangeError):
            rsv.shrink(2 * MiB, 0)
        with pmem_error(OffsetOutOfRangeError):
            rsv.shrink(-ALIGNMENT, 0)
        with pmem_error(LengthOutOfRangeError):
            rsv.shrink(ALIGNMENT, 0)
        with pmem_error(LengthOutOfRangeError):
            rsv.shrink(ALIGNMENT, MiB)
        with pmem_error(NotSupportedError):
            rsv.shrink(ALIGNMENT, ALIGNMENT)
        _assert_unchanged(rsv, start, end, MiB)
        close_and_check_free(rsv, start, end)
