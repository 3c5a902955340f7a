"""Protection, sharing and persistence granularity of a mapping."""

from __future__ import annotations

import enum

from .. import _ffi

__all__ = ["Advice", "Granularity", "Protection", "Sharing", "prot_bits"]


class Protection(enum.Flag):
    """Access allowed to a mapping (``mmap``'s ``PROT_*``). Combine with ``|``."""

    NONE = 0
    READ = enum.auto()
    WRITE = enum.auto()
    EXEC = enum.auto()


class Sharing(enum.Enum):
    """Whether writes reach the file and other mappings of it (``SHARED``) or stay private to
    this mapping, copy-on-write (``PRIVATE``)."""

    SHARED = 0
    PRIVATE = 1


class Granularity(enum.Enum):
    """The coarsest unit that ``persist()`` guarantees to make durable.

    ``BYTE``: any store is durable once it is globally visible (private and anonymous mappings,
    whose durability is not a concern of the file). ``CACHE_LINE``: a cache-line flush suffices
    (DAX file systems with MAP_SYNC). ``PAGE``: the page cache must be written back with msync
    (every other shared file mapping).
    """

    BYTE = 0
    CACHE_LINE = 1
    PAGE = 2


class Advice(enum.Enum):
    """What ``Mapping.advise()`` tells the kernel about a range (``madvise``'s ``MADV_*``; the
    values are the kernel's numbers).

    ``NORMAL``, ``RANDOM``, ``SEQUENTIAL``: the expected access pattern (read-ahead).
    ``WILLNEED``: read the range in ahead of use. ``DONTNEED``: drop the pages (a shared file
    mapping reads them back from the file, a private or anonymous one then reads zeros).
    ``HUGEPAGE``/``NOHUGEPAGE``: allow or forbid transparent huge pages. ``COLD``: the pages
    are first in line for reclaim; ``PAGEOUT``: reclaim them now (Linux 5.4+).
    """

    NORMAL = _ffi.MADV_NORMAL
    RANDOM = _ffi.MADV_RANDOM
    SEQUENTIAL = _ffi.MADV_SEQUENTIAL
    WILLNEED = _ffi.MADV_WILLNEED
    DONTNEED = _ffi.MADV_DONTNEED
    HUGEPAGE = _ffi.MADV_HUGEPAGE
    NOHUGEPAGE = _ffi.MADV_NOHUGEPAGE
    COLD = _ffi.MADV_COLD
    PAGEOUT = _ffi.MADV_PAGEOUT


_PROT_BITS = {
    Protection.READ: _ffi.PROT_READ,
    Protection.WRITE: _ffi.PROT_WRITE,
    Protection.EXEC: _ffi.PROT_EXEC,
}
_PROT_CACHE: dict[Protection, int] = {}


def prot_bits(protection: Protection) -> int:
    """The ``PROT_*`` bits for ``protection`` (cached: there are only 8 combinations)."""
    bits = _PROT_CACHE.get(protection)
    if bits is None:
        bits = _ffi.PROT_NONE
        for flag, value in _PROT_BITS.items():
            if flag in protection:
                bits |= value
        _PROT_CACHE[protection] = bits
    return bits
