"""Figure 5: extend/shrink pairs, the cost of growing a reservation into its headroom and
giving the tail back (no mapping involved)."""

from __future__ import annotations

import gc
import time
from functools import partial

import aiopmem
import aiopmem.sync

from ._backends import run_on
from ._measure import BACKENDS, SLOT, Figure, Metric, calibrate, timed

#: Bytes added and removed by each pair: the suite's 64 KiB unit. It stays inside the default
#: headroom, so a pair changes the reservation's bookkeeping and makes no syscall: the figure
#: is the library's own overhead (and, async, the worker-thread hops).
A = SLOT


def _time_sync(n: int) -> float:
    with aiopmem.sync.reserve(SLOT) as rsv:

        def loop(count: int) -> None:
            for _ in range(count):
                rsv.extend(A)
                rsv.shrink(rsv.size - A, A)

        loop(8)
        return timed(loop, n)


async def _time_async(n: int) -> float:
    async with aiopmem.reserve(SLOT) as rsv:
        for _ in range(8):
            await rsv.extend(A)
            await rsv.shrink(rsv.size - A, A)
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(n):
            await rsv.extend(A)
            await rsv.shrink(rsv.size - A, A)
        return time.perf_counter() - t0


class ExtendShrink(Figure):
    """``rsv.extend(A); rsv.shrink(rsv.size - A, A)`` with A = 64 KiB in a timed loop:
    aiopmem.sync in one thread, and the same with ``await`` in one task on each async backend
    (fresh event loop per repetition). pairs/s = loop iterations / seconds."""

    name = "extend_shrink"
    title = "extend(64 KiB) + shrink(tail, 64 KiB) pairs"

    @property
    def metrics(self) -> list[Metric]:
        return [Metric("sync_pairs_per_s", "sync, 1 thread", "pairs/s")] + [
            Metric(f"{label}_pairs_per_s", f"{label}, 1 task", "pairs/s")
            for label, _, _ in BACKENDS
        ]

    def prepare(self) -> None:
        seconds = self.profile.rep_seconds
        self.n = {"sync": calibrate(_time_sync, seconds)}
        for label, _, _ in BACKENDS:
            self.n[label] = calibrate(partial(run_on, label, _time_async), seconds)
        self.params["pairs_per_rep"] = dict(self.n)
        self.params["A"] = A

    def run_rep(self, rep: int) -> dict[str, float]:
        out = {}
        for label, n in self.n.items():
            elapsed = _time_sync(n) if label == "sync" else run_on(label, _time_async, n)
            out[f"{label}_pairs_per_s"] = n / elapsed
        return out
