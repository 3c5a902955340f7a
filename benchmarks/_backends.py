"""Running one coroutine function to completion on a named async backend (a fresh event loop
each time, as ``anyio.run`` does)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ._measure import BACKENDS

T = TypeVar("T")

_OPTIONS = {label: (backend, options) for label, backend, options in BACKENDS}


def run_on(label: str, fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """``fn(*args)`` on backend ``label`` ("asyncio", "uvloop" or "trio")."""
    backend, options = _OPTIONS[label]
    return anyio.run(fn, *args, backend=backend, backend_options=options)
