"""A memory-mapped numpy array that grows without moving: each time it is full, a new chunk
file is mapped right after the last one (``extend()`` + ``map_file()``), and a new, longer
array is made over the same address. The data never moves and is never copied.

Run: python examples/growing_array.py  (needs numpy: pip install 'aiopmem[numpy]')
"""

from __future__ import annotations

import os
import tempfile

try:
    import numpy as np
except ImportError:
    raise SystemExit("this example needs numpy: pip install 'aiopmem[numpy]'") from None

from aiopmem.sync import reserve

CHUNK = 1 << 20  # bytes per chunk file
PER_CHUNK = CHUNK // 8  # int64 values per chunk


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, reserve(CHUNK) as rsv:
        # reserve() keeps headroom behind the reservation (1 GiB by default), so that
        # extend() can grow it in place.
        start = rsv.address
        for k in range(5):
            path = os.path.join(tmp, f"chunk-{k}.i64")
            with open(path, "wb") as f:
                f.truncate(CHUNK)
            if k:
                rsv.extend(CHUNK)  # one more chunk of address space, at the end
            rsv.map_file(path, k * CHUNK)  # the new file, right after the previous one

            # A new array over the whole reservation: same start address, one chunk longer.
            array = np.frombuffer(rsv.view(), dtype=np.int64)
            address = array.__array_interface__["data"][0]
            array[k * PER_CHUNK :] = np.arange(k * PER_CHUNK, (k + 1) * PER_CHUNK)
            print(f"{len(array):>8,} values at {address:#x} over {k + 1} file(s)")
            assert address == rsv.address == start  # it never moved

        # Everything written before every extend() is still there, in place.
        assert (array == np.arange(len(array))).all()
        del array  # release the buffer before the reservation closes
    print("growing_array: OK")


if __name__ == "__main__":
    main()
