"""Typed wrappers over the compiled modules, and their only importer: ``aiopmem._ffi._lib``
(cffi: constants and a few syscalls made from Python) and ``aiopmem._ffi._core`` (the state of
reservations and mappings and every transition of it, the buffer exporter, the injection
registry; see ``_core.c``).

Views: ``new_view(owner, holders, address, length, readonly)`` returns a memoryview over a new
buffer exporter that keeps ``owner`` alive and is registered (weakly) in each list of
``holders``; ``live_views(lists)`` counts the exporters of those lists still alive. Memory may
be unmapped only while that count is 0 (see ``_core.c``).

Every wrapper raises ``OSError`` with the errno of the failing call (read in C right after it)
and passes through the injection seam of ``aiopmem.testing`` first. EINTR, real or injected,
is retried: none of these calls has a partial effect when interrupted.
"""

from __future__ import annotations

import os
from errno import EINTR, EIO
from typing import Final

from . import _inject
from ._core import (
    C_BUSY_BASE,
    C_CLOSED,
    C_EXISTS,
    C_EXTEND_EXISTS,
    C_FILE,
    C_HOLE_NOTED,
    C_LEN_NONPOS,
    C_LEN_PAST,
    C_MID,
    C_NO_FIT,
    C_NOACCESS,
    C_NOT_EMPTY,
    C_OFF_NEGATIVE,
    C_OFF_RANGE,
    C_OFF_UNALIGNED,
    C_PAST_ASPACE,
    C_WHOLE,
    C_WOULD_BLOCK,
    HOLE_BIT,
    MADV_COLD,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MEM_ADVISE,
    MEM_LOCK,
    MEM_PERSIST,
    MEM_POPULATE,
    MEM_PROTECT,
    MEM_READ,
    MEM_UNLOCK,
    MEM_WRITE,
    ST_CLOSED,
    ST_OPEN,
    ST_UNMAPPING,
    Abandoned,
    Job,
    MappingBase,
    OpeningBase,
    Port,
    ReservationBase,
    Ticket,
    aio_begin,
    aio_cancel_due,
    aio_configure,
    aio_configure_map,
    aio_configure_trio,
    aio_map_fd,
    aio_unmap,
    deliver_all,
    executor_after_fork,
    executor_configure,
    executor_stats,
    new_view,
    reserve,
    reserve_job,
    set_ticket,
    wake_or_start,
)
from ._core import OwnedFd as OwnedFd
from ._core import live as live_views
from ._core import open_path as _open_path
from ._core import submit as pool_submit
from ._lib import ffi, lib

__all__ = [
    "AP_FD_DIR",
    "AP_FD_NOTREG",
    "AP_FD_PATH",
    "AP_FD_WRONLY",
    "C_BUSY_BASE",
    "C_CLOSED",
    "C_EXISTS",
    "C_EXTEND_EXISTS",
    "C_FILE",
    "C_HOLE_NOTED",
    "C_LEN_NONPOS",
    "C_LEN_PAST",
    "C_MID",
    "C_NOACCESS",
    "C_NOT_EMPTY",
    "C_NO_FIT",
    "C_OFF_NEGATIVE",
    "C_OFF_RANGE",
    "C_OFF_UNALIGNED",
    "C_PAST_ASPACE",
    "C_WHOLE",
    "C_WOULD_BLOCK",
    "HOLE_BIT",
    "INJECTING",
    "MADV_COLD",
    "MADV_DONTNEED",
    "MADV_HUGEPAGE",
    "MADV_NOHUGEPAGE",
    "MADV_NORMAL",
    "MADV_PAGEOUT",
    "MADV_RANDOM",
    "MADV_SEQUENTIAL",
    "MADV_WILLNEED",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_FIXED_NOREPLACE",
    "MAP_NORESERVE",
    "MAP_PRIVATE",
    "MAP_SHARED",
    "MAP_SHARED_VALIDATE",
    "MAP_SYNC",
    "MEM_ADVISE",
    "MEM_LOCK",
    "MEM_PERSIST",
    "MEM_POPULATE",
    "MEM_PROTECT",
    "MEM_READ",
    "MEM_UNLOCK",
    "MEM_WRITE",
    "MS_SYNC",
    "O_ACCMODE",
    "O_PATH",
    "O_WRONLY",
    "PAGE_SIZE",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "ST_CLOSED",
    "ST_OPEN",
    "ST_UNMAPPING",
    "Abandoned",
    "Job",
    "MappingBase",
    "OpeningBase",
    "Port",
    "ReservationBase",
    "Ticket",
    "aio_begin",
    "aio_cancel_due",
    "aio_configure",
    "aio_configure_map",
    "aio_configure_trio",
    "aio_map_fd",
    "aio_unmap",
    "deliver_all",
    "executor_after_fork",
    "executor_configure",
    "executor_stats",
    "fdcheck",
    "last_dev",
    "live_views",
    "madvise",
    "mmap_anywhere",
    "mmap_fixed",
    "msync",
    "munmap",
    "new_view",
    "open_path",
    "pool_submit",
    "raw_fdcheck",
    "reserve",
    "reserve_job",
    "set_ticket",
    "strerror",
    "wake_or_start",
]

