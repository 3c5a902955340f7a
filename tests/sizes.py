"""Sizes the tests share: the page (the allocation granularity every reservation offset and
size is a multiple of) and binary units."""

from __future__ import annotations

from typing import Final

from aiopmem.sync import ALIGNMENT

#: One page: aiopmem.ALIGNMENT (4096 here).
P: Final = ALIGNMENT
KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
