"""API.md's error contract for ``aiopmem.sync``: the exception table and exports, the validation
order of every operation (a call that violates one step and every later one raises that step's
error), wrong argument types, huge integers, closed objects, and injected syscall failures
(``aiopmem.testing.inject``).

Every failing call is checked to leave the reservation exactly as it was (same attributes, same
mappings, same kernel view in ``/proc/self/maps``) and to leave no file descriptor open.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import io
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypedDict, TypeVar

import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem.sync import (
    ALIGNMENT,
    AddressUnalignedError,
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
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    PmemError,
    Protection,
    Reservation,
    ReservationNotEmptyError,
    Sharing,
    SourceEmptyError,
    reserve,
)
from aiopmem.testing import inject
from conftest import make_file
from kernel import assert_matches_kernel as check_kernel
from kernel import quiet_address, snapshot
from sizes import MiB, P

HUGE = 2**70

# -- helpers -----------------------------------------------------------------------------------


_E = TypeVar("_E", bound=BaseException)


def raises_exactly(exc_type: type[_E], fn: Callable[[], object]) -> _E:
    """``fn()`` raises ``exc_type`` (exactly that class for aiopmem's own, which are final)."""
    with pytest.raises(exc_type) as info:
        fn()
    if issubclass(exc_type, PmemError):
        assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    return info.value


def fails(
    rsv: Reservation,
    exc_type: type[BaseException],
    fn: Callable[[], object],
    err: int | None = None,
) -> BaseException:
    """``fn()`` raises ``exc_type`` (with errno ``err``) and leaves ``rsv`` unchanged, with no
    file descriptor left open."""
    before = snapshot(rsv)
    fds = kernel.open_fds()
    exc = raises_exactly(exc_type, fn)
    assert kernel.open_fds() == fds
    if err is not None:
        assert isinstance(exc, OSError)
        assert exc.errno == err, exc
    assert snapshot(rsv) == before
    check_kernel(rsv)
    return exc


# -- the exception table and the exports -------------------------------------------------------

TABLE = [
    (AddressUnalignedError, ValueError, "PMEM2_E_ADDRESS_UNALIGNED", -100022),
    (OffsetUnalignedError, ValueError, "PMEM2_E_OFFSET_UNALIGNED", -100011),
    (LengthUnalignedError, ValueError, "PMEM2_E_LENGTH_UNALIGNED", -100015),
    (OffsetOutOfRangeError, ValueError, "PMEM2_E_OFFSET_OUT_OF_RANGE", -100010),
    (LengthOutOfRangeError, ValueError, "PMEM2_E_LENGTH_OUT_OF_RANGE", -100030),
    (MapRangeError, ValueError, "PMEM2_E_MAP_RANGE", -100006),
    (SourceEmptyError, ValueError, "PMEM2_E_SOURCE_EMPTY", -100018),
    (InvalidFileHandleError, ValueError, "PMEM2_E_INVALID_FILE_HANDLE", -100004),
    (InvalidFileTypeError, ValueError, "PMEM2_E_INVALID_FILE_TYPE", -100005),
    (NotSupportedError, None, "PMEM2_E_NOSUPP", -100001),
    (MappingExistsError, None, "PMEM2_E_MAPPING_EXISTS", -100007),
    (ReservationNotEmptyError, None, "PMEM2_E_VM_RESERVATION_NOT_EMPTY", -100033),
    (NoAccessError, PermissionError, "PMEM2_E_NO_ACCESS", -100032),
    (ClosedError, ValueError, "AIOPMEM_E_CLOSED", -1),
]

EXCEPTION_NAMES = [cls.__name__ for cls, *_ in TABLE] + ["PmemError"]
SHARED_NAMES = [*EXCEPTION_NAMES, "Protection", "Sharing", "Granularity", "ALIGNMENT"]


@pytest.mark.parametrize(("cls", "builtin", "code", "value"), TABLE, ids=str)
def test_exception_table(
    cls: type[PmemError], builtin: type[Exception] | None, code: str, value: int
) -> None:
    assert issubclass(cls, PmemError)
    assert issubclass(cls, Exception)
    assert cls.code == code
    assert cls.value == value
    others = {ValueError, PermissionError} - {builtin}
    if builtin is not None:
        assert issubclass(cls, builtin)
    for other in others:
        assert not issubclass(cls, other), f"{cls.__name__} must not derive from {other}"
    if builtin is None:
        assert not issubclass(cls, OSError)


def test_raised_exceptions_carry_code_and_value() -> None:
    with reserve(P, max_size=P) as rsv:
        exc = raises_exactly(LengthUnalignedError, lambda: rsv.extend(1))
        assert exc.code == "PMEM2_E_LENGTH_UNALIGNED"
        assert exc.value == -100015
        m = rsv.map_anonymous(0, P, protection=Protection.NONE)
        exc2 = raises_exactly(NoAccessError, m.view)
        assert isinstance(exc2, PermissionError)
        assert exc2.code == "PMEM2_E_NO_ACCESS"
        assert exc2.value == -100032


def test_pmem_error_is_the_common_base() -> None:
    assert PmemError.__bases__ == (Exception,)
    for cls, *_ in TABLE:
        assert cls.__mro__.index(PmemError) < cls.__mro__.index(Exception)


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_exported_from_both_modules(name: str) -> None:
    sync_obj = getattr(aiopmem.sync, name)
    assert getattr(aiopmem, name) is sync_obj
    assert name in aiopmem.sync.__all__
    assert name in aiopmem.__all__


@pytest.mark.parametrize("name", ["reserve", "Reservation", "Mapping"])
def test_sync_exports_the_api(name: str) -> None:
    assert name in aiopmem.sync.__all__
    assert getattr(aiopmem.sync, name) is not None


def test_alignment_is_the_page_size() -> None:
    assert ALIGNMENT == os.sysconf("SC_PAGESIZE") == 4096
    assert type(ALIGNMENT) is int
    assert aiopmem.ALIGNMENT == ALIGNMENT


def test_enums() -> None:
    assert issubclass(Protection, enum.Flag)
    assert issubclass(Sharing, enum.Enum)
    assert not issubclass(Sharing, enum.Flag)
    assert issubclass(Granularity, enum.Enum)
    assert not issubclass(Granularity, enum.Flag)
    assert {p.name for p in Protection.__members__.values()} == {"NONE", "READ", "WRITE", "EXEC"}
    assert set(Sharing.__members__) == {"SHARED", "PRIVATE"}
    assert set(Granularity.__members__) == {"BYTE", "CACHE_LINE", "PAGE"}
    assert not Protection.NONE
    rw = Protection.READ | Protection.WRITE
    assert Protection.READ in rw
    assert Protection.WRITE in rw
    assert Protection.EXEC not in rw
    assert len({Protection.READ, Protection.WRITE, Protection.EXEC, Protection.NONE}) == 4


def test_no_public_constructors() -> None:
    with pytest.raises(TypeError):
        Mapping()
    with pytest.raises(TypeError):
        Reservation()
    with pytest.raises(TypeError):
        Reservation(0x10000000, P, P)  # type: ignore[call-arg]


# -- the fixture for the validation-order tables ------------------------------------------------


@dataclass
class Env:
    """A 1 MiB reservation (max_size 2 MiB) with anonymous pages at 0 and 100, and a 10000-byte
    file mapped at page 253 (its partial last page reaches the end), plus files and fds."""

    rsv: Reservation
    tmp: Path
    full: Path  # 16 MiB, holey
    small: Path  # 10000 bytes
    empty: Path
    ro_fd: int
    wo_fd: int
    dir_fd: int
    none: Mapping  # 3 pages, Protection.NONE, at page 10
    rw: Mapping  # 3 pages, read-write, at page 20

    def closed_fd(self) -> int:
        fd = os.open(self.full, os.O_RDONLY)
        os.close(fd)
        return fd

    def closed_file(self) -> io.BufferedReader:
        f = open(self.full, "rb")  # noqa: SIM115
        f.close()
        return f


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    full = make_file(tmp_path / "full", 16 * MiB)
    small = make_file(tmp_path / "small", 10000, b"s")
    empty = make_file(tmp_path / "empty", 0)
    ro_fd = os.open(full, os.O_RDONLY)
    wo_fd = os.open(full, os.O_WRONLY)
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    rsv = reserve(MiB, max_size=2 * MiB)
    try:
        rsv.map_anonymous(0, P)
        rsv.map_anonymous(100 * P, P)
        rsv.map_file(small, 253 * P)
        none = rsv.map_anonymous(10 * P, 3 * P, protection=Protection.NONE)
        rw = rsv.map_anonymous(20 * P, 3 * P)
        yield Env(rsv, tmp_path, full, small, empty, ro_fd, wo_fd, dir_fd, none, rw)
    finally:
        rsv.close()
        os.close(ro_fd)
        os.close(wo_fd)
        os.close(dir_fd)


Case = Callable[[Env], object]


def case(exc: type[BaseException], call: Case, id: str) -> Any:
    return pytest.param(exc, call, id=id)


def run_case(env: Env, exc: type[BaseException], call: Case) -> None:
    fails(env.rsv, exc, lambda: call(env))


# -- reserve -----------------------------------------------------------------------------------

RESERVE_ORDER = [
    # 1. address unaligned, with everything after violated too
    case(AddressUnalignedError, lambda e: reserve(-1, address=1, max_size=3), "address"),
    case(AddressUnalignedError, lambda e: reserve(0, address=-1, max_size=1), "address-neg"),
    case(AddressUnalignedError, lambda e: reserve(P, address=HUGE + 1), "address-huge"),
    # 2. size unaligned (and <= 0, max_size bad)
    case(LengthUnalignedError, lambda e: reserve(-1, max_size=3), "size"),
    case(LengthUnalignedError, lambda e: reserve(100, address=-P, max_size=1), "size-100"),
    # 3. size <= 0 (max_size bad, address unusable)
    case(LengthOutOfRangeError, lambda e: reserve(0, address=-P, max_size=1), "size-0"),
    case(LengthOutOfRangeError, lambda e: reserve(-P, max_size=-1), "size-neg"),
    case(LengthOutOfRangeError, lambda e: reserve(-HUGE), "size-neg-huge"),
    case(LengthOutOfRangeError, lambda e: reserve(HUGE, max_size=HUGE), "size-huge"),
    case(LengthOutOfRangeError, lambda e: reserve(2**64), "size-2**64"),
    # 4. max_size unaligned (and smaller than size, address unusable)
    case(LengthUnalignedError, lambda e: reserve(2 * P, address=-P, max_size=1), "max"),
    case(LengthUnalignedError, lambda e: reserve(2 * P, max_size=-1), "max-neg"),
    # 5. max_size < size (address unusable)
    case(LengthOutOfRangeError, lambda e: reserve(2 * P, address=-P, max_size=P), "max-small"),
    case(LengthOutOfRangeError, lambda e: reserve(P, max_size=0), "max-0"),
    case(LengthOutOfRangeError, lambda e: reserve(P, max_size=-HUGE), "max-neg-huge"),
    case(LengthOutOfRangeError, lambda e: reserve(P, max_size=HUGE), "max-huge"),
]


@pytest.mark.parametrize(("exc", "call"), RESERVE_ORDER)
def test_reserve_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": -P},
        {"address": -HUGE},
        {"address": HUGE},
        {"address": 2**64},
        {"address": 2**64 - P, "max_size": 2 * P},
        {"address": 2**64 - 2 * P, "max_size": 1 << 30},
    ],
    ids=str,
)
def test_reserve_unusable_aligned_address_is_einval(env: Env, kwargs: dict[str, int]) -> None:
    exc = fails(env.rsv, OSError, lambda: reserve(P, **kwargs), errno.EINVAL)
    assert not isinstance(exc, PmemError)


