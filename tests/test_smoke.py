"""The binding loads, a syscall round-trips, and the basic map/unmap cycle is visible in the
kernel's view."""

from __future__ import annotations

from pathlib import Path

import kernel
from aiopmem import _ffi
from aiopmem.sync import ALIGNMENT, reserve


def test_binding_round_trip() -> None:
    assert ALIGNMENT == kernel.PAGE == _ffi.PAGE_SIZE
    addr = _ffi.mmap_anywhere(ALIGNMENT, _ffi.PROT_NONE, _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS)
    try:
        [v] = kernel.vmas_in(addr, addr + ALIGNMENT)
        assert kernel.is_placeholder(v)
    finally:
        _ffi.munmap(addr, ALIGNMENT)
    assert kernel.is_free(addr, addr + ALIGNMENT)


def test_map_unmap_cycle(holey_file: Path) -> None:
    with reserve(32 << 20) as rsv:
        start, end = rsv.address, rsv.address + rsv.max_size
        kernel.assert_matches_kernel(rsv)
        m = rsv.map_file(holey_file, 4 * ALIGNMENT)
        assert m.address == rsv.address + 4 * ALIGNMENT
        kernel.assert_matches_kernel(rsv)
        m.view()[:5] = b"hello"
        m.persist()
        m.unmap()
        kernel.assert_matches_kernel(rsv)
        [v] = kernel.vmas_in(start, end)  # one merged placeholder again
        assert kernel.is_placeholder(v)
    assert kernel.is_free(start, end)
    assert holey_file.read_bytes()[:5] == b"hello"
