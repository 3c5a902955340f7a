"""Figure 7: reserving a huge range: ``reserve(64 TiB)`` must cost a few syscalls and no
memory (the placeholder is PROT_NONE + MAP_NORESERVE: nothing is committed)."""

from __future__ import annotations

import gc
import time

import aiopmem.sync

from ._measure import Figure, Metric, TiB

SIZE = 64 * TiB


def vm_rss_kib() -> int:
    """VmRSS of this process in KiB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status")


class Reserve64TiB(Figure):
    """aiopmem.sync ``rsv = reserve(64 TiB)`` (default headroom) timed with perf_counter;
    VmRSS from /proc/self/status read just before and just after it (growth = after - before,
    in KiB; 0 is the ideal); then ``rsv.close()``, timed too. One call per repetition, after an
    untimed warm-up call."""

    name = "reserve"
    title = "reserve(64 TiB) then close()"

    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("reserve_ms", "reserve(64 TiB)", "ms"),
            Metric("rss_growth_kib", "VmRSS growth", "KiB", zero_ok=True),
            Metric("close_ms", "close()", "ms"),
        ]

    def prepare(self) -> None:
        with aiopmem.sync.reserve(SIZE) as rsv:
            self.params["max_size_tib"] = rsv.max_size / TiB

    def run_rep(self, rep: int) -> dict[str, float]:
        gc.collect()
        before = vm_rss_kib()
        t0 = time.perf_counter()
        rsv = aiopmem.sync.reserve(SIZE)
        t1 = time.perf_counter()
        after = vm_rss_kib()
        t2 = time.perf_counter()
        rsv.close()
        t3 = time.perf_counter()
        return {
            "reserve_ms": (t1 - t0) * 1e3,
            "rss_growth_kib": float(after - before),
            "close_ms": (t3 - t2) * 1e3,
        }
