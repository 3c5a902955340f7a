"""An array of int64 that grows without moving, backed by transparent huge pages, filled
without page faults on the event loop.

The reservation is 2 MiB-aligned (``reserve(alignment=)``), so each 2 MiB chunk of anonymous
memory mapped into it can be one huge page: the chunk is advised ``HUGEPAGE`` and populated
(faulted in) in aiopmem's executor before the loop touches it. Growing is ``extend()`` + one
more chunk right after the last one; the array's address never changes.

Run: python examples/huge_pages.py
"""

from __future__ import annotations

import contextlib

import anyio

import aiopmem

CHUNK = 2 << 20  # one huge page on x86-64
PER_CHUNK = CHUNK // 8  # int64 values per chunk


def anon_huge_bytes(start: int, end: int) -> int:
    """AnonHugePages of /proc/self/smaps over [start, end), in bytes (0 without THP)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = hi > start and lo < end
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1]) * 1024
    return total


async def main() -> None:
    async with aiopmem.reserve(CHUNK, alignment=CHUNK) as rsv:
        start = rsv.address
        assert start % CHUNK == 0
        for k in range(4):
            if k:
                await rsv.extend(CHUNK)  # one more chunk of address space, at the end
            m = await rsv.map_anonymous(k * CHUNK, CHUNK, sharing=aiopmem.Sharing.PRIVATE)
            # (A kernel without transparent huge pages refuses: plain pages then.)
            with contextlib.suppress(OSError):
                await m.advise(aiopmem.Advice.HUGEPAGE)
            await m.populate()  # every page faulted in now, in a worker thread

            # The loop fills the new chunk through a view: no page fault left to take.
            with rsv.view() as view, view.cast("q") as values:
                for i in range(k * PER_CHUNK, (k + 1) * PER_CHUNK, 4096):
                    values[i] = i
                assert values[k * PER_CHUNK] == k * PER_CHUNK
            huge = anon_huge_bytes(start, start + rsv.size)
            print(f"{(k + 1) * PER_CHUNK:>9,} values at {rsv.address:#x}, {huge >> 20} MiB huge")
            assert rsv.address == start  # it never moved

        # What was written before every extend() is still there.
        data = await rsv.read(0, rsv.size)
        values = memoryview(data).cast("q")
        assert all(values[i] == i for i in range(0, len(values), 4096))
    print("huge_pages: OK")


if __name__ == "__main__":
    anyio.run(main)
