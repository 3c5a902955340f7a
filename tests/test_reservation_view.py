"""Reservation-wide views: one buffer over files mapped back to back, with export safety."""

from __future__ import annotations

from pathlib import Path

import pytest

import kernel
from aiopmem.sync import (
    ALIGNMENT,
    ClosedError,
    LengthOutOfRangeError,
    NoAccessError,
    OffsetOutOfRangeError,
    Protection,
    reserve,
)
from conftest import make_file
from sizes import MiB


def test_view_spans_files_mapped_back_to_back(tmp_path: Path) -> None:
    files = [make_file(tmp_path / f"chunk{i}", MiB) for i in range(4)]
    with reserve(4 * MiB) as rsv:
        maps = [rsv.map_file(f, i * MiB) for i, f in enumerate(files)]
        whole = rsv.view()
        assert len(whole) == 4 * MiB and not whole.readonly
        whole[MiB - 2 : MiB + 2] = b"ABCD"  # straddles the first two files
        part = rsv.view(3 * MiB - 1, 2)
        part[:] = b"yz"
        with pytest.raises(BufferError):
            maps[1].unmap()
        with pytest.raises(BufferError):
            rsv.close()
        assert not rsv.closed and all(not m.closed for m in maps)
        kernel.assert_matches_kernel(rsv)
        whole.release()
        with pytest.raises(BufferError):
            maps[2].unmap()  # `part` still covers mappings 2 and 3
        del part
        maps[2].unmap()
        with pytest.raises(NoAccessError):
            rsv.view(0, 3 * MiB)  # mapping 2 is gone: a placeholder cannot be read
        assert bytes(rsv.view(0, 2 * MiB)[MiB - 2 : MiB + 2]) == b"ABCD"
    assert files[0].read_bytes()[-2:] == b"AB"
    assert files[1].read_bytes()[:2] == b"CD"
    assert files[2].read_bytes()[-1:] == b"y"
    assert files[3].read_bytes()[:1] == b"z"


def test_view_read_only_when_any_mapping_lacks_write(tmp_path: Path) -> None:
    f = make_file(tmp_path / "f", MiB, b"q")
    with reserve(2 * MiB) as rsv:
        rsv.map_file(f, 0)
        rsv.map_file(f, MiB, protection=Protection.READ)
        v = rsv.view()
        assert v.readonly
        with pytest.raises(TypeError):
            v[0:1] = b"x"
        assert bytes(v[:1]) == b"q"
        v.release()
        rsv.find(MiB).unmap()  # type: ignore[union-attr]
        rsv.map_anonymous(MiB, MiB, protection=Protection.NONE)
        with pytest.raises(NoAccessError):
            rsv.view()


def test_view_arguments_and_closed(tmp_path: Path) -> None:
    with reserve(4 * ALIGNMENT) as rsv:
        rsv.map_anonymous(0, 4 * ALIGNMENT)
        assert len(rsv.view(4 * ALIGNMENT)) == 0
        with pytest.raises(OffsetOutOfRangeError):
            rsv.view(-1)
        with pytest.raises(OffsetOutOfRangeError):
            rsv.view(4 * ALIGNMENT + 1)
        with pytest.raises(LengthOutOfRangeError):
            rsv.view(ALIGNMENT, 3 * ALIGNMENT + 1)
        with pytest.raises(LengthOutOfRangeError):
            rsv.view(0, -1)
        with pytest.raises(TypeError):
            rsv.view(0.0)  # type: ignore[arg-type]
    with pytest.raises(ClosedError):
        rsv.view()


def test_released_views_do_not_accumulate() -> None:
    with reserve(ALIGNMENT) as rsv:
        m = rsv.map_anonymous(0, ALIGNMENT)
        for _ in range(1000):
            rsv.view()[0] = 1
        assert len(m._views) <= 16  # dead ones are pruned
        m.unmap()
