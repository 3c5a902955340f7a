"""Figure 8: write bandwidth through ``Mapping.view()`` against a plain numpy copy: a view must
be raw memory, with nothing in the way of memcpy."""

from __future__ import annotations

import gc
import time

import anyio
import numpy as np

import aiopmem
import aiopmem.sync

from ._measure import Figure, Metric, MiB


class Bandwidth(Figure):
    """A 256 MiB aiopmem.sync anonymous mapping (default protection and sharing) is written
    through its view two ways: ``np.frombuffer(m.view(), dtype=np.uint8)[:] = src`` and
    ``view[:] = memoryview(src)``; the baseline is ``dst[:] = src`` into a plain numpy array
    of the same size. Every destination is written once before the clock starts (page faults
    are not counted); then the three copies alternate (order rotated), ``copies`` times each
    per repetition. GB/s = bytes copied / 1e9 / seconds spent copying. Then, against the same
    baseline: ``await rsv.write(0, src)`` into a faulted-in async mapping (asyncio; the whole
    job, begin to resume), and numpy writes through the view of a fresh mapping after
    ``populate()`` (a new mapping per copy; the populate is not timed)."""

    name = "bandwidth"
    title = "write bandwidth: via Mapping.view() vs numpy copy"

    @property
    def metrics(self) -> list[Metric]:
        size = f"{self.profile.bandwidth_bytes // MiB} MiB"
        return [
            Metric("view_numpy_gbps", f"np.frombuffer(view)[:] = src, {size}", "GB/s"),
            Metric("view_memoryview_gbps", f"view[:] = memoryview(src), {size}", "GB/s"),
            Metric("numpy_gbps", f"numpy dst[:] = src (baseline), {size}", "GB/s"),
            Metric("rsv_write_gbps", f"await rsv.write(0, src), asyncio, {size}", "GB/s"),
            Metric("populated_view_gbps", f"fresh mapping, populate(), view write, {size}", "GB/s"),
        ]

    def prepare(self) -> None:
        self.params.update(
            bytes=self.profile.bandwidth_bytes, copies_per_rep=self.profile.bandwidth_copies
        )

    def run_rep(self, rep: int) -> dict[str, float]:
        size = self.profile.bandwidth_bytes
        copies = self.profile.bandwidth_copies
        src = np.full(size, 0xA5, dtype=np.uint8)
        plain = np.zeros(size, dtype=np.uint8)
        plain[:] = 1  # fault every page in
        spent = {"view_numpy": 0.0, "view_memoryview": 0.0, "numpy": 0.0}
        with aiopmem.sync.reserve(size) as rsv:
            m = rsv.map_anonymous(0, size)
            view = m.view()
            dst = np.frombuffer(view, dtype=np.uint8)
            dst[:] = 1  # fault every page in
            src_buffer = src.data  # memoryview(src)

            order = ["view_numpy", "view_memoryview", "numpy"]
            gc.collect()
            for k in range(copies):
                # Rotate the order so that no side always runs first (or right after another).
                for key in order[k % 3 :] + order[: k % 3]:
                    t0 = time.perf_counter()
                    if key == "view_numpy":
                        dst[:] = src
                    elif key == "view_memoryview":
                        view[:] = src_buffer
                    else:
                        plain[:] = src
                    spent[key] += time.perf_counter() - t0
            del dst
            src_buffer.release()
            view.release()
            m.unmap()
            spent["rsv_write"] = anyio.run(_async_writes, size, copies, src)
            spent["populated_view"] = _populated_view_writes(rsv, size, copies, src)
        return {f"{k}_gbps": size * copies / 1e9 / s for k, s in spent.items()}


async def _async_writes(size: int, copies: int, src: np.ndarray) -> float:
    """Seconds spent in ``copies`` times ``await rsv.write(0, src)`` into an async mapping
    faulted in beforehand (asyncio): the job's whole cost, begin to resume."""
    async with aiopmem.reserve(size) as rsv:
        m = await rsv.map_anonymous(0, size)
        await m.populate()
        await rsv.write(0, src)  # the first job starts the executor's worker
        spent = 0.0
        for _ in range(copies):
            t0 = time.perf_counter()
            await rsv.write(0, src)
            spent += time.perf_counter() - t0
        await m.unmap()
    return spent


def _populated_view_writes(
    rsv: aiopmem.sync.Reservation, size: int, copies: int, src: np.ndarray
) -> float:
    """Seconds spent writing through the view of a fresh mapping made ready by
    ``populate()`` (not timed), a new mapping each time."""
    spent = 0.0
    for _ in range(copies):
        m = rsv.map_anonymous(0, size)
        m.populate()
        view = m.view()
        dst = np.frombuffer(view, dtype=np.uint8)
        t0 = time.perf_counter()
        dst[:] = src
        spent += time.perf_counter() - t0
        del dst
        view.release()
        m.unmap()
    return spent
