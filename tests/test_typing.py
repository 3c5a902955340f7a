"""What mypy --strict says of user code (the package ships py.typed): the accepted ``file``
arguments type-check, a float does not."""

from __future__ import annotations

from pathlib import Path

import pytest

GOOD = """
import os
from pathlib import Path
import aiopmem
import aiopmem.sync

async def main(rsv: aiopmem.Reservation, srv: aiopmem.sync.Reservation) -> None:
    with open("f", "rb") as f:
        await rsv.map_file("f", 0)
        await rsv.map_file(Path("f"), 0)
        await rsv.map_file(b"f", 0)
        await rsv.map_file(os.open("f", os.O_RDONLY), 0)
        await rsv.map_file(f, 0)
        srv.map_file(Path("f"), 0)
        srv.map_file(f, 0)
"""

BAD = """
import aiopmem
import aiopmem.sync

async def main(rsv: aiopmem.Reservation, srv: aiopmem.sync.Reservation) -> None:
    await rsv.map_file(3.5, 0)
    srv.map_file(None, 0)
"""


def _mypy(tmp_path: Path, code: str) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")
    script = tmp_path / "user_code.py"
    script.write_text(code)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--python-version", "3.10", str(script)]
    )
    return out + err, status


def test_accepted_file_arguments_type_check(tmp_path: Path) -> None:
    out, status = _mypy(tmp_path, GOOD)
    assert status == 0, out


def test_a_float_or_none_as_file_is_a_type_error(tmp_path: Path) -> None:
    out, status = _mypy(tmp_path, BAD)
    assert status == 1, out
    assert out.count('Argument 1 to "map_file"') == 2, out
