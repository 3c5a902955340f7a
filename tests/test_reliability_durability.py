"""Durability: what ``persist()`` returned for survives the death of the process.

A child maps two regions of a file at separate places of a reservation, and then, region after
region, writes a pattern through a view, persists that range and reports it over a pipe; it
goes on writing (unpersisted) until the parent, after a random number of reports, kills it with
SIGKILL. Every reported byte must then be in the file, at the file offset the mapping says.
(A SIGKILL loses no page-cache data, so this checks that persist() covers the right pages of
the right file, and that nothing reported was written elsewhere; power loss is not simulated.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability import TALLY, Profile, profiles
from sizes import P

REGION = 2 * P  # one report per region: no later write touches a reported range
FILE = 64 * P
SPLIT = FILE // 2  # mapping A shows [0, SPLIT) of the file, mapping B [SPLIT, FILE)


def pattern(seed: int, index: int, length: int) -> bytes:
    return random.Random(seed * 100_003 + index).randbytes(length)


@pytest.mark.parametrize("profile", profiles(quick={"trials": 10}, long={"trials": 100}))
def test_persisted_bytes_survive_sigkill(profile: Profile, tmp_path: Path) -> None:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(0)
    for trial in range(profile["trials"]):
        path = tmp_path / f"durable-{trial}.bin"
        path.write_bytes(bytes(FILE))
        wanted = rng.randint(1, FILE // REGION - 2)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, test_reliability_durability as t; t.child(sys.argv[1], "
                "int(sys.argv[2]))",
                str(path),
                str(trial),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        reports: list[tuple[int, ...]] = []
        try:
            assert child.stdout is not None
            while len(reports) < wanted:
                line = child.stdout.readline()
                assert line, f"the child ended early: {child.communicate()[1].decode()[-2000:]}"
                reports.append(tuple(int(x) for x in line.split()))
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate()
        assert child.returncode == -signal.SIGKILL
        data = path.read_bytes()
        for index, file_offset, length in reports:
            got = data[file_offset : file_offset + length]
            assert got == pattern(trial, index, length), f"trial {trial}, report {index}"
        TALLY["durability: persisted ranges checked"] += len(reports)
        TALLY["durability: processes killed"] += 1


def child(path: str, seed: int) -> None:
    from aiopmem.sync import reserve

    rng = random.Random(seed)
    out = sys.stdout
    with reserve(96 * P) as rsv:
        a = rsv.map_file(path, 0, length=SPLIT)
        b = rsv.map_file(path, 48 * P, length=FILE - SPLIT, file_offset=SPLIT)
        for index in range(FILE // REGION):
            file_offset = index * REGION
            m = a if file_offset < SPLIT else b
            at = file_offset - m.file_offset + rng.randrange(0, REGION // 2)
            length = rng.randint(1, REGION // 2)
            view = m.view()
            view[at : at + length] = pattern(seed, index, length)
            view.release()
            m.persist(at, length)
            out.write(f"{index} {m.file_offset + at} {length}\n")
            out.flush()
        time.sleep(3600)  # until killed
