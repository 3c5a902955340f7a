"""The registry behind ``aiopmem.testing.inject``: fault and latency injection at the syscall seam.

The registry itself is in C (``_core.c``): the library's syscalls are made there, in whatever
thread and without the GIL, and each consults it first. ``ACTIVE`` mirrors it for the few
syscalls made from Python (open, fstat), so that their seam costs one truth test when nothing
is injected.

Guarantees: ``ACTIVE`` is only mutated under ``_lock``, and read without it (a dict's truth
value is read atomically).
"""

from __future__ import annotations

import os
import threading
from errno import EINTR
from typing import Final, final

from . import _core

#: syscall name -> active injections, innermost last.
ACTIVE: Final[dict[str, list[Injection]]] = {}
_lock: Final = threading.Lock()

#: The syscalls that can be injected, with their number in the C registry.
NUMBERS: Final = {
    "mmap": _core.SC_MMAP,
    "munmap": _core.SC_MUNMAP,
    "msync": _core.SC_MSYNC,
    "madvise": _core.SC_MADVISE,
    "mprotect": _core.SC_MPROTECT,
    "mlock": _core.SC_MLOCK,
    "munlock": _core.SC_MUNLOCK,
    "open": _core.SC_OPEN,
    "fstat": _core.SC_FSTAT,
}
SYSCALLS: Final = frozenset(NUMBERS)

#: An errno is a C int: a larger one could not be raised (``os.strerror`` refuses it).
ERRNO_MAX: Final = 2**31 - 1


@final
class Injection(_core.InjectionBase):
    """One active injection: its counters tell how many calls it saw (``seen``) and how many
    it changed (``fired``)."""

    __slots__ = ("errno", "syscall")

    def __init__(self, syscall: str, errno: int | None, delay: float, after: int, times: int):
        if errno is not None and not 0 < errno <= ERRNO_MAX:
            raise ValueError(f"errno must be in [1, {ERRNO_MAX}], not {errno}")
        # Counts past 2**63 are as good as endless (the C counters are 64-bit).
        cap = 2**63 - 1
        super().__init__(NUMBERS[syscall], errno or 0, delay, min(after, cap), min(times, cap))
        self.syscall = syscall
        self.errno = errno


def push(injection: Injection) -> None:
    with _lock:
        _core.push(injection)
        ACTIVE.setdefault(injection.syscall, []).append(injection)


def pop(injection: Injection) -> None:
    with _lock:
        _core.pop(injection)
        stack = ACTIVE.get(injection.syscall)
        if stack is not None and injection in stack:
            stack.remove(injection)
            if not stack:
                del ACTIVE[injection.syscall]


_intercept = _core.intercept


def intercept(syscall: str) -> bool:
    """Called before a syscall made from Python: sleeps and/or raises as injected.

    Returns True when the injected failure is EINTR: the caller then retries, as it does for
    a real EINTR."""
    err: int = _intercept(NUMBERS[syscall])
    if not err:
        return False
    if err == EINTR:
        return True
    raise OSError(err, os.strerror(err))
