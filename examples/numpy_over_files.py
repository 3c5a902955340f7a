"""One numpy array over several files: map them back to back into a reservation and wrap
``rsv.view()`` in an array. Reads and writes go straight to the files' pages, across file
boundaries, with no copy.

Run: python examples/numpy_over_files.py  (needs numpy: pip install 'aiopmem[numpy]')
"""

from __future__ import annotations

import os
import tempfile

try:
    import numpy as np
except ImportError:
    raise SystemExit("this example needs numpy: pip install 'aiopmem[numpy]'") from None

from aiopmem.sync import reserve

MiB = 1 << 20
FILES = 4
VALUES_PER_FILE = MiB // 8  # float64


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(FILES):
            path = os.path.join(tmp, f"part-{i}.f64")
            values = np.arange(i * VALUES_PER_FILE, (i + 1) * VALUES_PER_FILE, dtype=np.float64)
            values.tofile(path)  # each file holds the next stretch of 0, 1, 2, ...
            paths.append(path)

        with reserve(FILES * MiB) as rsv:
            for i, path in enumerate(paths):
                rsv.map_file(path, i * MiB)

            # One array, four files, no copy.
            array = np.frombuffer(rsv.view(), dtype=np.float64)
            n = len(array)
            assert n == FILES * VALUES_PER_FILE
            assert array.sum() == n * (n - 1) / 2  # 0 + 1 + ... + (n - 1)

            array *= 2  # written into all four files in place
            for m in rsv.mappings():  # msync each file's pages
                m.persist()

            # The array holds a buffer of the reservation: closing while it lives would raise
            # BufferError (nothing could then reach unmapped memory). Drop it first.
            del array

        last = np.fromfile(paths[-1], dtype=np.float64)
        assert last[-1] == 2 * (FILES * VALUES_PER_FILE - 1)
        print(f"numpy_over_files: one array of {n:,} float64 over {FILES} files: OK")


if __name__ == "__main__":
    main()