def test_reserve_address_the_kernel_refuses(env: Env) -> None:
    # Above the user address space (even with 5-level paging): the kernel's ENOMEM.
    exc = fails(env.rsv, OSError, lambda: reserve(P, address=2**57), errno.ENOMEM)
    assert not isinstance(exc, PmemError)


def test_reserve_over_an_occupied_range(env: Env) -> None:
    rsv = env.rsv
    v = env.rw.view()
    v[:4] = b"keep"
    del v
    for kwargs in (
        {"address": rsv.address},
        {"address": rsv.address + 20 * P},  # right on a mapping
        {"address": rsv.address + 300 * P},  # in the headroom
        {"address": rsv.address - P, "max_size": 2 * P},  # only max_size reaches it
    ):
        fails(rsv, MappingExistsError, partial(reserve, P, **kwargs))
    assert bytes(env.rw.view(0, 4)) == b"keep"


# -- map_file ----------------------------------------------------------------------------------


class _Bad(TypedDict):
    file_offset: int
    length: int


BAD: _Bad = {"file_offset": 1, "length": -1}  # steps 2 and 4 violated; offset=1 violates step 6

MAP_FILE_ORDER = [
    # 1. file handle / path (all of 2, 4, 6 violated too)
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(-1, 1, **BAD), "fd-neg"),
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(-HUGE, 1, **BAD), "fd-neg-huge"),
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(HUGE, 1, **BAD), "fd-huge"),
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(2**31, 1, **BAD), "fd-2**31"),
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(e.wo_fd, 1, **BAD), "fd-wronly"),
    case(InvalidFileHandleError, lambda e: e.rsv.map_file(e.closed_fd(), 1, **BAD), "fd-closed"),
    case(
        InvalidFileHandleError, lambda e: e.rsv.map_file(e.closed_file(), 1, **BAD), "file-closed"
    ),
    case(FileNotFoundError, lambda e: e.rsv.map_file(e.tmp / "nope", 1, **BAD), "missing"),
    case(
        FileNotFoundError,
        lambda e: e.rsv.map_file(str(e.tmp / "nope"), 1, protection=Protection.READ, **BAD),
        "missing-ro",
    ),
    case(InvalidFileTypeError, lambda e: e.rsv.map_file(e.tmp, 1, **BAD), "dir"),
    case(
        InvalidFileTypeError,
        lambda e: e.rsv.map_file(e.tmp, 1, protection=Protection.READ, **BAD),
        "dir-ro",
    ),
    case(
        InvalidFileTypeError,
        lambda e: e.rsv.map_file(e.tmp, 1, sharing=Sharing.PRIVATE, **BAD),
        "dir-private",
    ),
    case(InvalidFileTypeError, lambda e: e.rsv.map_file(e.dir_fd, 1, **BAD), "dir-fd"),
    # 2. file_offset: unaligned first, then negative (empty file: 3, length: 4, offset: 6)
    case(
        OffsetUnalignedError,
        lambda e: e.rsv.map_file(e.empty, 1, file_offset=1, length=-1),
        "file_offset",
    ),
    case(
        OffsetUnalignedError,
        lambda e: e.rsv.map_file(e.empty, 1, file_offset=-1, length=-1),
        "file_offset-neg-unaligned",
    ),
    case(MapRangeError, lambda e: e.rsv.map_file(e.empty, 1, file_offset=-P, length=-1), "fo-neg"),
    case(
        MapRangeError,
        lambda e: e.rsv.map_file(e.empty, 1, file_offset=-HUGE, length=-1),
        "fo-neg-huge",
    ),
    # 3. empty file (length: 4, offset: 6; file_offset past the end: 5)
    case(SourceEmptyError, lambda e: e.rsv.map_file(e.empty, 1, length=-1), "empty"),
    case(
        SourceEmptyError,
        lambda e: e.rsv.map_file(e.empty, 1, file_offset=P, length=100),
        "empty-fo",
    ),
    case(
        SourceEmptyError,
        lambda e: e.rsv.map_file(e.empty, -1, protection=Protection.READ),
        "empty-ro",
    ),
    # 4. length: negative first, then unaligned (5 and 6 violated)
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.full, 1, length=-1), "len-neg"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.full, 1, length=-P), "len-neg-P"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.full, 1, length=-HUGE), "len-neg-huge"),
    case(
        LengthUnalignedError,
        lambda e: e.rsv.map_file(e.full, 1, file_offset=32 * MiB, length=100),
        "len-unaligned",
    ),
    case(
        LengthUnalignedError,
        lambda e: e.rsv.map_file(e.small, 1, length=10000),
        "len-unaligned-whole-file",
    ),
    # 5. beyond the end of the file / nothing left (6, 7 and 8 violated)
    case(MapRangeError, lambda e: e.rsv.map_file(e.full, 1, length=32 * MiB), "past-end"),
    case(
        MapRangeError,
        lambda e: e.rsv.map_file(e.full, 1, file_offset=8 * MiB, length=16 * MiB),
        "past-end-fo",
    ),
    case(MapRangeError, lambda e: e.rsv.map_file(e.full, 1, file_offset=16 * MiB), "nothing"),
    case(
        MapRangeError,
        lambda e: e.rsv.map_file(e.full, 1, file_offset=16 * MiB, length=0),
        "nothing-len0",
    ),
    case(MapRangeError, lambda e: e.rsv.map_file(e.small, 1, file_offset=3 * P), "small-past"),
    case(MapRangeError, lambda e: e.rsv.map_file(e.full, 1, length=HUGE), "len-huge"),
    case(MapRangeError, lambda e: e.rsv.map_file(e.full, 1, file_offset=HUGE), "fo-huge"),
    case(
        MapRangeError,
        lambda e: e.rsv.map_file(e.full, 1, file_offset=2**63, length=P),
        "fo-2**63",
    ),
    # 6. offset unaligned (7 violated, and 9: read-only fd mapped for writing)
    case(OffsetUnalignedError, lambda e: e.rsv.map_file(e.ro_fd, 1, length=P), "offset"),
    case(OffsetUnalignedError, lambda e: e.rsv.map_file(e.ro_fd, -1, length=P), "offset-neg"),
    case(
        OffsetUnalignedError,
        lambda e: e.rsv.map_file(e.ro_fd, e.rsv.size + 1, length=P),
        "offset-past",
    ),
    case(
        OffsetUnalignedError,
        lambda e: e.rsv.map_file(e.ro_fd, HUGE + 1, length=P),
        "offset-huge",
    ),
    # 7. does not fit (9 violated)
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.ro_fd, -P, length=P), "offset-neg-P"),
    case(
        LengthOutOfRangeError,
        lambda e: e.rsv.map_file(e.ro_fd, e.rsv.size, length=P),
        "offset-at-end",
    ),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.ro_fd, HUGE, length=P), "o-huge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.ro_fd, -HUGE, length=P), "o-nhuge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_file(e.ro_fd, 0), "whole-16MiB"),
    case(
        LengthOutOfRangeError,
        lambda e: e.rsv.map_file(e.ro_fd, e.rsv.size - P, length=2 * P),
        "tail",
    ),
    case(
        # 10000 bytes need 3 pages: the round-up counts
        LengthOutOfRangeError,
        lambda e: e.rsv.map_file(e.small, e.rsv.size - 2 * P),
        "partial-page-rounded",
    ),
    # 8. overlap (9 violated: read-only fd with WRITE)
    case(MappingExistsError, lambda e: e.rsv.map_file(e.ro_fd, 0, length=P), "overlap"),
    case(
        MappingExistsError,
        lambda e: e.rsv.map_file(e.ro_fd, 99 * P, length=2 * P),
        "overlap-partly",
    ),
    case(
        # the 10000-byte mapping at page 253 occupies pages 253..255
        MappingExistsError,
        lambda e: e.rsv.map_file(e.ro_fd, 255 * P, length=P),
        "overlap-partial-page",
    ),
    # 9. the kernel refuses the access
    case(NoAccessError, lambda e: e.rsv.map_file(e.ro_fd, 200 * P, length=P), "ro-fd-rw"),
    case(
        NoAccessError,
        lambda e: e.rsv.map_file(e.ro_fd, 200 * P, protection=Protection.WRITE, length=P),
        "ro-fd-w",
    ),
]


