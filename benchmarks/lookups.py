"""Figure 6: ``rsv.find(offset)`` with few and with many mappings: a lookup in the interval
index should grow like log(n), not like n."""

from __future__ import annotations

import gc
import random
import time
from collections import deque

import aiopmem.sync
from aiopmem.sync import ALIGNMENT, Sharing

from ._measure import Figure, Metric

#: VMAs left for the rest of the process when sizing the layout (Python, libraries, other
#: figures' leftovers): the kernel refuses new mappings past vm.max_map_count.
VMA_MARGIN = 2_000


def max_map_count() -> int:
    """The kernel's per-process VMA limit (vm.max_map_count; 65530 by default)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except OSError:
        return 65530


def vma_count() -> int:
    """VMAs the process has now (lines of /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def run_length(count: int) -> int:
    """How many adjacent one-page mappings sit between two one-page gaps.

    The issue's layout is one mapping every other page (run length 1): ``count`` mappings then
    cost about 2 * count VMAs (each mapping and each placeholder gap is its own VMA), which
    for 50,000 mappings passes the default vm.max_map_count of 65530. Adjacent private
    anonymous mappings with the same protection merge into one VMA, so runs of r mappings
    between gaps cost about 2 * count / r VMAs; r is the smallest that fits.
    """
    room = max_map_count() - vma_count() - VMA_MARGIN
    r = 1
    while 2 * -(-count // r) > room:
        r += 1
    return r


def page_of(i: int, r: int) -> int:
    """Page index of mapping ``i`` in runs of ``r`` mappings followed by one gap page."""
    group, k = divmod(i, r)
    return group * (r + 1) + k


def time_find(count: int, r: int, lookups: int, seed: int) -> tuple[float, float]:
    """(ns per lookup, fraction of lookups that found a mapping) for ``lookups`` calls of
    ``rsv.find(offset)`` at random offsets over a reservation holding ``count`` one-page
    anonymous private mappings laid out in runs of ``r`` with one-page gaps. The mappings
    are made before the clock starts; the calls go through ``deque(map(rsv.find, offsets),
    maxlen=0)`` so that the loop itself costs as little as possible."""
    pages = page_of(count - 1, r) + 2  # a trailing gap, like every other run
    with aiopmem.sync.reserve(pages * ALIGNMENT) as rsv:
        for i in range(count):
            rsv.map_anonymous(page_of(i, r) * ALIGNMENT, ALIGNMENT, sharing=Sharing.PRIVATE)
        rng = random.Random(seed)
        offsets = [rng.randrange(rsv.size) for _ in range(lookups)]
        find = rsv.find
        hits = sum(1 for off in offsets[:2_000] if find(off) is not None)
        deque(map(find, offsets[:2_000]), maxlen=0)  # warm-up
        gc.collect()
        t0 = time.perf_counter()
        deque(map(find, offsets), maxlen=0)
        elapsed = time.perf_counter() - t0
    return elapsed / lookups * 1e9, hits / min(lookups, 2_000)


class Find(Figure):
    """aiopmem.sync ``rsv.find(offset)`` at random offsets (uniform over the reservation,
    fixed seed) in a reservation holding 100 and 50,000 one-page anonymous private mappings,
    one every other page, or in runs of r adjacent pages between one-page gaps when 2 VMAs
    per mapping would pass vm.max_map_count (r is recorded; the same layout is used for both
    counts). The mappings are rebuilt every repetition, outside the clock. ns/lookup = timed
    seconds / lookups."""

    name = "find"
    title = "Reservation.find(offset), sync"

    @property
    def metrics(self) -> list[Metric]:
        small, large = self.profile.find_counts
        return [
            Metric("small_ns", f"{small:,} mappings", "ns/lookup"),
            Metric("large_ns", f"{large:,} mappings", "ns/lookup"),
        ]

    def prepare(self) -> None:
        small, large = self.profile.find_counts
        self.r = run_length(large)
        self.params.update(
            counts=[small, large],
            run_length=self.r,
            layout=(
                "one mapping every other page"
                if self.r == 1
                else f"runs of {self.r} adjacent one-page mappings, then a one-page gap"
            ),
            lookups_per_rep=self.profile.find_lookups,
            max_map_count=max_map_count(),
        )
        if self.r > 1:
            self.ctx.notes.append(
                f"find: {large:,} mappings one every other page would pass vm.max_map_count "
                f"({max_map_count()}); laid out as {self.params['layout']} for both counts"
            )

    def run_rep(self, rep: int) -> dict[str, float]:
        small, large = self.profile.find_counts
        lookups = self.profile.find_lookups
        small_ns, small_hits = time_find(small, self.r, lookups, seed=rep)
        large_ns, large_hits = time_find(large, self.r, lookups, seed=rep)
        self.params["hit_fraction"] = [round(small_hits, 3), round(large_hits, 3)]
        return {"small_ns": small_ns, "large_ns": large_ns}
