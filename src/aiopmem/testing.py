"""Fault and latency injection for tests of code built on aiopmem.

``inject()`` makes aiopmem's own syscalls slow or fail, in every thread, while its block is
active: the seam the library's tests use, and yours can too. Example::

    import errno
    import aiopmem
    from aiopmem.testing import inject

    async def test_map_survives_enomem(rsv):
        with inject("mmap", errno=errno.ENOMEM) as inj:
            with pytest.raises(OSError) as info:
                await rsv.map_anonymous(0, aiopmem.ALIGNMENT)
        assert info.value.errno == errno.ENOMEM and inj.fired == 1
        assert rsv.find(0) is None          # nothing changed
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import final

from ._ffi import _inject

__all__ = ["SYSCALLS", "Injection", "inject"]

#: The syscalls that can be injected.
SYSCALLS = _inject.SYSCALLS

Injection = _inject.Injection


@final
class inject:
    """Make the next ``times`` calls of ``syscall``, after skipping ``after`` of them, sleep
    ``delay`` seconds and/or fail with ``errno`` instead of running.

    ``syscall`` is one of ``"mmap"``, ``"munmap"``, ``"msync"``, ``"madvise"`` (``advise()``
    and ``populate()``), ``"mprotect"`` (``protect()``), ``"mlock"`` (``lock()``),
    ``"munlock"`` (``unlock()``), ``"open"``, ``"fstat"`` (``fstat`` covers the descriptor
    check of ``map_file``). With ``errno=None``
    the call is only delayed and then runs. An injected ``EINTR`` is retried by the library as
    a real one would be. Only aiopmem's own calls are affected, in every thread, while the
    block is active; nested injections on the same syscall apply innermost first.

    Use as ``with inject(...) as inj:`` or ``async with inject(...) as inj:``; ``inj.fired``
    tells how many calls it changed, ``inj.seen`` how many it was offered.

    Raises:
        ValueError: unknown syscall, an errno outside ``[1, 2**31 - 1]`` (a C int), negative
            or non-finite delay, negative after or times.
        TypeError: an argument of the wrong type.
    """

    __slots__ = ("_injection",)

    def __init__(
        self,
        syscall: str,
        *,
        errno: int | None = None,
        delay: float = 0.0,
        after: int = 0,
        times: int = 1,
    ) -> None:
        if not isinstance(syscall, str):
            raise TypeError(f"syscall must be a str, not {type(syscall).__name__}")
        if syscall not in SYSCALLS:
            raise ValueError(f"unknown syscall {syscall!r}; expected one of {sorted(SYSCALLS)}")
        if errno is not None and (isinstance(errno, bool) or not isinstance(errno, int)):
            raise TypeError("errno must be an int or None")
        if errno is not None and errno <= 0:
            raise ValueError("errno must be positive")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError("delay must be a number")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a finite number >= 0")
        for name, value in (("after", after), ("times", times)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        self._injection = Injection(syscall, errno, float(delay), after, times)

    def __enter__(self) -> Injection:
        _inject.push(self._injection)
        return self._injection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _inject.pop(self._injection)

    async def __aenter__(self) -> Injection:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