@pytest.mark.parametrize(("exc", "call"), MAP_FILE_ORDER)
def test_map_file_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)


def test_map_file_no_access_leaves_a_reusable_placeholder(env: Env) -> None:
    rsv = env.rsv
    fails(rsv, NoAccessError, lambda: rsv.map_file(env.ro_fd, 200 * P, length=2 * P))
    [v] = kernel.vmas_in(rsv.address + 200 * P, rsv.address + 202 * P)
    assert kernel.is_placeholder(v)
    assert rsv.find(200 * P, 2 * P) is None
    m = rsv.map_file(env.ro_fd, 200 * P, length=2 * P, protection=Protection.READ)
    assert rsv.find(201 * P) is m
    check_kernel(rsv)
    m.unmap()
    m = rsv.map_anonymous(200 * P, 2 * P)
    check_kernel(rsv)


# -- map_anonymous -----------------------------------------------------------------------------

MAP_ANON_ORDER = [
    # length unaligned (<= 0, offset unaligned and out of range too)
    case(LengthUnalignedError, lambda e: e.rsv.map_anonymous(-1, -1), "len-neg-unaligned"),
    case(LengthUnalignedError, lambda e: e.rsv.map_anonymous(1, 100), "len-100"),
    case(LengthUnalignedError, lambda e: e.rsv.map_anonymous(-HUGE - 1, HUGE + 1), "len-huge"),
    # length <= 0
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(1, 0), "len-0"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(-1, -P), "len-neg"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(1, -HUGE), "len-neg-huge"),
    # 6. offset unaligned
    case(OffsetUnalignedError, lambda e: e.rsv.map_anonymous(1, P), "offset"),
    case(OffsetUnalignedError, lambda e: e.rsv.map_anonymous(-1, 2 * MiB), "offset-neg"),
    case(OffsetUnalignedError, lambda e: e.rsv.map_anonymous(HUGE + 1, P), "offset-huge"),
    # 7. does not fit
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(-P, P), "offset-neg-P"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(-P, 2 * P), "offset-neg-2P"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(e.rsv.size, P), "offset-end"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(HUGE, P), "offset-huge-al"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(-HUGE, P), "offset-nhuge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(200 * P, HUGE), "len-huge-al"),
    case(LengthOutOfRangeError, lambda e: e.rsv.map_anonymous(0, 2 * MiB), "in-headroom"),
    case(
        LengthOutOfRangeError,
        lambda e: e.rsv.map_anonymous(e.rsv.size - P, 2 * P),
        "tail",
    ),
    # 8. overlap
    case(MappingExistsError, lambda e: e.rsv.map_anonymous(0, P), "overlap"),
    case(MappingExistsError, lambda e: e.rsv.map_anonymous(98 * P, 4 * P), "overlap-inside"),
    case(MappingExistsError, lambda e: e.rsv.map_anonymous(255 * P, P), "overlap-partial-page"),
    case(MappingExistsError, lambda e: e.rsv.map_anonymous(0, MiB), "overlap-all"),
]


