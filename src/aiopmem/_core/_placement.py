"""Taking and giving back address space: placeholders and the default headroom policy.

A placeholder is an anonymous, private, PROT_NONE mapping with MAP_NORESERVE: it holds address
space without committing memory (no page is ever touched, nothing counts against overcommit),
and the kernel refuses to place anything else there. All placeholders use the same flags, so
neighbouring ones merge into one VMA.

Default headroom. A reservation made without ``max_size`` also takes
``default_headroom(size) = max(size, 1 GiB)`` of free address space right behind it, so that
``extend()`` can grow it in place: on Linux the next mmap of the process usually lands right
after a new reservation, which is why extending a libpmem2 reservation rarely works. The
headroom only takes space that is free: if the full amount cannot be had (address space
exhausted, or, at a fixed address, something lies behind the reservation) it halves the
amount until it fits, down to none. A reservation therefore never fails because of its default
headroom. 1 GiB is 1/131072 of the 128 TiB user address space of x86-64, and PROT_NONE space
costs no memory, only a VMA.
"""

from __future__ import annotations

import errno
from typing import Final

from .. import _ffi
from ._align import ADDRESS_LIMIT, ALIGNMENT, align_down
from ._errors import MappingExistsError

__all__ = [
    "PLACEHOLDER_FIXED",
    "PLACEHOLDER_FLAGS",
    "default_headroom",
    "take_range",
]

PLACEHOLDER_FLAGS: Final = _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS | _ffi.MAP_NORESERVE
#: Laid over a mapping of the reservation by an unmap: MAP_FIXED replaces it atomically.
PLACEHOLDER_FIXED: Final = PLACEHOLDER_FLAGS | _ffi.MAP_FIXED
_NOREPLACE: Final = PLACEHOLDER_FLAGS | _ffi.MAP_FIXED_NOREPLACE

#: Lower bound of the default headroom (see the module docstring).
MIN_DEFAULT_HEADROOM: Final = 1 << 30


def default_headroom(size: int) -> int:
    return max(size, MIN_DEFAULT_HEADROOM)


def fill_hole(addr: int, length: int) -> None:
    """Take exactly ``[addr, addr+length)`` with a placeholder where nothing is mapped (a new
    reservation, its headroom, a hole). ``MappingExistsError`` if any of it is in use."""
    try:
        _ffi.mmap_fixed(addr, length, _ffi.PROT_NONE, _NOREPLACE)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise MappingExistsError(
                f"[{addr:#x}, {addr + length:#x}) is occupied by another mapping"
            ) from None
        raise


def take_range(length: int) -> int:
    """Take ``length`` bytes wherever the kernel finds room; returns the address."""
    return _ffi.mmap_anywhere(length, _ffi.PROT_NONE, PLACEHOLDER_FLAGS)


def take_headroom_after(end: int, wanted: int) -> int:
    """Take up to ``wanted`` bytes of free space starting at ``end``; returns how much it got
    (halving on every refusal, down to 0). Never asks past the end of the address space."""
    amount = align_down(min(wanted, ADDRESS_LIMIT - end))
    while amount >= ALIGNMENT:
        try:
            fill_hole(end, amount)
        except MappingExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise
        else:
            return amount
        amount = align_down(amount // 2)
    return 0


def take_range_with_headroom(size: int, wanted: int) -> tuple[int, int]:
    """Take ``size`` bytes anywhere plus up to ``wanted`` bytes of headroom behind them.

    Returns ``(address, size + headroom obtained)``. Only ENOMEM (no room) makes it settle for
    less headroom; any other error is raised. The total asked for always fits in the address
    space (a size near 2**64 plus the headroom would not), so a size the kernel cannot place
    fails with its ENOMEM.
    """
    amount = align_down(min(wanted, ADDRESS_LIMIT - ALIGNMENT - size))
    while True:
        try:
            return take_range(size + amount), size + amount
        except OSError as exc:
            if exc.errno != errno.ENOMEM or amount == 0:
                raise
        amount = align_down(amount // 2)
        if amount < ALIGNMENT:
            amount = 0
