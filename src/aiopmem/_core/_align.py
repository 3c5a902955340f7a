"""Alignment rules and argument coercion shared by every operation.

Every reservation address, size, extend size, shrink offset/size and reservation offset must be a
multiple of ``ALIGNMENT`` (the page size). Integers are taken through ``__index__`` (so numpy
integers work) but ``bool`` is refused: ``rsv.extend(True)`` is a bug, not one page.
"""

from __future__ import annotations

import operator
from typing import Final

from .._ffi import PAGE_SIZE

__all__ = ["ADDRESS_LIMIT", "ALIGNMENT", "align_down", "align_up", "as_int", "as_optional_int"]

#: The allocation granularity of reservations and mappings: the page size (4096 on x86-64 Linux).
ALIGNMENT: Final[int] = PAGE_SIZE
_MASK: Final = ALIGNMENT - 1

#: One past the highest address a 64-bit platform can name; sizes and ranges beyond it are
#: refused before any syscall (they could not be passed to the kernel as ``size_t``).
ADDRESS_LIMIT: Final = 2**64


def align_up(n: int) -> int:
    return (n + _MASK) & ~_MASK


def align_down(n: int) -> int:
    return n & ~_MASK


def as_int(value: object, name: str) -> int:
    """``value`` as an ``int``; ``TypeError`` for bools, floats, strings and other non-integers."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def as_optional_int(value: object, name: str) -> int | None:
    return None if value is None else as_int(value, name)