@pytest.mark.parametrize(("exc", "call"), MAP_ANON_ORDER)
def test_map_anonymous_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)


def test_overlap_is_checked_before_any_syscall(env: Env) -> None:
    # Step 8 before step 9: an overlapping map makes no syscall at all.
    with inject("mmap", errno=errno.ENOMEM, times=100) as inj:
        fails(env.rsv, MappingExistsError, lambda: env.rsv.map_anonymous(0, P))
        fails(env.rsv, MappingExistsError, lambda: env.rsv.map_file(env.full, 0, length=P))
    assert inj.seen == 0


# -- extend ------------------------------------------------------------------------------------

EXTEND_ORDER = [
    case(LengthUnalignedError, lambda e: e.rsv.extend(-1), "neg-unaligned"),
    case(LengthUnalignedError, lambda e: e.rsv.extend(100), "unaligned"),
    case(LengthUnalignedError, lambda e: e.rsv.extend(HUGE + 1), "huge-unaligned"),
    case(LengthUnalignedError, lambda e: e.rsv.extend(-HUGE - 1), "neg-huge-unaligned"),
    case(LengthOutOfRangeError, lambda e: e.rsv.extend(-P), "neg"),
    case(LengthOutOfRangeError, lambda e: e.rsv.extend(-HUGE), "neg-huge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.extend(HUGE), "huge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.extend(2**64), "2**64"),
]


@pytest.mark.parametrize(("exc", "call"), EXTEND_ORDER)
def test_extend_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)


