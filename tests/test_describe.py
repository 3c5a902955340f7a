"""``Reservation.describe()``: the picture a person gets of a reservation agrees with the
kernel's view (/proc/self/maps): every table row is the mapping the kernel has at that address,
every column of the map shows what the kernel has there."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiopmem
import kernel
from aiopmem.sync import ALIGNMENT, Protection, Reservation, Sharing, reserve
from aiopmem.testing import inject
from conftest import make_file
from sizes import MiB

A = ALIGNMENT

HEADER = re.compile(
    r"^aiopmem reservation \[(0x[0-9a-f]+), (0x[0-9a-f]+)\): size .* \((0x[0-9a-f]+)\), "
    r"max_size .* \((0x[0-9a-f]+)\), (\d+) mappings?$"
)
MAP_LINE = re.compile(r"^  (held|usable) +(0x[0-9a-f]+) \|([^|]*)\| (0x[0-9a-f]+)  one column = ")


@dataclass(frozen=True)
class Row:
    symbol: str
    offset: int
    size: int
    end: int
    file_offset: int
    protection: str
    sharing: str
    file: str


@dataclass(frozen=True)
class Picture:
    address: int
    size: int
    max_size: int
    count: int
    maps: dict[str, tuple[int, int, str]]  # label -> (start, end, columns)
    rows: list[Row]


def parse(text: str) -> Picture:
    lines = text.splitlines()
    head = HEADER.match(lines[0])
    assert head, lines[0]
    start, end, size, max_size, count = (int(g, 0) for g in head.groups())
    assert end - start == size
    maps = {}
    for line in lines[1:]:
        if m := MAP_LINE.match(line):
            maps[m[1]] = (int(m[2], 16), int(m[4], 16), m[3])
    rows = []
    if "  no mappings" not in lines:
        at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["map", "offset"])
        for line in lines[at + 1 :]:
            sym, off, n, stop, foff, prot, sharing, file = line.split(maxsplit=7)
            rows.append(
                Row(
                    sym, int(off, 16), int(n, 16), int(stop, 16), int(foff, 16), prot, sharing, file
                )
            )
    return Picture(start, size, max_size, count, maps, rows)


def perms(row: Row) -> str:
    prot = set(row.protection.split("|"))
    return (
        ("r" if "READ" in prot else "-")
        + ("w" if "WRITE" in prot else "-")
        + ("x" if "EXEC" in prot else "-")
        + ("s" if row.sharing == "SHARED" else "p")
    )


def check_against_kernel(rsv: Reservation | aiopmem.Reservation, text: str) -> Picture:
    """The picture says what the kernel says: rows are the kernel's mappings at those offsets,
    and the map's columns hold a mapping where the kernel has one, a placeholder elsewhere."""
    pic = parse(text)
    assert (pic.address, pic.size, pic.max_size) == (rsv.address, rsv.size, rsv.max_size)
    assert pic.count == len(pic.rows) == len(rsv.mappings())
    kernel.assert_matches_kernel(rsv)
    base = pic.address
    mappings: list[Any] = list(rsv.mappings())
    for row, m in zip(pic.rows, mappings, strict=True):
        assert row.end == row.offset + row.size
        assert (row.offset, row.size, row.file_offset) == (m.offset, m.size, m.file_offset)
        span = -(-row.size // A) * A
        pieces = kernel.coverage(base + row.offset, base + row.offset + span)
        for lo, _hi, vma in pieces:
            assert vma.perms == perms(row), (row, vma)
            if row.file == "anonymous":
                assert vma.inode == 0 or vma.path.startswith("/dev/zero"), (row, vma)
            else:
                assert vma.inode == os.stat(row.file).st_ino, (row, vma)
                assert vma.path == row.file, (row, vma)
                assert vma.offset + (lo - vma.start) == row.file_offset + (lo - base - row.offset)
    symbols: dict[str, list[Row]] = {}
    for row in pic.rows:
        symbols.setdefault(row.symbol, []).append(row)
    assert "held" in pic.maps
    assert ("usable" in pic.maps) == (pic.size < pic.max_size)
    for label, (start, end, columns) in pic.maps.items():
        assert start == base
        assert end == base + (pic.max_size if label == "held" else pic.size)
        length = end - start
        assert 1 <= len(columns) <= 64
        for col, char in enumerate(columns):
            lo = start + length * col // len(columns)
            hi = start + length * (col + 1) // len(columns)
            vmas = [v for _, _, v in kernel.coverage(lo, hi)]
            if char in ".~":
                assert all(kernel.is_placeholder(v) for v in vmas), (label, col, char, vmas)
                assert (char == "~") == (lo - base >= pic.size), (label, col, char)
            else:
                # One of the rows with this symbol is (part of) what the kernel has here.
                assert any(
                    row.offset < hi - base and lo - base < row.offset + row.size
                    for row in symbols[char]
                ), (label, col, char)
                assert any(not kernel.is_placeholder(v) for v in vmas), (label, col, char)
    return pic


def test_files_anonymous_gaps_and_partial_pages(tmp_path: Path) -> None:
    chunks = [make_file(tmp_path / f"chunk {i}.log", 2 * MiB) for i in range(3)]
    odd = make_file(tmp_path / "odd", 3 * A + 100, b"x")  # partial last page
    ro = make_file(tmp_path / "ro", MiB, b"r")
    with reserve(16 * MiB) as rsv:
        for i, path in enumerate(chunks):
            rsv.map_file(path, i * 2 * MiB)  # back to back
        rsv.map_file(odd, 7 * MiB)
        rsv.map_file(ro, 8 * MiB, length=64 * A, file_offset=16 * A, protection=Protection.READ)
        rsv.map_anonymous(12 * MiB, 3 * A, sharing=Sharing.PRIVATE)
        rsv.map_anonymous(15 * MiB, MiB, protection=Protection.NONE)
        pic = check_against_kernel(rsv, rsv.describe())
        assert [r.file for r in pic.rows] == [
            *map(str, chunks),
            str(odd),
            str(ro),
            "anonymous",
            "anonymous",
        ]
        assert [r.symbol for r in pic.rows] == list("ABCDEFG")
        odd_row = pic.rows[3]
        assert odd_row.size == 3 * A + 100 and odd_row.end == 7 * MiB + 3 * A + 100
        assert (pic.rows[4].file_offset, pic.rows[4].protection) == (16 * A, "READ")
        assert (pic.rows[5].protection, pic.rows[5].sharing) == ("READ|WRITE", "PRIVATE")
        assert pic.rows[6].protection == "NONE"
        # The usable part at full width: each 2 MiB chunk is 8 columns of 256 KiB.
        _, _, usable = pic.maps["usable"]
        assert usable[:24] == "A" * 8 + "B" * 8 + "C" * 8
        assert usable[24:28] == "...."


def test_after_unmap_shrink_and_extend(tmp_path: Path) -> None:
    paths = [make_file(tmp_path / f"c{i}", MiB) for i in range(4)]
    with reserve(8 * MiB) as rsv:
        maps = [rsv.map_file(p, (i + 1) * MiB) for i, p in enumerate(paths)]
        maps[1].unmap()
        rsv.shrink(0, MiB)  # offsets drop by 1 MiB, mappings stay where they are
        rsv.extend(4 * MiB)
        pic = check_against_kernel(rsv, rsv.describe())
        assert [r.offset for r in pic.rows] == [0, 2 * MiB, 3 * MiB]
        assert [r.file for r in pic.rows] == [str(paths[0]), str(paths[2]), str(paths[3])]


def test_no_headroom_and_no_mappings() -> None:
    with reserve(4 * MiB, max_size=4 * MiB) as rsv:
        text = rsv.describe()
        pic = check_against_kernel(rsv, text)
        assert pic.rows == [] and "  no mappings" in text.splitlines()
        assert pic.maps["held"][2] == "." * 64
        assert "~" not in text.splitlines()[1]


def test_closed_is_one_line() -> None:
    rsv = reserve(MiB)
    rsv.map_anonymous(0, MiB)
    rsv.close()
    text = rsv.describe()
    assert "\n" not in text and "closed" in text


def test_width() -> None:
    with reserve(4 * A, max_size=4 * A) as rsv:
        rsv.map_anonymous(A, A)
        # At most one column per page.
        assert parse(rsv.describe(width=100)).maps["held"][2] == ".A.."
        assert parse(rsv.describe(width=2)).maps["held"][2] == "A."
        assert parse(rsv.describe(width=1)).maps["held"][2] == "A"
        with pytest.raises(ValueError):
            rsv.describe(width=0)
        with pytest.raises(TypeError):
            rsv.describe(width=2.0)  # type: ignore[arg-type]


def test_many_mappings_reuse_symbols() -> None:
    n = 70
    with reserve(n * A) as rsv:
        for i in range(n):
            rsv.map_anonymous(i * A, A)
        pic = check_against_kernel(rsv, rsv.describe())
        assert len(pic.rows) == n
        assert pic.rows[0].symbol == pic.rows[62].symbol == "A"
        assert pic.rows[61].symbol == "9"


def test_does_not_wait_for_a_map_in_flight() -> None:
    """describe() is a lookup: it returns while another thread's mmap is still running, and
    does not show that mapping yet."""
    with reserve(4 * MiB) as rsv:
        rsv.map_anonymous(0, MiB)
        with inject("mmap", delay=2.0) as inj:
            worker = threading.Thread(target=rsv.map_anonymous, args=(2 * MiB, MiB))
            worker.start()
            while not inj.seen:
                threading.Event().wait(0.01)
            text = rsv.describe()
            assert worker.is_alive()
            worker.join()
        assert len(parse(text).rows) == 1
        assert len(parse(rsv.describe()).rows) == 2


@pytest.mark.anyio
async def test_async_describe_is_the_same_picture(tmp_path: Path) -> None:
    path = make_file(tmp_path / "f", 2 * MiB)
    async with aiopmem.reserve(8 * MiB) as rsv:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rsv.map_file, path, 0)
            tg.start_soon(rsv.map_anonymous, 4 * MiB, MiB)
        text = rsv.describe()
        assert text == rsv.sync.describe()
        pic = check_against_kernel(rsv, text)
        assert [r.file for r in pic.rows] == [str(path), "anonymous"]
    assert "closed" in rsv.describe()
