"""API.md's contract for reservations through ``aiopmem.sync``: placement (anywhere or at a fixed
address), the default and explicit headroom (``max_size``), extend, shrink at either end, close,
and the release of a reservation that is garbage-collected unclosed. The kernel's view
(``/proc/self/maps``) is the ground truth throughout.
"""

from __future__ import annotations

import errno
import gc
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import kernel
from aiopmem import _ffi
from aiopmem.sync import (
    ALIGNMENT,
    LengthOutOfRangeError,
    MappingExistsError,
    Protection,
    Reservation,
    ReservationNotEmptyError,
    reserve,
)
from aiopmem.testing import inject
from conftest import make_file
from kernel import assert_matches_kernel as check_kernel
from kernel import quiet_address, snapshot
from sizes import GiB, MiB, P

TiB = 1 << 40
_FOREIGN_FLAGS = (
    _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS | _ffi.MAP_NORESERVE | _ffi.MAP_FIXED_NOREPLACE
)

# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def foreign(addr: int, length: int) -> Iterator[bool]:
    """Something that is not the reservation's at ``[addr, addr+length)`` (a PROT_NONE mapping
    made with MAP_FIXED_NOREPLACE). Yields False if the range was already occupied by
    something else (which serves as well), and checks on exit that it was left alone."""
    try:
        _ffi.mmap_fixed(addr, length, _ffi.PROT_NONE, _FOREIGN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
        yield False
        return
    try:
        yield True
        [v] = kernel.vmas_in(addr, addr + length)
        assert (v.start, v.end) == (addr, addr + length), "the foreign mapping was touched"
    finally:
        _ffi.munmap(addr, length)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def single_placeholder(lo: int, hi: int) -> None:
    """``[lo, hi)`` is one inaccessible placeholder VMA (perhaps merged with a neighbour)."""
    [v] = kernel.vmas_in(lo, hi)
    assert kernel.is_placeholder(v), v
    assert v.start <= lo
    assert v.end >= hi


def drop(held: list[Reservation]) -> None:
    """Drop the last reference to a reservation and collect garbage."""
    held.clear()
    gc.collect()


# -- reserve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [P, MiB, GiB, 2 * GiB], ids=["4K", "1M", "1G", "2G"])
def test_default_headroom(size: int) -> None:
    # Documented default (design, _placement): max(size, 1 GiB) of headroom when it is free,
    # which it normally is for a reservation placed anywhere.
    with reserve(size) as rsv:
        assert rsv.size == size
        assert rsv.max_size == size + max(size, GiB)
        assert rsv.address % ALIGNMENT == 0
        assert not rsv.closed
        assert rsv.mappings() == []
        single_placeholder(rsv.address, rsv.address + rsv.max_size)
        check_kernel(rsv)
        lo, hi = rsv.address, rsv.address + rsv.max_size
    assert kernel.is_free(lo, hi)


def test_one_tib_costs_no_memory() -> None:
    gc.collect()
    before = rss_kib()
    rsv = reserve(TiB)
    try:
        after = rss_kib()
        assert after - before < 1024, f"RSS grew by {after - before} KiB"
        assert rsv.size == TiB
        assert rsv.max_size >= TiB
        lo, hi = rsv.address, rsv.address + rsv.max_size
        [v] = kernel.vmas_in(lo, hi)  # one ---p region
        assert v.perms == "---p"
        assert kernel.is_placeholder(v)
        assert v.start <= lo
        assert v.end >= hi
        m = rsv.map_anonymous(TiB - P, P)  # usable up to its last page
        m.view()[-1:] = b"z"
        check_kernel(rsv)
    finally:
        rsv.close()
    assert kernel.is_free(lo, hi)


@pytest.mark.parametrize("extra", [0, P, 3 * MiB])
def test_explicit_max_size(extra: int) -> None:
    with reserve(MiB, max_size=MiB + extra) as rsv:
        assert rsv.size == MiB
        assert rsv.max_size == MiB + extra
        single_placeholder(rsv.address, rsv.address + rsv.max_size)
        check_kernel(rsv)
        lo, hi = rsv.address, rsv.address + rsv.max_size
    assert kernel.is_free(lo, hi)


def test_fixed_address() -> None:
    q = quiet_address(4 * MiB)
    with reserve(MiB, address=q, max_size=2 * MiB) as rsv:
        assert rsv.address == q
        assert rsv.max_size == 2 * MiB
        single_placeholder(q, q + 2 * MiB)
        assert kernel.is_free(q + 2 * MiB, q + 2 * MiB + GiB)  # held: exactly max_size
        assert kernel.is_free(q - GiB, q)
        check_kernel(rsv)
    assert kernel.is_free(q, q + 2 * MiB)
    with reserve(MiB, address=q) as rsv:  # default headroom: free here, so all of it
        assert rsv.address == q
        assert rsv.max_size == MiB + GiB
    assert kernel.is_free(q, q + MiB + GiB)


@pytest.mark.parametrize(
    ("gap", "expected_max"),
    [(MiB, MiB), (MiB + P, MiB + P), (4 * MiB, 3 * MiB)],
    ids=["right-behind", "one-page-free", "3MiB-free"],
)
def test_fixed_address_with_something_behind(gap: int, expected_max: int) -> None:
    # Something at q + gap: the default headroom shrinks (documented: halving from 1 GiB until
    # it fits) but the reservation never fails because of it.
    q = quiet_address(16 * MiB)
    with foreign(q + gap, 8 * MiB) as made:
        assert made
        rsv = reserve(MiB, address=q)
        try:
            assert rsv.address == q
            assert rsv.size == MiB
            assert rsv.max_size == expected_max
            check_kernel(rsv)
            before = snapshot(rsv)
            # with an explicit max_size reaching it: refused, nothing taken
            with pytest.raises(MappingExistsError):
                reserve(P, address=q + gap - P, max_size=2 * P)
            assert snapshot(rsv) == before
            # extending past the headroom into it: refused
            with pytest.raises(MappingExistsError):
                rsv.extend(gap - MiB + P)
            assert snapshot(rsv) == before
            check_kernel(rsv)
        finally:
            rsv.close()
        assert kernel.is_free(q, q + gap)
    if gap > MiB:
        with foreign(q + gap, P), pytest.raises(MappingExistsError):
            reserve(MiB, address=q, max_size=gap + P)
        assert kernel.is_free(q, q + gap + P)


def test_reserve_at_an_occupied_address_clobbers_nothing() -> None:
    q = quiet_address(8 * MiB)
    with reserve(MiB, address=q, max_size=2 * MiB) as rsv:
        m = rsv.map_anonymous(0, 2 * P)
        m.view()[:4] = b"mine"
        before = snapshot(rsv)
        for address, size, max_size in [
            (q, P, None),
            (q + P, P, None),
            (q - P, 2 * P, None),
            (q + MiB, P, None),  # the headroom is held too
            (q + 2 * MiB - P, 2 * P, None),
            (q - P, P, 2 * P),  # only max_size reaches it
        ]:
            with pytest.raises(MappingExistsError):
                reserve(size, address=address, max_size=max_size)
            assert snapshot(rsv) == before
        assert bytes(m.view(0, 4)) == b"mine"
        assert kernel.is_free(q - GiB, q)
        check_kernel(rsv)


# -- extend ------------------------------------------------------------------------------------


def test_extend_up_to_max_size_makes_no_syscall() -> None:
    with reserve(MiB, max_size=4 * MiB) as rsv:
        m = rsv.map_anonymous(0, P)
        m.view()[:2] = b"ok"
        address = rsv.address
        with (
            inject("mmap", errno=errno.ENOMEM, times=100) as inj_mmap,
            inject("munmap", errno=errno.ENOMEM, times=100) as inj_munmap,
        ):
            rsv.extend(MiB)
            assert rsv.size == 2 * MiB
            rsv.extend(2 * MiB - P)
            rsv.extend(P)
            assert rsv.size == rsv.max_size == 4 * MiB
        assert inj_mmap.seen == 0
        assert inj_munmap.seen == 0
        assert rsv.address == address
        assert rsv.max_size == 4 * MiB
        assert rsv.mappings() == [m]
        assert bytes(m.view(0, 2)) == b"ok"
        last = rsv.map_anonymous(4 * MiB - P, P)  # the extended part is usable
        assert rsv.find(4 * MiB - 1) is last
        check_kernel(rsv)


def test_extend_past_max_size_grows_in_place() -> None:
    q = quiet_address(8 * MiB)
    with reserve(MiB, address=q, max_size=2 * MiB) as rsv:
        m = rsv.map_anonymous(MiB - P, P)
        m.view()[:4] = b"stay"
        rsv.extend(2 * MiB)
        assert rsv.address == q
        assert rsv.size == rsv.max_size == 3 * MiB
        assert m.address == q + MiB - P
        assert bytes(m.view(0, 4)) == b"stay"
        check_kernel(rsv)
        rsv.map_anonymous(3 * MiB - P, P)
        rsv.extend(P)
        assert rsv.size == rsv.max_size == 3 * MiB + P
        check_kernel(rsv)
        hi = rsv.address + rsv.max_size
    assert kernel.is_free(q, hi)


@pytest.mark.parametrize("distance", [0, 2 * P], ids=["right-after", "inside-the-extension"])
def test_extend_past_max_size_into_a_foreign_mapping(distance: int) -> None:
    with reserve(MiB) as rsv:
        m = rsv.map_anonymous(0, P)
        end = rsv.address + rsv.max_size
        with foreign(end + distance, P):
            before = snapshot(rsv)
            with pytest.raises(MappingExistsError):
                rsv.extend(rsv.max_size - rsv.size + distance + P)
            assert snapshot(rsv) == before
            check_kernel(rsv)
            with pytest.raises(MappingExistsError):
                rsv.extend(rsv.max_size - rsv.size + 64 * MiB)
            assert snapshot(rsv) == before
            # up to max_size it still works
            rsv.extend(rsv.max_size - rsv.size)
            assert rsv.size == rsv.max_size
            assert rsv.address + rsv.max_size == end
            assert rsv.mappings() == [m]
            check_kernel(rsv)


# -- shrink ------------------------------------------------------------------------------------


def test_shrink_front() -> None:
    with reserve(MiB, max_size=2 * MiB) as rsv:
        a0, end = rsv.address, rsv.address + rsv.max_size
        m = rsv.map_anonymous(8 * P, 2 * P)
        n = rsv.map_anonymous(20 * P, P)
        m.view()[:4] = b"keep"
        rsv.shrink(0, 3 * P)
        assert rsv.address == a0 + 3 * P
        assert rsv.size == MiB - 3 * P
        assert rsv.max_size == 2 * MiB - 3 * P
        assert rsv.address + rsv.max_size == end  # the headroom stays where it is
        assert m.address == a0 + 8 * P  # mappings never move...
        assert m.offset == 5 * P  # ...their offset drops
        assert n.offset == 17 * P
        assert rsv.find(5 * P) is m
        assert rsv.find(8 * P) is None
        assert rsv.find(17 * P) is n
        assert bytes(m.view(0, 4)) == b"keep"
        assert kernel.is_free(a0, a0 + 3 * P)  # returned to the system
        check_kernel(rsv)
        # mapping uses the new offsets
        k = rsv.map_anonymous(0, P)
        assert k.address == a0 + 3 * P
        rsv.shrink(rsv.size - P, P)
        # only the region before the first mapping can go
        with pytest.raises(ReservationNotEmptyError):
            rsv.shrink(0, P)
        k.unmap()
        rsv.shrink(0, 5 * P)
        assert m.offset == 0
        assert rsv.address == m.address
        check_kernel(rsv)
    assert kernel.is_free(a0, end)


def test_shrink_tail_keeps_the_headroom() -> None:
    with reserve(MiB, max_size=2 * MiB) as rsv:
        address = rsv.address
        m = rsv.map_anonymous(0, P)
        rsv.shrink(MiB - 4 * P, 4 * P)
        assert rsv.address == address
        assert rsv.size == MiB - 4 * P
        assert rsv.max_size == 2 * MiB
        # the removed tail is still held, as a placeholder nothing can take
        single_placeholder(address + MiB - 4 * P, address + 2 * MiB)
        check_kernel(rsv)
        with pytest.raises(LengthOutOfRangeError):
            rsv.map_anonymous(MiB - 4 * P, P)
        with pytest.raises(MappingExistsError):
            reserve(P, address=address + MiB - 2 * P)
        # extend grows back into it without a syscall
        with inject("mmap", errno=errno.ENOMEM, times=100) as inj:
            rsv.extend(4 * P)
        assert inj.seen == 0
        assert rsv.size == MiB
        t = rsv.map_anonymous(MiB - P, P)
        assert rsv.find_last() is t
        assert rsv.mappings() == [m, t]
        check_kernel(rsv)
        lo, hi = rsv.address, rsv.address + rsv.max_size
    assert kernel.is_free(lo, hi)


# -- close -------------------------------------------------------------------------------------


def test_close_releases_everything(tmp_path: Path) -> None:
    path = make_file(tmp_path / "f", 3 * P, b"f")
    rsv = reserve(MiB)
    lo, hi = rsv.address, rsv.address + rsv.max_size
    a = rsv.map_anonymous(0, P)
    f = rsv.map_file(path, 4 * P)
    p = rsv.map_anonymous(16 * P, 2 * P, protection=Protection.NONE)
    rsv.shrink(MiB - 8 * P, 8 * P)  # a tail kept as headroom is released too
    rsv.close()
    assert rsv.closed
    assert a.closed
    assert f.closed
    assert p.closed
    assert kernel.is_free(lo, hi)
    rsv.close()  # idempotent
    assert rsv.closed
    assert path.read_bytes() == b"f" * (3 * P)


def test_close_after_front_shrink_and_extend() -> None:
    q = quiet_address(8 * MiB)
    rsv = reserve(MiB, address=q, max_size=2 * MiB)
    rsv.map_anonymous(4 * P, P)
    rsv.shrink(0, 2 * P)
    rsv.extend(2 * MiB)  # past max_size
    hi = rsv.address + rsv.max_size
    assert rsv.address == q + 2 * P
    assert hi == q + 3 * MiB
    rsv.close()
    assert kernel.is_free(q - P, hi + P)


def test_with_statement_closes() -> None:
    with reserve(MiB) as rsv:
        assert isinstance(rsv, Reservation)
        m = rsv.map_anonymous(0, P)
        lo, hi = rsv.address, rsv.address + rsv.max_size
    assert rsv.closed
    assert m.closed
    assert kernel.is_free(lo, hi)


@pytest.mark.parametrize("with_mapping", [False, True])
def test_unclosed_reservation_warns_and_is_released(with_mapping: bool) -> None:
    rsv = reserve(MiB)
    lo, hi = rsv.address, rsv.address + rsv.max_size
    if with_mapping:
        rsv.map_anonymous(0, P).view()[:1] = b"x"  # a reference cycle: found by gc
    held = [rsv]
    del rsv
    with pytest.warns(ResourceWarning, match="unclosed reservation"):
        drop(held)
    assert kernel.is_free(lo, hi)


def test_unclosed_reservation_is_released_when_warnings_are_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for an unclosed file: with ResourceWarning turned into an error (python -W error,
    # pytest's filterwarnings = error), the warning is reported as unraisable and the
    # reservation is released all the same.
    reported: list[sys.UnraisableHookArgs] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    rsv = reserve(MiB)
    lo, hi = rsv.address, rsv.address + rsv.max_size
    held = [rsv]
    del rsv
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        drop(held)
    assert kernel.is_free(lo, hi)
    assert [u.exc_type for u in reported] == [ResourceWarning]
