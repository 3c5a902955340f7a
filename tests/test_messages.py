"""Errors that help a new user out (issue 12): each names what went wrong and the way out."""

from __future__ import annotations

import errno
import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import aiopmem
import aiopmem.sync
from aiopmem.sync import (
    LengthOutOfRangeError,
    NoAccessError,
    Protection,
    Sharing,
    reserve,
)
from aiopmem.testing import inject
from sizes import P


@pytest.fixture
def ro_file(tmp_path: Path) -> Path:
    path = tmp_path / "ro.bin"
    path.write_bytes(b"r" * P)
    path.chmod(0o444)
    return path


def test_shared_writable_map_of_a_read_only_descriptor_names_the_way_out(ro_file: Path) -> None:
    fd = os.open(ro_file, os.O_RDONLY)
    try:
        with reserve(4 * P) as rsv:
            with pytest.raises(NoAccessError) as exc:
                rsv.map_file(fd, 0)
            assert "protection=Protection.READ" in str(exc.value)
            assert "sharing=Sharing.PRIVATE" in str(exc.value)
            # ... and both ways out work.
            rsv.map_file(fd, 0, protection=Protection.READ).unmap()
            rsv.map_file(fd, 0, sharing=Sharing.PRIVATE).unmap()
    finally:
        os.close(fd)


def test_a_path_that_cannot_be_opened_for_writing_names_the_way_out(ro_file: Path) -> None:
    with reserve(4 * P) as rsv:
        with inject("open", errno=errno.EACCES), pytest.raises(NoAccessError) as exc:
            rsv.map_file(ro_file, 0)  # (root could open it: the refusal is injected)
        assert "for writing" in str(exc.value)
        assert "protection=Protection.READ" in str(exc.value)
        with inject("open", errno=errno.EACCES), pytest.raises(NoAccessError) as exc:
            rsv.map_file(ro_file, 0, protection=Protection.READ)
        assert "protection=" not in str(exc.value)  # no advice to do what was done


def test_a_view_over_a_gap_names_the_gap() -> None:
    with reserve(8 * P) as rsv:
        rsv.map_anonymous(0, P)
        rsv.map_anonymous(3 * P, P)
        with pytest.raises(NoAccessError, match=r"\[0x1000, 0x3000\) of the reservation"):
            rsv.view(0, 4 * P)
        with pytest.raises(NoAccessError, match=r"\[0x4000, 0x5000\) of the reservation"):
            rsv.view(3 * P, 2 * P)
        for m in rsv.mappings():
            m.unmap()


def test_a_negative_offset_is_reported_as_the_offsets_fault() -> None:
    with (
        reserve(4 * P) as rsv,
        pytest.raises(LengthOutOfRangeError, match="offset -4096 is negative"),
    ):
        rsv.map_anonymous(-P, P)


def test_submodules_are_reachable_after_a_bare_import() -> None:
    code = "import aiopmem; print(aiopmem.sync.reserve.__module__, aiopmem.testing.inject)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("aiopmem._core._reservation "), out


@pytest.mark.parametrize(
    "cls",
    [aiopmem.Reservation, aiopmem.Mapping, aiopmem.sync.Reservation, aiopmem.sync.Mapping],
    ids=str,
)
def test_help_shows_the_methods_not_a_false_constructor(cls: type) -> None:
    # pydoc.plaintext (help()'s renderer, no bold) is missing from typeshed
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    assert "*args" not in text.split("Methods defined here")[0], text[:400]
    assert "map_file" in text or "unmap" in text
