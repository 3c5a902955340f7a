"""aiopmem on asyncio: reserve address space, map a file and anonymous memory into it, write,
persist, grow the reservation in place, and look at it.

Run: python examples/asyncio_basics.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import aiopmem

MiB = 1 << 20


def make_sparse_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: nothing written yet


def read_head(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.bin")
        # A 4 MiB file. Plain file I/O blocks: it runs in a thread, not on the event loop.
        await asyncio.to_thread(make_sparse_file, path, 4 * MiB)

        # 16 MiB of address space, inaccessible until something is mapped into it. Nothing
        # else in the process can be placed there, and it costs no memory.
        async with aiopmem.reserve(16 * MiB) as rsv:
            # Two mappings made concurrently (each mmap runs in a worker thread, never on the
            # event loop), each placed exactly at its offset.
            data, scratch = await asyncio.gather(
                rsv.map_file(path, 0),
                rsv.map_anonymous(8 * MiB, MiB),
            )
            assert data.address == rsv.address and scratch.address == rsv.address + 8 * MiB

            with data.view() as view:  # a memoryview straight onto the file's pages
                view[:14] = b"hello, aiopmem"
            await data.persist()  # msync: the bytes are on stable storage now

            # Grow in place: the address does not change and the mappings stay where they are.
            address = rsv.address
            await rsv.extend(16 * MiB)
            assert rsv.address == address and rsv.size == 32 * MiB

            print(rsv.describe())
            await scratch.unmap()  # the range becomes an inaccessible placeholder again
        # Leaving `async with` unmapped everything and released all the address space.

        assert await asyncio.to_thread(read_head, path, 14) == b"hello, aiopmem"
        print("asyncio_basics: OK")


if __name__ == "__main__":
    asyncio.run(main())
