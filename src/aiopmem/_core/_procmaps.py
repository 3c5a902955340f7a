"""Reading the kernel's view of the address space (``/proc/self/maps``).

The library only consults it to settle the rare case where it cannot tell from a failed syscall
whether part of a reservation is still covered. (The tests read it with their own parser,
``tests/kernel.py``, so that the ground truth does not depend on the code under test.)
"""

from __future__ import annotations

__all__ = ["covered"]


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