PAGE_SIZE: Final[int] = int(lib.ap_page_size())

PROT_NONE: Final[int] = lib.PROT_NONE
PROT_READ: Final[int] = lib.PROT_READ
PROT_WRITE: Final[int] = lib.PROT_WRITE
PROT_EXEC: Final[int] = lib.PROT_EXEC
MAP_SHARED: Final[int] = lib.MAP_SHARED
MAP_PRIVATE: Final[int] = lib.MAP_PRIVATE
MAP_SHARED_VALIDATE: Final[int] = lib.MAP_SHARED_VALIDATE
MAP_ANONYMOUS: Final[int] = lib.MAP_ANONYMOUS
MAP_FIXED: Final[int] = lib.MAP_FIXED
MAP_FIXED_NOREPLACE: Final[int] = lib.MAP_FIXED_NOREPLACE
MAP_NORESERVE: Final[int] = lib.MAP_NORESERVE
MAP_SYNC: Final[int] = lib.MAP_SYNC
MS_SYNC: Final[int] = lib.MS_SYNC
O_ACCMODE: Final[int] = lib.O_ACCMODE
O_WRONLY: Final[int] = lib.O_WRONLY
O_PATH: Final[int] = lib.O_PATH

_ACTIVE = _inject.ACTIVE
_intercept = _inject.intercept
_strerror = strerror = os.strerror

# Largest values the C prototypes accept; callers validate before, this is the last guard.
_SIZE_MAX: Final = 2**64 - 1
_OFF_MAX: Final = 2**63 - 1


def _fail(err: int) -> OSError:
    return OSError(err, _strerror(err))


def mmap_fixed(
    addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
) -> None:
    """mmap exactly at ``addr`` (``flags`` carries MAP_FIXED or MAP_FIXED_NOREPLACE)."""
    while True:
        if _ACTIVE and _intercept("mmap"):
            continue
        err = lib.ap_mmap_fixed(addr, length, prot, flags, fd, offset)
        if not err:
            return
        if err != EINTR:
            raise _fail(err)


def mmap_anywhere(length: int, prot: int, flags: int) -> int:
    """mmap an anonymous range where the kernel chooses; returns its address."""
    err = ffi.new("int *")
    while True:
        if _ACTIVE and _intercept("mmap"):
            continue
        addr = int(lib.ap_mmap_anywhere(length, prot, flags, err))
        if not err[0]:
            return addr
        if err[0] != EINTR:
            raise _fail(err[0])


def munmap(addr: int, length: int) -> None:
    while True:
        if _ACTIVE and _intercept("munmap"):
            continue
        err = lib.ap_munmap(addr, length)
        if not err:
            return
        if err != EINTR:
            raise _fail(err)


def msync(addr: int, length: int, flags: int) -> None:
    while True:
        if _ACTIVE and _intercept("msync"):
            continue
        err = lib.ap_msync(addr, length, flags)
        if not err:
            return
        if err != EINTR:
            raise _fail(err)


def madvise(addr: int, length: int, advice: int) -> None:
    while True:
        if _ACTIVE and _intercept("madvise"):
            continue
        err = lib.ap_madvise(addr, length, advice)
        if not err:
            return
        if err != EINTR:
            raise _fail(err)


AP_FD_PATH: Final[int] = lib.AP_FD_PATH
AP_FD_WRONLY: Final[int] = lib.AP_FD_WRONLY
AP_FD_DIR: Final[int] = lib.AP_FD_DIR
AP_FD_NOTREG: Final[int] = lib.AP_FD_NOTREG
_fdcheck = lib.ap_fdcheck
last_dev = lib.ap_last_dev

#: The compiled call itself, for the hot path of map_file: no injection seam and no EINTR
#: retry, so a caller uses it only while ``INJECTING`` is empty (falsy) and falls back to
#: ``fdcheck`` on EINTR. Saves a Python frame per call.
raw_fdcheck = lib.ap_fdcheck
#: Truthy while any injection is active (``aiopmem.testing.inject``).
INJECTING: Final = _ACTIVE


def fdcheck(fd: int) -> int:
    """The size of the readable regular file open as ``fd``, or a negative code: ``-errno``
    (fcntl/fstat failed) or ``AP_FD_PATH`` / ``AP_FD_WRONLY`` / ``AP_FD_DIR`` /
    ``AP_FD_NOTREG``. Its device is then ``last_dev()`` in the same thread."""
    if _ACTIVE:
        try:
            while _intercept("fstat"):
                pass
        except OSError as exc:  # injected: reported as a real failure is (callers close fds)
            return -(exc.errno or EIO)
    r: int = _fdcheck(fd)
    while r == -EINTR:
        r = _fdcheck(fd)
    return r


def open_path(path: str | bytes, flags: int) -> OwnedFd:
    """open(2) of a path, close-on-exec always; the descriptor is closed when the returned
    object dies (or by its ``close()``), so an interruption cannot leak it."""
    while _ACTIVE and _intercept("open"):
        pass
    return _open_path(path, flags)


# A forked child has none of the executor's workers: one is started for the jobs the fork
# interrupted (they run again there; see _exec.h).
os.register_at_fork(after_in_child=executor_after_fork)
