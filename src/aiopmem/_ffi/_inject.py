"""The registry behind ``aiopmem.testing.inject``: fault and latency injection at the syscall seam.

Guarantees: the registry is shared by every thread; ``ACTIVE`` is only mutated under ``_lock``,
and the syscall wrappers read it without the lock (a dict's truth value is read atomically), so
the cost of the seam when nothing is injected is one global lookup per syscall.
"""

from __future__ import annotations

import os
import threading
import time
from errno import EINTR
from typing import Final, final

#: syscall name -> active injections, innermost last.
ACTIVE: Final[dict[str, list[Injection]]] = {}
_lock: Final = threading.Lock()

SYSCALLS: Final = frozenset({"mmap", "munmap", "msync", "madvise", "open", "fstat"})

#: An errno is a C int: a larger one could not be raised (``os.strerror`` refuses it).
ERRNO_MAX: Final = 2**31 - 1


@final
class Injection:
    """One active injection: its counters tell how many calls it saw and how many it changed."""

    __slots__ = ("after", "delay", "errno", "fired", "seen", "syscall", "times")

    def __init__(self, syscall: str, errno: int | None, delay: float, after: int, times: int):
        if errno is not None and not 0 < errno <= ERRNO_MAX:
            raise ValueError(f"errno must be in [1, {ERRNO_MAX}], not {errno}")
        self.syscall = syscall
        self.errno = errno
        self.delay = delay
        self.after = after
        self.times = times
        #: calls of the syscall offered to this injection (skipped ones included).
        self.seen = 0
        #: calls this injection delayed or failed.
        self.fired = 0


def push(injection: Injection) -> None:
    with _lock:
        ACTIVE.setdefault(injection.syscall, []).append(injection)


def pop(injection: Injection) -> None:
    with _lock:
        stack = ACTIVE.get(injection.syscall)
        if stack is not None and injection in stack:
            stack.remove(injection)
            if not stack:
                del ACTIVE[injection.syscall]


def intercept(syscall: str) -> bool:
    """Called by a wrapper before it makes ``syscall``: sleeps and/or raises as injected.

    Returns True when the injected failure is EINTR: the wrapper then retries, as it does for
    a real EINTR.

    The call is offered to the injections innermost first; the first one that is past its
    ``after`` count and still has ``times`` left takes it.
    """
    chosen: Injection | None = None
    with _lock:
        for inj in reversed(ACTIVE.get(syscall, ())):
            inj.seen += 1
            if inj.seen > inj.after and inj.fired < inj.times:
                inj.fired += 1
                chosen = inj
                break
    if chosen is None:
        return False
    if chosen.delay > 0:
        time.sleep(chosen.delay)
    if chosen.errno is None:
        return False
    if chosen.errno == EINTR:
        return True
    raise OSError(chosen.errno, os.strerror(chosen.errno))
