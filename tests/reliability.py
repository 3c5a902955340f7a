"""Shared pieces of the reliability suite (``test_reliability_*.py``): the quick and long
profiles, the tally of what a run exercised (printed at the end of the pytest run), and
snapshots of a reservation's state and of the kernel's view of a range.

Profiles: every reliability test runs its quick profile in ``make test``; the long variants are
marked ``long`` and skipped unless ``AIOPMEM_LONG=1`` is set or ``-m long`` is given (see the
collection hook in conftest.py).
"""

from __future__ import annotations

import os
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import kernel

LONG = os.environ.get("AIOPMEM_LONG") == "1"
#: per-test timeout of the long profiles (the suite's default is 120 s)
LONG_TIMEOUT = 3600

#: What the reliability tests did in this run: operations executed, faults injected, junk
#: inputs tried... Printed by conftest.py's terminal summary.
TALLY: Counter[str] = Counter()


@dataclass(frozen=True)
class Profile:
    name: str
    #: free-form knobs, read by each test
    knobs: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.knobs[key]


def profiles(quick: dict[str, Any], long: dict[str, Any]) -> list[Any]:
    """``pytest.param``s of the quick profile and of the long one (marked ``long``)."""
    return [
        pytest.param(Profile("quick", quick), id="quick"),
        pytest.param(
            Profile("long", long),
            id="long",
            marks=[pytest.mark.long, pytest.mark.timeout(LONG_TIMEOUT)],
        ),
    ]


def state(rsv: Any) -> tuple[Any, ...]:
    """Everything observable of a reservation through its lookups and attributes."""
    maps = tuple(
        (
            m.address,
            m.size,
            m.offset,
            m.file_offset,
            m.protection,
            m.sharing,
            m.granularity,
            m.file,
            m.closed,
        )
        for m in rsv.mappings()
    )
    return (rsv.address, rsv.size, rsv.max_size, rsv.closed, tuple(rsv.holes), maps)


def vmas_between(start: int, end: int) -> list[kernel.Vma]:
    """``kernel.vmas_in(start, end)`` from one read of /proc/self/maps, building a ``Vma`` only
    for the lines in the range (the parse of every line is what makes ``kernel.vmas`` slow)."""
    with open("/proc/self/maps", "rb") as f:
        lines = f.read().splitlines()
    # The lines are in address order: find the first candidate by bisection.
    first = max(bisect_right(lines, start, key=lambda ln: int(ln[: ln.index(b"-")], 16)) - 1, 0)
    out = []
    for line in lines[first:]:
        dash = line.index(b"-")
        space = line.index(b" ", dash)
        lo, hi = int(line[:dash], 16), int(line[dash + 1 : space], 16)
        if lo >= end:
            break
        if hi <= start:
            continue
        parts = line.decode("utf-8", "surrogateescape").split(maxsplit=5)
        path = parts[5].strip() if len(parts) > 5 else ""
        out.append(kernel.Vma(lo, hi, parts[1], int(parts[2], 16), parts[3], int(parts[4]), path))
    return out


def kernel_view(start: int, end: int) -> list[tuple[int, int, str, int, int, str]]:
    """The VMAs of ``[start, end)``, clipped to it, with file offsets adjusted to the clip."""
    out = []
    for v in vmas_between(start, end):
        lo, hi = max(v.start, start), min(v.end, end)
        if v.path.startswith("/dev/zero"):  # shared anonymous memory: a new inode each time
            out.append((lo, hi, v.perms, 0, 0, v.path))
            continue
        off = v.offset + (lo - v.start) if v.inode else 0
        out.append((lo, hi, v.perms, off, v.inode, v.path))
    # Neighbouring VMAs with the same attributes are one range for our purpose.
    merged: list[tuple[int, int, str, int, int, str]] = []
    for piece in out:
        if merged:
            lo, hi, perms, off, inode, path = merged[-1]
            same = (perms, inode, path) == piece[2:3] + piece[4:]
            if same and hi == piece[0] and (not inode or off + (hi - lo) == piece[3]):
                merged[-1] = (lo, piece[1], perms, off, inode, path)
                continue
        merged.append(piece)
    return merged


@contextmanager
def kernel_snapshot(start: int, end: int) -> Iterator[None]:
    """Make the helpers of kernel.py see one snapshot of ``[start, end)`` (they read the whole
    of /proc/self/maps once per piece otherwise). Not for use while other threads read it."""
    snap = vmas_between(start, end)
    saved = kernel.vmas
    kernel.vmas = lambda: snap
    try:
        yield
    finally:
        kernel.vmas = saved


def assert_matches_kernel(rsv: Any) -> None:
    """``kernel.assert_matches_kernel(rsv)`` against one snapshot of the reservation's range."""
    if rsv.closed:
        return
    with kernel_snapshot(rsv.address, rsv.address + rsv.max_size):
        kernel.assert_matches_kernel(rsv)


def fast_matches_kernel(rsv: Any) -> None:
    """``kernel.assert_matches_kernel`` for reservations with tens of thousands of mappings:
    one read of /proc/self/maps, one walk."""
    start, end = rsv.address, rsv.address + rsv.max_size
    vmas = vmas_between(start, end)
    holes = [(rsv.address + a, rsv.address + b) for a, b in rsv.holes]
    segments: list[tuple[int, int, Any]] = []
    pos = start
    for m in rsv.mappings():
        span = -(-m.size // kernel.PAGE) * kernel.PAGE
        if m.address > pos:
            segments.append((pos, m.address, None))
        segments.append((m.address, m.address + span, m))
        pos = m.address + span
    if pos < end:
        segments.append((pos, end, None))
    k = 0
    for lo, hi, m in segments:
        pos = lo
        while pos < hi:
            while k < len(vmas) and vmas[k].end <= pos:
                k += 1
            in_hole = any(a <= pos < b for a, b in holes)
            if in_hole:
                nxt = min(b for a, b in holes if a <= pos < b)
                assert k >= len(vmas) or vmas[k].start >= nxt, f"hole at {pos:#x} is mapped"
                pos = min(nxt, hi)
                continue
            assert k < len(vmas) and vmas[k].start <= pos, f"nothing mapped at {pos:#x}"
            v = vmas[k]
            if m is None:
                assert kernel.is_placeholder(v), f"{pos:#x} should be a placeholder, is {v}"
            else:
                assert v.perms == kernel.expected_perms(m), (m, v)
            pos = min(v.end, hi)


def run_child(code: str, *args: str, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter with tests/ on sys.path; return its stdout. The child
    must exit 0: a negative return code means a signal killed it (SIGSEGV, SIGBUS...)."""
    import subprocess

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = tests + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode >= 0, (
        f"the child died from signal {-proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    assert proc.returncode == 0, f"the child failed:\n{proc.stderr[-4000:]}"
    return proc.stdout
