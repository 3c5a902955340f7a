"""Reading the kernel's view of the address space (``/proc/self/maps``).

The library itself only consults it to settle the rare case where it cannot tell from a failed
syscall whether part of a reservation is still covered; tests use it as the ground truth.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Region", "covered", "regions"]


class Region(NamedTuple):
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str


def regions() -> list[Region]:
    """Every VMA of this process, in address order."""
    out = []
    with open("/proc/self/maps", "rb") as f:
        for raw in f:
            fields = raw.decode("utf-8", "surrogateescape").rstrip("\n").split(maxsplit=5)
            lo, _, hi = fields[0].partition("-")
            out.append(
                Region(
                    int(lo, 16),
                    int(hi, 16),
                    fields[1],
                    int(fields[2], 16),
                    int(fields[4]),
                    fields[5] if len(fields) > 5 else "",
                )
            )
    return out


def covered(start: int, end: int) -> bool:
    """Whether every byte of ``[start, end)`` belongs to some mapping.

    Streams the file a line at a time and stops at ``end``, building no list: it is called when
    a mmap failed, typically at the VMA limit (vm.max_map_count), where malloc cannot get new
    memory from the kernel either, so reading all of /proc/self/maps (65530 lines there) into
    Python objects would raise MemoryError instead of answering.
    """
    pos = start
    with open("/proc/self/maps", "rb") as f:
        for raw in f:
            lo, _, rest = raw.partition(b"-")
            hi = int(rest[: rest.index(b" ")], 16)
            if hi <= pos:
                continue
            if int(lo, 16) > pos:
                return False
            pos = hi
            if pos >= end:
                return True
    return pos >= end
