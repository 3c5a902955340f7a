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

The placement itself (taking a range, its headroom, laying placeholders, re-taking holes) is
done by the C core, inside the transitions that need it (``_ffi/_core_placement.h``).
"""

from __future__ import annotations

import warnings
from typing import Final

from ._base import ReservationFields

__all__ = ["MIN_DEFAULT_HEADROOM", "Holes", "default_headroom"]

#: Lower bound of the default headroom (see the module docstring).
MIN_DEFAULT_HEADROOM: Final = 1 << 30


def default_headroom(size: int) -> int:
    return max(size, MIN_DEFAULT_HEADROOM)


class Holes(ReservationFields):
    """Hole upkeep of a reservation (a part of ``Reservation``): ranges an unmap at the VMA
    limit could only free, re-taken by the C core (``repair_holes``) when it can."""

    __slots__ = ()

    def _warn_hole(self, start: int, end: int) -> None:
        warnings.warn(
            f"aiopmem: [{start - self.address:#x}, {end - self.address:#x}) of the reservation "
            f"at {self.address:#x} could not be re-reserved; nothing is mapped there until "
            "it can be",
            RuntimeWarning,
            stacklevel=3,
        )

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Offset ranges that could not be re-reserved after an unmap at the kernel's VMA limit
        (normally empty). Nothing is mapped there until the range can be taken back."""
        base = self.address
        return [(s - base, e - base) for s, e in self._holes()]
