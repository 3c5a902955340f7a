"""An ordered index of disjoint address intervals: the mappings of one reservation.

Each entry is a half-open interval ``[start, end)`` with a payload. A payload of ``None`` is a
*claim*: a range an operation has taken for a mapping that is still being made. Claims block
overlapping inserts (``overlaps``) but are invisible to the lookups (``find``, ``prev``, ``next``,
``first``, ``last``, ``values``), which is how an in-flight ``map_*`` stays invisible until it
completes while nobody else can take its range.

Storage is a list of sorted buckets (at most ``2 * _LOAD`` entries each) with the first start of
every bucket kept in ``_firsts``: lookups are two binary searches, inserts and removals move at
most one bucket's worth of pointers, so a reservation with 50,000 mappings costs about what one
with 100 does.

Guarantees: not thread-safe by itself; the owning reservation serializes every call under its
state lock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

__all__ = ["IntervalIndex"]

T = TypeVar("T")

_LOAD: Final = 512


class IntervalIndex(Generic[T]):
    __slots__ = ("_ends", "_firsts", "_items", "_len", "_starts")

    def __init__(self) -> None:
        self._starts: list[list[int]] = []
        self._ends: list[list[int]] = []
        self._items: list[list[T | None]] = []
        self._firsts: list[int] = []
        self._len = 0

    def __len__(self) -> int:
        """Number of entries, claims included."""
        return self._len

    # -- positions -------------------------------------------------------------------------

    def _locate(self, x: int) -> tuple[int, int]:
        """(bucket, index) of the last entry whose start is <= x; index -1 when there is none."""
        b = bisect_right(self._firsts, x) - 1
        if b < 0:
            return 0, -1
        return b, bisect_right(self._starts[b], x) - 1

    def _exact(self, start: int) -> tuple[int, int]:
        b, i = self._locate(start)
        if i < 0 or self._starts[b][i] != start:
            raise KeyError(start)
        return b, i

    def _next_pos(self, b: int, i: int) -> tuple[int, int] | None:
        i += 1
        if b < len(self._starts) and i < len(self._starts[b]):
            return b, i
        b += 1
        if b < len(self._starts):
            return b, 0
        return None

    def _prev_pos(self, b: int, i: int) -> tuple[int, int] | None:
        if i > 0:
            return b, i - 1
        if b > 0:
            return b - 1, len(self._starts[b - 1]) - 1
        return None

    # -- mutation ----------------------------------------------------------------------------

    def insert(self, start: int, end: int, item: T | None) -> None:
        """Add ``[start, end)``. The caller has checked with ``overlaps`` that it is free."""
        self._len += 1
        if not self._starts:
            self._starts.append([start])
            self._ends.append([end])
            self._items.append([item])
            self._firsts.append(start)
            return
        b, i = self._locate(start)
        i += 1
        starts = self._starts[b]
        starts.insert(i, start)
        self._ends[b].insert(i, end)
        self._items[b].insert(i, item)
        if i == 0:
            self._firsts[b] = start
        if len(starts) > 2 * _LOAD:
            self._split(b)

    def claim(self, lo: int, hi: int) -> bool:
        """Insert a claim on ``[lo, hi)`` if nothing intersects it; False (and no change) if
        something does. One search for both the check and the insert."""
        if not self._starts:
            self.insert(lo, hi, None)
            return True
        b, i = self._locate(lo)
        if i >= 0 and self._ends[b][i] > lo:
            return False
        starts = self._starts[b]
        if i + 1 < len(starts):
            if starts[i + 1] < hi:
                return False
        elif b + 1 < len(self._starts) and self._firsts[b + 1] < hi:
            return False
        i += 1
        starts.insert(i, lo)
        self._ends[b].insert(i, hi)
        self._items[b].insert(i, None)
        self._len += 1
        if i == 0:
            self._firsts[b] = lo
        if len(starts) > 2 * _LOAD:
            self._split(b)
        return True

    def _split(self, b: int) -> None:
        starts, ends, items = self._starts[b], self._ends[b], self._items[b]
        self._starts[b + 1 : b + 1] = [starts[_LOAD:]]
        self._ends[b + 1 : b + 1] = [ends[_LOAD:]]
        self._items[b + 1 : b + 1] = [items[_LOAD:]]
        del starts[_LOAD:], ends[_LOAD:], items[_LOAD:]
        self._firsts.insert(b + 1, self._starts[b + 1][0])

    def remove(self, start: int) -> T | None:
        """Remove the entry that begins at ``start`` and return its payload."""
        b, i = self._exact(start)
        starts = self._starts[b]
        del starts[i], self._ends[b][i]
        item = self._items[b].pop(i)
        self._len -= 1
        if not starts:
            del self._starts[b], self._ends[b], self._items[b], self._firsts[b]
        elif i == 0:
            self._firsts[b] = starts[0]
        return item

    def replace(self, start: int, item: T | None) -> None:
        """Swap the payload of the entry at ``start`` (a claim becoming a mapping)."""
        b, i = self._exact(start)
        self._items[b][i] = item

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # -- queries -----------------------------------------------------------------------------

    def overlaps(self, lo: int, hi: int) -> bool:
        """Whether any entry, claim or not, intersects ``[lo, hi)`` (``hi > lo``)."""
        b, i = self._locate(lo)
        if i >= 0 and self._ends[b][i] > lo:
            return True
        pos = self._next_pos(b, i)
        return pos is not None and self._starts[pos[0]][pos[1]] < hi

    def find(self, lo: int, hi: int) -> T | None:
        """The lowest non-claim entry intersecting ``[lo, hi)`` (``hi > lo``)."""
        b, i = self._locate(lo)
        pos = (b, i) if i >= 0 and self._ends[b][i] > lo else self._next_pos(b, i)
        while pos is not None:
            b, i = pos
            if self._starts[b][i] >= hi:
                return None
            item = self._items[b][i]
            if item is not None:
                return item
            pos = self._next_pos(b, i)
        return None

    def between(self, lo: int, hi: int) -> list[tuple[int, int, T | None]]:
        """Every entry intersecting ``[lo, hi)`` (``hi > lo``), claims included, in order."""
        b, i = self._locate(lo)
        pos = (b, i) if i >= 0 and self._ends[b][i] > lo else self._next_pos(b, i)
        out = []
        while pos is not None:
            b, i = pos
            start = self._starts[b][i]
            if start >= hi:
                break
            out.append((start, self._ends[b][i], self._items[b][i]))
            pos = self._next_pos(b, i)
        return out

    def next(self, start: int) -> T | None:
        """The first non-claim entry after the one at ``start``."""
        pos = self._next_pos(*self._exact(start))
        while pos is not None:
            item = self._items[pos[0]][pos[1]]
            if item is not None:
                return item
            pos = self._next_pos(*pos)
        return None

    def prev(self, start: int) -> T | None:
        """The last non-claim entry before the one at ``start``."""
        pos = self._prev_pos(*self._exact(start))
        while pos is not None:
            item = self._items[pos[0]][pos[1]]
            if item is not None:
                return item
            pos = self._prev_pos(*pos)
        return None

    def first(self) -> T | None:
        for bucket in self._items:
            for item in bucket:
                if item is not None:
                    return item
        return None

    def last(self) -> T | None:
        for bucket in reversed(self._items):
            for item in reversed(bucket):
                if item is not None:
                    return item
        return None

    def values(self) -> list[T]:
        """Every non-claim payload, in address order."""
        return [item for bucket in self._items for item in bucket if item is not None]

    def intervals(self) -> Iterator[tuple[int, int, T | None]]:
        """Every entry as ``(start, end, payload)``, claims included, in address order."""
        for starts, ends, items in zip(self._starts, self._ends, self._items, strict=True):
            yield from zip(starts, ends, items, strict=True)
