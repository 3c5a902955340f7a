"""aiopmem.sync from threads: eight threads map their own file into one shared reservation at
the same time, fill it and persist it; the main thread then reads all of it as one buffer.

The blocking API needs no event loop and is thread-safe: maps of disjoint ranges run
concurrently, and lookups never wait for another thread's syscall.

Run: python examples/sync_threads.py
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from aiopmem.sync import reserve

MiB = 1 << 20
THREADS = 8


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, reserve(THREADS * MiB) as rsv:

        def work(i: int) -> None:
            path = os.path.join(tmp, f"thread-{i}.bin")
            with open(path, "wb") as f:
                f.truncate(MiB)
            m = rsv.map_file(path, i * MiB)  # this thread's slot of the reservation
            with m.view() as view:
                view[:] = bytes([i]) * MiB
            m.persist()

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, range(THREADS)))  # list(): re-raise any thread's error

        # Every slot is mapped now: one view reads across all the files.
        with rsv.view() as whole:
            for i in range(THREADS):
                assert whole[i * MiB] == whole[(i + 1) * MiB - 1] == i
        assert len(rsv.mappings()) == THREADS
        print(rsv.describe())
    print("sync_threads: OK")


if __name__ == "__main__":
    main()