def test_extend_zero_is_a_no_op(env: Env) -> None:
    before = snapshot(env.rsv)
    with inject("mmap", errno=errno.ENOMEM, times=10) as inj:
        assert env.rsv.extend(0) is None  # type: ignore[func-returns-value]  # the contract
    assert inj.seen == 0
    assert snapshot(env.rsv) == before


# -- shrink ------------------------------------------------------------------------------------
# env.rsv: 256 pages; mappings at pages 0, 10-12, 20-22, 100, 253-255 (partial last page).

SHRINK_ORDER = [
    # 1. offset unaligned (size unaligned, offset out of range, size <= 0 ...)
    case(OffsetUnalignedError, lambda e: e.rsv.shrink(100, 0), "offset"),
    case(OffsetUnalignedError, lambda e: e.rsv.shrink(-1, -1), "offset-neg"),
    case(OffsetUnalignedError, lambda e: e.rsv.shrink(e.rsv.size + 1, 1), "offset-past"),
    case(OffsetUnalignedError, lambda e: e.rsv.shrink(HUGE + 1, -HUGE - 1), "offset-huge"),
    # 2. size unaligned (offset out of range, ...)
    case(LengthUnalignedError, lambda e: e.rsv.shrink(e.rsv.size, 1), "size"),
    case(LengthUnalignedError, lambda e: e.rsv.shrink(-P, -1), "size-neg"),
    case(LengthUnalignedError, lambda e: e.rsv.shrink(HUGE, HUGE + 1), "size-huge"),
    case(LengthUnalignedError, lambda e: e.rsv.shrink(0, 100), "size-front-mapped"),
    # 3. offset out of range (size <= 0 ...)
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(-P, 0), "offset-neg-P"),
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(e.rsv.size, 0), "offset-end"),
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(2 * MiB, 0), "offset-2MiB"),
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(HUGE, -P), "offset-huge"),
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(-HUGE, -HUGE), "offset-neg-huge"),
    case(OffsetOutOfRangeError, lambda e: e.rsv.shrink(300 * P, P), "offset-in-headroom"),
    # 4. size <= 0 (in the middle, on a mapping)
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(P, 0), "size-0"),
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(100 * P, -P), "size-neg"),
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(0, -HUGE), "size-neg-huge"),
    # 5. past the end (and not touching the beginning, over mappings)
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(P, e.rsv.size), "past-end"),
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(100 * P, HUGE), "past-end-huge"),
    case(LengthOutOfRangeError, lambda e: e.rsv.shrink(0, e.rsv.size + P), "more-than-all"),
    # 6. in the middle / the whole reservation (mappings inside)
    case(NotSupportedError, lambda e: e.rsv.shrink(100 * P, P), "middle"),
    case(NotSupportedError, lambda e: e.rsv.shrink(P, 200 * P), "middle-big"),
    case(NotSupportedError, lambda e: e.rsv.shrink(0, e.rsv.size), "whole"),
    # 7. holds a mapping
    case(ReservationNotEmptyError, lambda e: e.rsv.shrink(0, P), "front"),
    case(ReservationNotEmptyError, lambda e: e.rsv.shrink(0, 50 * P), "front-big"),
    case(ReservationNotEmptyError, lambda e: e.rsv.shrink(250 * P, 6 * P), "tail"),
    case(
        # the 10000-byte mapping's partial last page (page 255) belongs to it
        ReservationNotEmptyError,
        lambda e: e.rsv.shrink(255 * P, P),
        "tail-partial-page",
    ),
]


@pytest.mark.parametrize(("exc", "call"), SHRINK_ORDER)
def test_shrink_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)


def test_shrink_of_a_one_page_reservation_is_not_supported() -> None:
    with reserve(P, max_size=2 * P) as rsv:
        fails(rsv, NotSupportedError, lambda: rsv.shrink(0, P))


# -- view and persist --------------------------------------------------------------------------

VIEW_ORDER = [
    # NoAccess before the range checks
    case(NoAccessError, lambda e: e.none.view(-1, -1), "no-access"),
    case(NoAccessError, lambda e: e.none.view(HUGE, HUGE), "no-access-huge"),
    case(NoAccessError, lambda e: e.none.view(), "no-access-default"),
    # offset outside [0, size] (length bad too)
    case(OffsetOutOfRangeError, lambda e: e.rw.view(-1, -1), "offset-neg"),
    case(OffsetOutOfRangeError, lambda e: e.rw.view(3 * P + 1, 1), "offset-past"),
    case(OffsetOutOfRangeError, lambda e: e.rw.view(HUGE, -HUGE), "offset-huge"),
    case(OffsetOutOfRangeError, lambda e: e.rw.view(-HUGE), "offset-neg-huge"),
    # length negative or past the end
    case(LengthOutOfRangeError, lambda e: e.rw.view(0, -1), "length-neg"),
    case(LengthOutOfRangeError, lambda e: e.rw.view(1, 3 * P), "length-past"),
    case(LengthOutOfRangeError, lambda e: e.rw.view(3 * P, 1), "length-at-end"),
    case(LengthOutOfRangeError, lambda e: e.rw.view(0, HUGE), "length-huge"),
    case(LengthOutOfRangeError, lambda e: e.rw.view(0, -HUGE), "length-neg-huge"),
]


@pytest.mark.parametrize(("exc", "call"), VIEW_ORDER)
def test_view_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    run_case(env, exc, call)
    assert env.rw.view().tobytes() == bytes(3 * P)  # still usable, no export left behind
    env.rw.unmap()


PERSIST_ORDER = [
    case(OffsetOutOfRangeError, lambda e: e.rw.persist(-1, -1), "offset-neg"),
    case(OffsetOutOfRangeError, lambda e: e.rw.persist(3 * P + 1, 1), "offset-past"),
    case(OffsetOutOfRangeError, lambda e: e.rw.persist(HUGE, -HUGE), "offset-huge"),
    case(OffsetOutOfRangeError, lambda e: e.rw.persist(-HUGE), "offset-neg-huge"),
    case(LengthOutOfRangeError, lambda e: e.rw.persist(0, -1), "length-neg"),
    case(LengthOutOfRangeError, lambda e: e.rw.persist(1, 3 * P), "length-past"),
    case(LengthOutOfRangeError, lambda e: e.rw.persist(3 * P, 1), "length-at-end"),
    case(LengthOutOfRangeError, lambda e: e.rw.persist(0, HUGE), "length-huge"),
]


