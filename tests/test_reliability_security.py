"""Security basics: descriptors the library opens are close-on-exec and opened with no more
access than the mapping needs; execute permission is never added implicitly; read-only
mappings give read-only views, and nothing built on them can write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import apis
import kernel
from aiopmem.sync import Protection, Sharing
from aiopmem.testing import inject
from reliability import TALLY, assert_matches_kernel
from sizes import P

R, W, X = Protection.READ, Protection.WRITE, Protection.EXEC
O_CLOEXEC = 0o2000000  # the flags field of /proc/self/fdinfo is octal
O_ACCMODE = 0o3


def _fd_of(path: Path, deadline: float) -> int:
    """The descriptor this process has open on ``path``, once it appears."""
    while time.monotonic() < deadline:
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == str(path):
                    return int(name)
            except OSError:
                continue
        time.sleep(0.005)
    raise AssertionError(f"{path} was never opened")


@pytest.mark.parametrize("api", ["sync", "trio"], indirect=True)
@pytest.mark.parametrize(
    ("protection", "sharing", "access"),
    [
        (R | W, Sharing.SHARED, os.O_RDWR),
        (R, Sharing.SHARED, os.O_RDONLY),
        (R | W, Sharing.PRIVATE, os.O_RDONLY),  # private writes never reach the file
    ],
    ids=["rw-shared", "r-shared", "rw-private"],
)
def test_path_descriptor_is_cloexec_and_minimal(
    api: str, protection: Protection, sharing: Sharing, access: int, tmp_path: Path
) -> None:
    """While a map of a path is slowed down in its mmap, the descriptor it opened is
    O_CLOEXEC, opened with just the access the mapping needs, and a program exec'd meanwhile
    does not inherit it."""
    path = tmp_path / "secret.bin"
    path.write_bytes(b"s" * (4 * P))
    rsv = apis.reserve(16 * P)
    result: dict[str, Any] = {}

    def map_it() -> None:
        try:
            with inject("mmap", delay=1.0):
                result["m"] = rsv.map_file(path, 0, protection=protection, sharing=sharing)
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=map_it)
    worker.start()
    try:
        fd = _fd_of(path, time.monotonic() + 5)
        with open(f"/proc/self/fdinfo/{fd}") as f:
            flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        assert flags & O_CLOEXEC, f"fd {fd} lacks O_CLOEXEC: flags {flags:o}"
        assert flags & O_ACCMODE == access, f"opened with {flags & O_ACCMODE}, needs {access}"
        # An exec'd program inherits every descriptor without close-on-exec: list its own.
        listing = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, os; print(json.dumps([os.readlink('/proc/self/fd/' + n) "
                "for n in os.listdir('/proc/self/fd') if os.path.exists('/proc/self/fd/' + n)]))",
            ],
            close_fds=False,
            capture_output=True,
            text=True,
            check=True,
        )
        inherited = json.loads(listing.stdout)
        assert str(path) not in inherited
    finally:
        worker.join()
    assert "error" not in result, result.get("error")
    assert str(path) not in [
        os.readlink(f"/proc/self/fd/{n}")
        for n in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{n}")
    ], "the descriptor must be closed once mapped"
    result["m"].unmap()
    rsv.close()
    TALLY["security: checks"] += 1


def _perms(m: Any) -> str:
    vmas = kernel.vmas_in(m.address, m.address + m.size)
    assert len({v.perms for v in vmas}) == 1, vmas
    return vmas[0].perms


@pytest.mark.usefixtures("api")
def test_exec_is_never_implicit(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"d" * (4 * P))
    rsv = apis.reserve(64 * P)
    try:
        offset = 0
        for prot in (Protection.NONE, R, W, R | W):
            for sharing in (Sharing.SHARED, Sharing.PRIVATE):
                for source in (None, path):
                    if source is None:
                        m = rsv.map_anonymous(offset, P, protection=prot, sharing=sharing)
                    else:
                        m = rsv.map_file(source, offset, length=P, protection=prot, sharing=sharing)
                    perms = _perms(m)
                    assert "x" not in perms, (prot, sharing, source, perms)
                    assert perms == kernel.expected_perms(m)
                    offset += 2 * P
                    TALLY["security: checks"] += 1
        # Placeholders have no access at all; each mapping has exactly what it asked for.
        assert_matches_kernel(rsv)
        held = kernel.vmas_in(rsv.address, rsv.address + rsv.max_size)
        assert not any("x" in v.perms for v in held)
        # Asked for, it is given.
        m = rsv.map_anonymous(offset, P, protection=R | X)
        assert _perms(m) == "r-xs"
    finally:
        rsv.close()


@pytest.mark.usefixtures("api")
def test_read_only_mappings_give_read_only_views(tmp_path: Path) -> None:
    path = tmp_path / "ro.bin"
    path.write_bytes(b"r" * (4 * P))
    rsv = apis.reserve(16 * P)
    try:
        ro = rsv.map_file(path, 0, length=2 * P, protection=R)
        rw = rsv.map_anonymous(2 * P, P)
        view = ro.view()
        part = ro.view(P, 10)
        whole = memoryview(view.obj)
        span = rsv.view(0, 3 * P)  # covers a read-only mapping: read-only as a whole
        tail = view[1:]
        arrays = [np.frombuffer(v, dtype=np.uint8) for v in (view, part, whole, span)]
        for mv in (view, part, whole, span, tail):
            assert mv.readonly
            with pytest.raises(TypeError):
                mv[0:1] = b"x"
        for arr in arrays:
            assert not arr.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                arr[0] = 1
            with pytest.raises(ValueError):
                arr.setflags(write=True)
        assert rw.view().readonly is False
        del arrays, arr
        for mv in (tail, view, part, whole, span):
            mv.release()
        assert path.read_bytes() == b"r" * (4 * P)
        # Private and writable: the view writes, the file does not change.
        private = rsv.map_file(path, 4 * P, length=P, sharing=Sharing.PRIVATE)
        pv = private.view()
        pv[:5] = b"XXXXX"
        assert bytes(pv[:5]) == b"XXXXX"
        pv.release()
        private.persist()
        assert path.read_bytes() == b"r" * (4 * P)
        TALLY["security: checks"] += 1
    finally:
        rsv.close()
