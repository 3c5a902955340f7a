"""How the async layer runs a blocking core call: in a worker thread, never on the event loop.

Every call goes through ``run_blocking``, one thread hop per logical operation. The worker's
result is always collected: the call is not abandoned when the calling task is cancelled (a
mutation must never be left running unobserved); the caller decides afterwards what the
cancellation means for the operation (see the cancellation notes of each method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["run_blocking"]

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker thread and return its result.

    Cancellation: checked before the call starts (a cancelled caller starts nothing); once the
    call runs, the caller waits for it to finish and gets its result or exception, and the
    pending cancellation is delivered at the caller's next checkpoint.
    """
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=False)