@pytest.mark.parametrize(("exc", "call"), PERSIST_ORDER)
def test_persist_validation_order(env: Env, exc: type[BaseException], call: Case) -> None:
    with inject("msync", errno=errno.EIO, times=100) as inj:
        run_case(env, exc, call)
    assert inj.seen == 0  # refused before any syscall


def test_view_and_persist_accept_the_whole_range(env: Env) -> None:
    rw = env.rw
    assert len(rw.view(3 * P)) == 0
    assert len(rw.view(3 * P, 0)) == 0
    assert len(rw.view(0, 3 * P)) == 3 * P
    assert len(rw.view(P)) == 2 * P
    assert len(rw.view(P, 0)) == 0
    rw.persist(3 * P)
    rw.persist(0, 3 * P)
    rw.persist(1, 0)
    rw.persist(P, None)
    rw.unmap()


# -- wrong types -------------------------------------------------------------------------------

WRONG = [1.0 * P, str(P), True, False, b"\x00\x10", None]
WRONG_NOT_NONE = [w for w in WRONG if w is not None]


def type_cases() -> list[Any]:
    cases: list[Any] = []

    def add(name: str, values: list[object], call: Callable[[Env, Any], object]) -> None:
        cases.extend(pytest.param(call, v, id=f"{name}-{type(v).__name__}-{v!r}") for v in values)

    add("reserve-size", WRONG, lambda e, v: reserve(v))
    add("reserve-address", WRONG_NOT_NONE, lambda e, v: reserve(P, address=v))
    add("reserve-max_size", WRONG_NOT_NONE, lambda e, v: reserve(P, max_size=v))
    add("map_file-file", [1.5, None, True, object(), [3]], lambda e, v: e.rsv.map_file(v, 0))
    add("map_file-offset", WRONG, lambda e, v: e.rsv.map_file(e.full, v, length=P))
    add("map_file-length", WRONG_NOT_NONE, lambda e, v: e.rsv.map_file(e.full, 0, length=v))
    add("map_file-file_offset", WRONG, lambda e, v: e.rsv.map_file(e.full, 0, file_offset=v))
    prot_bad = [3, "READ", None, Sharing.SHARED, True]
    share_bad = [0, "SHARED", None, Protection.READ, True]
    add("map_file-prot", prot_bad, lambda e, v: e.rsv.map_file(e.full, 0, protection=v))
    add("map_file-sharing", share_bad, lambda e, v: e.rsv.map_file(e.full, 0, sharing=v))
    add("map_anon-offset", WRONG, lambda e, v: e.rsv.map_anonymous(v, P))
    add("map_anon-length", WRONG, lambda e, v: e.rsv.map_anonymous(200 * P, v))
    add("map_anon-prot", prot_bad, lambda e, v: e.rsv.map_anonymous(200 * P, P, protection=v))
    add("map_anon-sharing", share_bad, lambda e, v: e.rsv.map_anonymous(200 * P, P, sharing=v))
    add("extend", WRONG, lambda e, v: e.rsv.extend(v))
    add("shrink-offset", WRONG, lambda e, v: e.rsv.shrink(v, P))
    add("shrink-size", WRONG, lambda e, v: e.rsv.shrink(255 * P, v))
    add("view-offset", WRONG, lambda e, v: e.rw.view(v))
    add("view-length", WRONG_NOT_NONE, lambda e, v: e.rw.view(0, v))
    add("persist-offset", WRONG, lambda e, v: e.rw.persist(v))
    add("persist-length", WRONG_NOT_NONE, lambda e, v: e.rw.persist(0, v))
    add("find-offset", WRONG, lambda e, v: e.rsv.find(v))
    add("find-length", WRONG, lambda e, v: e.rsv.find(0, v))
    add("find_prev", [None, 0, "m", 1.0], lambda e, v: e.rsv.find_prev(v))
    add("find_next", [None, 0, "m", 1.0], lambda e, v: e.rsv.find_next(v))
    return cases


@pytest.mark.parametrize(("call", "value"), type_cases())
def test_wrong_types_raise_type_error(
    env: Env, call: Callable[[Env, object], object], value: object
) -> None:
    before = snapshot(env.rsv)
    fds = kernel.open_fds()
    with pytest.raises(TypeError):
        call(env, value)
    assert snapshot(env.rsv) == before
    assert kernel.open_fds() == fds
    check_kernel(env.rsv)


