"""aiopmem on trio: map several files back to back from a nursery, read them as one buffer,
and see what cancellation does to an operation.

Run: python examples/trio_basics.py  (needs trio: pip install 'aiopmem[trio]')
"""

from __future__ import annotations

import os
import tempfile

try:
    import trio
except ImportError:
    raise SystemExit("this example needs trio: pip install 'aiopmem[trio]'") from None

import aiopmem

MiB = 1 << 20


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(4):
            path = os.path.join(tmp, f"part-{i}.bin")
            # part 0 is all "a", part 1 all "b", ... (trio.Path: file I/O off the event loop)
            await trio.Path(path).write_bytes(bytes([ord("a") + i]) * MiB)
            paths.append(path)

        async with aiopmem.reserve(4 * MiB) as rsv:
            # Four maps at once; each lands at its own offset, so the files end up back to back.
            async with trio.open_nursery() as nursery:
                for i, path in enumerate(paths):
                    nursery.start_soon(rsv.map_file, path, i * MiB)

            # One memoryview over all four files: a slice can cross from one file into the next.
            with rsv.view() as whole:
                assert len(whole) == 4 * MiB
                assert bytes(whole[MiB - 2 : MiB + 2]) == b"aabb"

            # Cancellation: a map whose caller is cancelled either did not happen or is undone
            # before the cancellation goes on. Nothing is left mapped, nothing leaks.
            await rsv.extend(MiB)
            with trio.move_on_after(0):  # cancelled at once
                await rsv.map_anonymous(4 * MiB, MiB)
            assert rsv.find(4 * MiB) is None

            print(rsv.describe())
        print("trio_basics: OK")


if __name__ == "__main__":
    trio.run(main)
