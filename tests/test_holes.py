"""Holes: ranges of a reservation that are no longer held by a placeholder (the VMA-limit
fallback of unmap, or a close that failed partway). Something else may live there; the
reservation must keep working around it, never clobber it, and never leave a mapping "open" over
memory that is gone (issue 9, items 5 and 6)."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator

import pytest

import kernel
from aiopmem import _ffi
from aiopmem.sync import ClosedError, Mapping, Reservation, reserve
from aiopmem.testing import inject
from sizes import P

SIZE = 16 * P


def make_hole(m: Mapping) -> None:
    """Unmap ``m`` as at the VMA limit, with the placeholder after munmap refused too."""
    with (
        inject("mmap", errno=errno.ENOMEM, times=2),
        pytest.warns(RuntimeWarning, match="could not be re-reserved"),
    ):
        m.unmap()


@pytest.fixture
def rsv() -> Iterator[Reservation]:
    # Where nothing lies behind it, so that extend() past max_size can grow in place.
    r = reserve(SIZE, max_size=SIZE, address=kernel.quiet_address(SIZE))
    yield r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r.close()


def foreign_mapping(addr: int, length: int) -> None:
    """A mapping that is not the reservation's, placed in its hole (as another library's
    mmap could be)."""
    _ffi.mmap_fixed(
        addr,
        length,
        _ffi.PROT_READ,
        _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS | _ffi.MAP_FIXED_NOREPLACE,
    )


def test_a_foreign_mapping_in_a_hole_is_left_alone(rsv: Reservation) -> None:
    """Item 5: extend, shrink and close go on around the foreign mapping, and close releases
    everything else. Before: MappingExistsError forever (the hole repair only caught OSError)
    and ``__del__`` leaked the whole range."""
    base = rsv.address
    m = rsv.map_anonymous(4 * P, 2 * P)
    make_hole(m)
    assert rsv.holes == [(4 * P, 6 * P)]
    foreign_mapping(base + 4 * P, 2 * P)
    try:
        rsv.extend(P)  # past max_size, in place
        assert rsv.size == SIZE + P
        rsv.shrink(SIZE, P)
        rsv.shrink(0, P)  # the head goes back to the system
        assert rsv.holes == [(3 * P, 5 * P)]
        m2 = rsv.map_anonymous(8 * P, P)
        m2.view()[:2] = b"ok"
        lo, hi = rsv.address, rsv.address + rsv.max_size
        rsv.close()
        assert rsv.closed and m2.closed
        (foreign,) = kernel.vmas_in(lo, hi)
        assert (foreign.start, foreign.end, foreign.perms) == (base + 4 * P, base + 6 * P, "r--p")
        assert kernel.is_free(lo, base + 4 * P) and kernel.is_free(base + 6 * P, hi)
    finally:
        _ffi.munmap(base + 4 * P, 2 * P)


def test_close_that_fails_partway_keeps_no_mapping_open_over_released_memory(
    rsv: Reservation,
) -> None:
    """Item 6: with a hole, close releases the held range in pieces. When the munmap of the
    second piece fails, the first piece is gone: its mappings are closed (a view of them is
    refused, not a SIGSEGV), the released piece becomes a hole, the rest is intact and open,
    and the next close releases it."""
    base = rsv.address
    m1 = rsv.map_anonymous(0, 2 * P)
    gone = rsv.map_anonymous(4 * P, 2 * P)
    m3 = rsv.map_anonymous(8 * P, 2 * P)
    m3.view()[:5] = b"still"
    make_hole(gone)
    foreign_mapping(base + 4 * P, 2 * P)  # the hole cannot be taken back
    try:
        with inject("munmap", errno=errno.EIO, after=1) as inj, pytest.raises(OSError) as exc:
            rsv.close()
        assert exc.value.errno == errno.EIO and inj.fired == 1
        assert not rsv.closed
        assert m1.closed and rsv.find(0) is None
        with pytest.raises(ClosedError):
            m1.view()
        assert not m3.closed and bytes(m3.view()[:5]) == b"still"
        assert rsv.mappings() == [m3]
        assert rsv.holes == [(0, 4 * P), (4 * P, 6 * P)]
        assert kernel.is_free(base, base + 4 * P)
        rest = [
            (a - base, b - base, v.perms) for a, b, v in kernel.coverage(base + 6 * P, base + SIZE)
        ]
        assert rest == [(6 * P, 8 * P, "---p"), (8 * P, 10 * P, "rw-s"), (10 * P, SIZE, "---p")]
        rsv.close()
        assert rsv.closed and m3.closed
        (foreign,) = kernel.vmas_in(base, base + SIZE)
        assert foreign.start == base + 4 * P
    finally:
        _ffi.munmap(base + 4 * P, 2 * P)


def test_close_whose_only_munmap_fails_changes_nothing(rsv: Reservation) -> None:
    m = rsv.map_anonymous(0, P)
    m.view()[:1] = b"x"
    with inject("munmap", errno=errno.EIO), pytest.raises(OSError):
        rsv.close()
    assert not rsv.closed and not m.closed and rsv.holes == []
    assert bytes(m.view()[:1]) == b"x"
    kernel.assert_matches_kernel(rsv)


def test_reserve_sizes_near_two_to_the_64_are_refused_by_the_kernel() -> None:
    """Item 9: size plus the default headroom used to overflow into a raw OverflowError for
    sizes in [2**63, 2**64); they fail as every too-large size does, with mmap's ENOMEM."""
    for size in (2**63, 2**63 + P, 2**64 - 2 * P, 2**64 - P):
        with pytest.raises(OSError) as exc:
            reserve(size)
        assert exc.value.errno == errno.ENOMEM, size
        assert not isinstance(exc.value, OverflowError)
    top = 2**64 - 4 * P  # a fixed address whose default headroom would pass 2**64
    with pytest.raises(OSError) as exc:
        reserve(P, address=top)
    assert exc.value.errno in (errno.ENOMEM, errno.EINVAL, errno.EPERM)