def test_type_errors_come_before_value_errors(env: Env) -> None:
    # A wrong type is reported even when the other arguments are invalid too.
    with pytest.raises(TypeError):
        reserve(1.5, address=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        env.rsv.map_file(env.tmp / "nope", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        env.rsv.map_anonymous(1, 1, protection="rw")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        env.rsv.shrink(1, 1.5)  # type: ignore[arg-type]


# -- closed objects ----------------------------------------------------------------------------


def test_closed_reservation(tmp_path: Path) -> None:
    path = make_file(tmp_path / "f", P)
    rsv = reserve(MiB)
    m = rsv.map_anonymous(0, P)
    rsv.close()
    assert rsv.closed
    assert m.closed
    raises_exactly(ClosedError, lambda: rsv.map_file(path, P))
    raises_exactly(ClosedError, lambda: rsv.map_anonymous(P, P))
    raises_exactly(ClosedError, lambda: rsv.extend(P))
    raises_exactly(ClosedError, lambda: rsv.shrink(0, P))
    raises_exactly(ClosedError, m.view)
    raises_exactly(ClosedError, m.persist)
    m.unmap()  # idempotent
    rsv.close()  # idempotent
    assert rsv.find(0) is None
    assert rsv.find(-HUGE, HUGE) is None
    assert rsv.find_first() is None
    assert rsv.find_last() is None
    assert rsv.find_prev(m) is None
    assert rsv.find_next(m) is None
    assert rsv.mappings() == []


def test_closed_mapping() -> None:
    with reserve(MiB) as rsv:
        m = rsv.map_anonymous(0, P)
        other = rsv.map_anonymous(2 * P, P)
        m.unmap()
        assert m.closed
        before = snapshot(rsv)
        raises_exactly(ClosedError, m.view)
        raises_exactly(ClosedError, lambda: m.view(0, 1))
        raises_exactly(ClosedError, m.persist)
        raises_exactly(ClosedError, lambda: m.persist(0, 1))
        m.unmap()
        m.close()
        assert snapshot(rsv) == before
        assert rsv.find(0) is None
        assert rsv.find_prev(m) is None
        assert rsv.find_next(m) is None
        assert rsv.mappings() == [other]
        assert rsv.find_first() is other


# -- lookups never raise for integers ----------------------------------------------------------


def test_lookups_never_raise_for_integers(env: Env) -> None:
    rsv = env.rsv
    first = rsv.find(0)
    assert first is not None
    assert first.offset == 0
    for args in [
        (-1,),
        (-P,),
        (-HUGE,),
        (HUGE,),
        (2**64,),
        (rsv.size,),
        (rsv.max_size,),
        (rsv.size + 10 * P, HUGE),
        (-HUGE, 10),
        (-P, P),
        (0, -1),
        (0, -HUGE),
        (HUGE, -HUGE),
        (P, P),  # the page after the first mapping
        (P, 0),
    ]:
        assert rsv.find(*args) is None, args
    assert rsv.find(-HUGE, HUGE) is None  # [-HUGE, 0) ends right before the first mapping
    assert rsv.find(-P, P + 1) is first  # intersects [0, P)
    assert rsv.find(-HUGE, 2 * HUGE) is first
    assert rsv.find(P - 1) is first


# -- injected syscall failures ------------------------------------------------------------------


@pytest.fixture
def rsv() -> Iterator[Reservation]:
    with reserve(MiB, address=quiet_address(MiB), max_size=MiB) as r:
        m = r.map_anonymous(4 * P, 2 * P)
        m.view()[:5] = b"hello"
        del m
        yield r


def _assert_still_usable(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None
    assert bytes(m.view(0, 5)) == b"hello"
    check_kernel(rsv)


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EIO, errno.EAGAIN])
@pytest.mark.parametrize("op", ["map_file-path", "map_file-fd", "map_file-private", "map_anon"])
def test_injected_mmap_failure_on_map(
    rsv: Reservation, holey_file: Path, op: str, err: int
) -> None:
    def call() -> object:
        if op == "map_file-path":
            return rsv.map_file(holey_file, 0, length=2 * P)
        if op == "map_file-private":
            return rsv.map_file(holey_file, 0, length=2 * P, sharing=Sharing.PRIVATE)
        if op == "map_file-fd":
            fd = os.open(holey_file, os.O_RDWR)
            try:
                return rsv.map_file(fd, 0, length=2 * P)
            finally:
                os.fstat(fd)  # not closed by the library
                os.close(fd)
        return rsv.map_anonymous(0, 2 * P)

    with inject("mmap", errno=err) as inj:
        fails(rsv, OSError, call, err)
    assert inj.fired == 1
    _assert_still_usable(rsv)
    # the range is still a reusable placeholder
    m = call()
    assert rsv.find(0) is m
    check_kernel(rsv)


def test_injected_mmap_failure_persisting_leaves_range_held(rsv: Reservation) -> None:
    # Even if the kernel keeps failing (the repair attempt included), the range stays held.
    with inject("mmap", errno=errno.ENOMEM, times=100):
        fails(rsv, OSError, lambda: rsv.map_anonymous(0, P), errno.ENOMEM)
    [v] = kernel.vmas_in(rsv.address, rsv.address + P)
    assert kernel.is_placeholder(v)
    assert rsv.map_anonymous(0, P) is rsv.find(0)


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EAGAIN, errno.EIO])
def test_injected_mmap_failure_on_extend_past_max_size(rsv: Reservation, err: int) -> None:
    assert rsv.size == rsv.max_size
    with inject("mmap", errno=err) as inj:
        fails(rsv, OSError, lambda: rsv.extend(P), err)
    assert inj.fired == 1
    _assert_still_usable(rsv)


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EINVAL, errno.EIO])
def test_injected_munmap_failure_on_shrink_front(rsv: Reservation, err: int) -> None:
    with inject("munmap", errno=err) as inj:
        fails(rsv, OSError, lambda: rsv.shrink(0, 2 * P), err)
    assert inj.fired == 1
    _assert_still_usable(rsv)
    rsv.shrink(0, 2 * P)
    m = rsv.find(2 * P)
    assert m is not None
    assert m.offset == 2 * P


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EINVAL])
def test_injected_munmap_failure_on_close(rsv: Reservation, err: int) -> None:
    lo, hi = rsv.address, rsv.address + rsv.max_size
    m = rsv.find(4 * P)
    assert m is not None
    with inject("munmap", errno=err) as inj:
        fails(rsv, OSError, rsv.close, err)
    assert inj.fired == 1
    assert not rsv.closed
    assert not m.closed
    m.view()[5:6] = b"!"
    _assert_still_usable(rsv)
    assert bytes(m.view(0, 6)) == b"hello!"
    rsv.close()
    assert kernel.is_free(lo, hi)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOMEM, errno.ENOSPC])
def test_injected_msync_failure_on_persist(rsv: Reservation, holey_file: Path, err: int) -> None:
    m = rsv.map_file(holey_file, 0, length=2 * P)
    m.view()[:3] = b"abc"
    with inject("msync", errno=err) as inj:
        fails(rsv, OSError, m.persist, err)
    assert inj.fired == 1
    assert not m.closed
    assert bytes(m.view(0, 3)) == b"abc"
    m.persist()
    with open(holey_file, "rb") as f:
        assert f.read(3) == b"abc"


@pytest.mark.parametrize("err", [errno.EIO, errno.EMFILE, errno.ENOENT])
def test_injected_open_failure_on_map_file(rsv: Reservation, holey_file: Path, err: int) -> None:
    fds = kernel.open_fds()
    with inject("open", errno=err) as inj:
        fails(rsv, OSError, lambda: rsv.map_file(holey_file, 0, length=P), err)
    assert inj.fired == 1
    assert kernel.open_fds() == fds
    # an fd is not opened by the library: "open" is not involved
    fd = os.open(holey_file, os.O_RDWR)
    try:
        with inject("open", errno=err) as inj:
            m = rsv.map_file(fd, 0, length=P)
        assert inj.seen == 0
        m.unmap()
    finally:
        os.close(fd)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOMEM, errno.EOVERFLOW])
