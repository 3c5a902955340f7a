"""Memory safety: no sequence of public calls may crash the interpreter.

A child interpreter (so that a SIGSEGV or SIGBUS is observed, not suffered) runs a seeded random
walk over one reservation: it maps files and anonymous memory, takes views, slices of views,
``memoryview(view.obj)``, numpy arrays in all their forms (``frombuffer``, ``asarray``,
``ndarray(buffer=view)``, which keeps ``view.obj`` and drops the export at once), ctypes
``from_buffer``, casts, ``struct`` reads and pickled copies, and reservation-wide views; it
keeps the exporter ``view.obj`` itself now and then (which pins the memory); keeps some alive
and drops or releases others; and between those it unmaps, closes (and re-reserves), shrinks
and extends at random, and reads and writes through every object still alive. Objects whose
memory is gone must refuse to be used (ValueError from a released memoryview, ClosedError from
a closed mapping), and unmapping or closing while any of them is alive must raise BufferError.
The child must exit 0: a negative return code is a death by signal.

A second variant runs the same walk in two threads over the same reservation.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import pickle
import random
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from reliability import TALLY, Profile, profiles, run_child

PROFILES = profiles(quick={"ops": 5000, "seeds": 3}, long={"ops": 40_000, "seeds": 6})


@pytest.mark.parametrize("threads", [1, 2], ids=["one thread", "two threads"])
@pytest.mark.parametrize("profile", PROFILES)
def test_no_crash_through_views(profile: Profile, threads: int, tmp_path: Path) -> None:
    total: dict[str, int] = {}
    for seed in range(profile["seeds"]):
        out = run_child(
            "import sys, test_reliability_memory as t; t.child(*sys.argv[1:])",
            str(seed),
            str(profile["ops"]),
            str(threads),
            str(tmp_path),
            timeout=600,
        )
        counts = json.loads(out.strip().splitlines()[-1])
        for key, n in counts.items():
            total[key] = total.get(key, 0) + n
    TALLY["memory fuzz: operations"] += total["operations"]
    # The walk went where it should: memory refused while alive, refused once gone.
    assert total["operations"] == profile["ops"] * profile["seeds"] * threads
    assert total["BufferError on unmap"] > 0
    assert total["BufferError on close"] > 0
    assert total["refused after unmap"] > 0
    assert total["reads"] > 0 and total["writes"] > 0


# -- the child ---------------------------------------------------------------------------------


class Walk:
    """One thread's random walk. ``shared`` holds the reservation (replaced after a close),
    the mappings and the objects alive, shared by the threads."""

    def __init__(self, seed: int, shared: dict[str, Any], path: str, solo: bool) -> None:
        import numpy as np

        #: alone on the reservation: what it just saw cannot have been changed by another
        #: thread since (a BufferError stands, the bytes it wrote read back)
        self.solo = solo
        self.np = np
        self.rng = random.Random(seed)
        self.shared = shared
        self.path = path
        self.counts: dict[str, int] = {
            "operations": 0,
            "reads": 0,
            "writes": 0,
            "BufferError on unmap": 0,
            "BufferError on close": 0,
            "refused after unmap": 0,
        }

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- the steps -------------------------------------------------------------------------

    def step(self) -> None:
        from aiopmem.sync import ALIGNMENT as P
        from aiopmem.sync import ClosedError, PmemError, Protection, Sharing, reserve

        rng, sh = self.rng, self.shared
        rsv = sh["rsv"]
        alive: list[Any] = sh["alive"]
        maps: list[Any] = sh["maps"]
        action = rng.randrange(100)
        try:
            if action < 16:
                off = rng.randrange(0, max(rsv.size // P, 1)) * P
                n = rng.randint(1, 4) * P
                prot = rng.choice(
                    [Protection.READ | Protection.WRITE] * 3 + [Protection.READ, Protection.NONE]
                )
                sharing = rng.choice([Sharing.SHARED, Sharing.PRIVATE])
                if rng.random() < 0.5:
                    m = rsv.map_anonymous(off, n, protection=prot, sharing=sharing)
                else:
                    fo = rng.randrange(0, 8) * P
                    m = rsv.map_file(
                        self.path, off, length=n, file_offset=fo, protection=prot, sharing=sharing
                    )
                maps.append(m)
            elif action < 26:
                if maps:
                    m = rng.choice(maps)
                    was_open = not m.closed
                    try:
                        m.unmap()
                    except BufferError:
                        self.count("BufferError on unmap")
                        assert not m.closed or not self.solo
                    else:
                        assert m.closed
                        if was_open and rng.random() < 0.5:
                            with contextlib.suppress(ValueError):  # another thread's
                                maps.remove(m)
            elif action < 29:
                try:
                    rsv.close()
                except BufferError:
                    self.count("BufferError on close")
                    assert not rsv.closed or not self.solo
                else:
                    assert rsv.closed and all(m.closed for m in maps if m.reservation is rsv)
                    if sh["rsv"] is rsv:
                        sh["rsv"] = reserve(64 * P, max_size=96 * P)
                        maps[:] = [m for m in maps if m.reservation is not rsv]
            elif action < 33:
                n = rng.randint(1, 8) * P
                if rng.random() < 0.5:
                    rsv.shrink(0, n)
                else:
                    rsv.shrink(rsv.size - n, n)
            elif action < 37:
                rsv.extend(rng.randint(0, 8) * P)
            elif action < 55:
                self.take_view(rsv, maps, alive)
            elif action < 70:
                try:
                    obj = alive.pop(rng.randrange(len(alive)))
                except (IndexError, ValueError):  # empty, or emptied by another thread
                    pass
                else:
                    if isinstance(obj, memoryview) and rng.random() < 0.5:
                        # (BufferError: a numpy array still uses it; dropping it is enough)
                        with contextlib.suppress(BufferError):
                            obj.release()
                    del obj
            elif action < 73:
                if rng.random() < 0.1:
                    gc.collect()
            elif action < 78:
                # A kept exporter (``view.obj``) pins its memory: new buffers from it are
                # always served, and always reach mapped memory.
                windows = sh["windows"]
                if windows:
                    if rng.random() < 0.3:
                        with contextlib.suppress(IndexError, ValueError):  # emptied meanwhile
                            windows.pop(rng.randrange(len(windows)))
                    else:
                        alive.append(memoryview(rng.choice(windows)))
            elif action < 82:
                closed = [m for m in maps if m.closed]
                if closed:
                    m = rng.choice(closed)
                    try:
                        m.view()
                    except ClosedError:
                        self.count("refused after unmap")
                    else:
                        raise AssertionError("a view of an unmapped mapping")
            else:
                self.touch_all(alive)
        except (PmemError, OSError):
            pass
        except IndexError:
            # rng.choice() of a list another thread emptied meanwhile
            if self.solo:
                raise
        self.count("operations")

    def take_view(self, rsv: Any, maps: list[Any], alive: list[Any]) -> None:
        np, rng = self.np, self.rng
        if rng.random() < 0.25:
            n = rng.randint(0, 16) * 4096
            base = rsv.view(rng.randrange(0, max(rsv.size - n, 1)), n)
        elif maps:
            m = rng.choice(maps)
            off = rng.randrange(0, m.size + 1)
            base = m.view(off, rng.randrange(0, m.size - off + 1))
        else:
            return
        # Everything is built before anything is shared: once in ``alive``, another thread
        # may release ``base``.
        kind = rng.randrange(12)
        windows = self.shared["windows"]
        if rng.random() < 0.3:
            windows.append(base.obj)  # the exporter itself pins the memory (API.md v1.1)
        n = len(base)
        if kind == 0:
            made = [base]
        elif kind == 1:
            made = [base[rng.randrange(0, n + 1) :]]
        elif kind == 2:
            made = [memoryview(base.obj)]
            windows.append(base.obj)
        elif kind == 3 and n:
            made = [np.frombuffer(base, dtype=np.uint8)]
        elif kind == 4 and n >= 8:
            made = [np.frombuffer(base.obj, dtype=np.uint8)[: n - n % 8].view(np.uint64)]
        elif kind == 5 and n:
            # keeps ``view.obj`` and releases the buffer export at once
            made = [np.ndarray((n,), np.uint8, buffer=base)]
            base.release()
        elif kind == 6 and n and not base.readonly:
            made = [(ctypes.c_char * n).from_buffer(base)]
        elif kind == 7 and n >= 4:
            # struct reads through the buffer and keeps nothing; pickle copies
            struct.unpack_from("<I", base, rng.randrange(0, n - 3))
            made = [pickle.loads(pickle.dumps(np.asarray(base)))]
        elif kind == 8 and n:
            made = [np.asarray(base)[:: rng.randint(1, 4)]]
        elif kind == 9 and n >= 8:
            made = [base[: n - n % 8].cast("Q")]
        else:
            made = [base, base[::2]]
        alive.extend(made)
        del made
        del base
        if len(alive) > 48:
            del alive[: len(alive) // 2]
        if len(windows) > 64:
            del windows[:32]

    def touch_all(self, alive: list[Any]) -> None:
        np = self.np
        for obj in list(alive):
            try:
                if isinstance(obj, np.ndarray):
                    if obj.size:
                        _ = int(obj[:64].sum()) + int(obj[-1])
                        self.count("reads")
                        if obj.flags.writeable:
                            obj[:4] = 0xA5
                            assert all(obj[:4] == 0xA5) or not self.solo
                            self.count("writes")
                    continue
                mv = obj
                if not (isinstance(mv, memoryview) and mv.format == "B"):
                    mv = memoryview(mv).cast("B")  # a cast view, a ctypes array
                if len(mv):
                    data = mv[:64].tobytes() + mv[-1:].tobytes()
                    assert len(data) == min(len(mv), 64) + 1
                    self.count("reads")
                    if not mv.readonly:
                        k = min(len(mv), 8)
                        blob = self.rng.randbytes(k)
                        mv[:k] = blob
                        assert mv[:k].tobytes() == blob or not self.solo
                        self.count("writes")
            except ValueError:
                pass  # released
            except TypeError:
                raise


def child(seed: str, ops: str, threads: str, tmp: str) -> None:
    from aiopmem.sync import ALIGNMENT as P
    from aiopmem.sync import reserve

    path = os.path.join(tmp, f"fuzz-{seed}-{threads}.bin")
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(16 * P))
    shared: dict[str, Any] = {
        "rsv": reserve(64 * P, max_size=96 * P),
        "alive": [],
        "maps": [],
        "windows": [],
    }
    walks = [
        Walk(int(seed) * 1000 + k, shared, path, int(threads) == 1) for k in range(int(threads))
    ]
    errors: list[BaseException] = []

    def run(walk: Walk) -> None:
        try:
            for _ in range(int(ops)):
                walk.step()
        except BaseException as exc:
            errors.append(exc)
            raise

    workers = [threading.Thread(target=run, args=(w,)) for w in walks]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    shared["alive"].clear()
    shared["windows"].clear()
    gc.collect()
    shared["rsv"].close()
    os.unlink(path)
    total: dict[str, int] = {}
    for w in walks:
        for key, n in w.counts.items():
            total[key] = total.get(key, 0) + n
    sys.stdout.write(json.dumps(total) + "\n")