@pytest.mark.parametrize("how", ["path", "fd", "fileobj"])
def test_injected_fstat_failure_on_map_file(
    rsv: Reservation, holey_file: Path, how: str, err: int
) -> None:
    with open(holey_file, "r+b") as f:
        sources: dict[str, Path | int | BinaryIO] = {
            "path": holey_file,
            "fd": f.fileno(),
            "fileobj": f,
        }
        src = sources[how]
        fds = kernel.open_fds()
        with inject("fstat", errno=err) as inj:
            fails(rsv, OSError, lambda: rsv.map_file(src, 0, length=P), err)
        assert inj.fired == 1
        assert kernel.open_fds() == fds
        assert not f.closed
        os.fstat(f.fileno())


@pytest.mark.parametrize(
    ("syscall", "action"),
    [
        ("mmap", "map_anonymous"),
        ("mmap", "map_file"),
        ("mmap", "extend"),
        ("mmap", "reserve"),
        ("munmap", "shrink"),
        ("munmap", "close"),
        ("msync", "persist"),
        ("open", "map_file"),
        ("fstat", "map_file"),
    ],
)
def test_injected_eintr_is_retried(
    rsv: Reservation, holey_file: Path, syscall: str, action: str
) -> None:
    m = rsv.find(4 * P)
    assert m is not None
    lo, hi = rsv.address, rsv.address + rsv.max_size
    with inject(syscall, errno=errno.EINTR, times=3) as inj:
        if action == "map_anonymous":
            rsv.map_anonymous(0, P)
        elif action == "map_file":
            rsv.map_file(holey_file, 0, length=P)
        elif action == "extend":
            rsv.extend(P)
        elif action == "reserve":
            reserve(P).close()
        elif action == "shrink":
            rsv.shrink(0, P)
        elif action == "close":
            rsv.close()
        else:
            m.persist()
    assert inj.fired == 3
    if action == "close":
        assert rsv.closed
        assert kernel.is_free(lo, hi)
        return
    check_kernel(rsv)
    if action.startswith("map"):
        assert rsv.find(0) is not None
    elif action == "extend":
        assert rsv.size == rsv.max_size == MiB + P
    elif action == "shrink":
        assert rsv.address == lo + P
        assert m.offset == 3 * P
    assert bytes(m.view(0, 5)) == b"hello"


def test_inject_after_and_times(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None
    results = []
    with inject("msync", errno=errno.EIO, after=2, times=2) as inj:
        for _ in range(6):
            try:
                m.persist()
            except OSError as exc:
                results.append(exc.errno)
            else:
                results.append(0)
    assert results == [0, 0, errno.EIO, errno.EIO, 0, 0]
    assert inj.seen == 6
    assert inj.fired == 2
    m.persist()  # inactive once the block is left
    with inject("msync", errno=errno.EIO, times=0) as inj:
        m.persist()
    assert inj.fired == 0


def test_inject_delay(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None
    with inject("msync", delay=0.25, times=1) as inj:
        t0 = time.monotonic()
        m.persist()
        t1 = time.monotonic()
        m.persist()
        t2 = time.monotonic()
    assert inj.fired == 1
    assert inj.seen == 2
    assert t1 - t0 >= 0.25
    assert t2 - t1 < 0.2


def test_inject_nested_innermost_first(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None

    def persist_errno() -> int:
        try:
            m.persist()
        except OSError as exc:
            return exc.errno or -1
        return 0

    with inject("msync", errno=errno.EIO, times=10) as outer:
        assert persist_errno() == errno.EIO
        with inject("msync", errno=errno.ENOSPC, times=1) as inner:
            assert persist_errno() == errno.ENOSPC
            assert persist_errno() == errno.EIO  # inner exhausted: the outer one takes over
            with inject("msync", errno=errno.ENOMEM, times=1) as innermost:
                assert persist_errno() == errno.ENOMEM
        assert persist_errno() == errno.EIO
    assert persist_errno() == 0
    assert innermost.fired == 1
    assert inner.fired == 1
    assert outer.fired == 3


def test_inject_affects_only_aiopmem_and_every_thread(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None
    with (
        inject("mmap", errno=errno.ENOMEM, times=5) as inj,
        inject("open", errno=errno.EIO, times=5) as inj_open,
    ):
        with mmap.mmap(-1, P) as mm:  # Python's own mmap is not aiopmem's
            mm[:1] = b"x"
        fd = os.open(os.devnull, os.O_RDONLY)  # nor is os.open
        os.close(fd)
    assert inj.seen == 0
    assert inj_open.seen == 0
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            m.persist()
        except BaseException as exc:
            errors.append(exc)

    with inject("msync", errno=errno.EIO) as inj:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert inj.fired == 1
    assert len(errors) == 1
    assert isinstance(errors[0], OSError)
    assert errors[0].errno == errno.EIO


def test_inject_in_async_with(rsv: Reservation) -> None:
    m = rsv.find(4 * P)
    assert m is not None

    async def main() -> int:
        async with inject("msync", errno=errno.EIO) as inj:
            with pytest.raises(OSError, match=r"^\[Errno 5\]"):
                m.persist()
        m.persist()
        return inj.fired

    assert asyncio.run(main()) == 1


def test_injected_failure_of_reserve_leaks_nothing() -> None:
    # No room at all: every attempt (with less and less headroom) fails.
    with (
        inject("mmap", errno=errno.ENOMEM, times=1000),
        pytest.raises(OSError, match=r"^\[Errno 12\]"),
    ):
        reserve(MiB)
    with inject("mmap", errno=errno.EIO), pytest.raises(OSError, match=r"^\[Errno 5\]"):
        reserve(MiB)
    # A headroom refused for lack of room is not a failure: less of it is taken.
    with inject("mmap", errno=errno.ENOMEM, times=1) as inj:
        rsv = reserve(MiB)
    try:
        assert inj.fired == 1
        assert rsv.size == MiB
        assert MiB <= rsv.max_size < MiB + (1 << 30)
        check_kernel(rsv)
    finally:
        rsv.close()
