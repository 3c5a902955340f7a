"""Asynchronous exceptions (API.md v1.1, "Liveness, interrupts"): a KeyboardInterrupt arriving
anywhere inside a call leaves the reservation consistent, and every later call, close()
included, works.

The sweep: a trace function raises KeyboardInterrupt at the k-th line the library executes
during one public call, for every k until the call runs to its end; after each interrupted
call the reservation must agree with the kernel, a mapping must exist entirely or not at all,
and new maps, an extend and close() must work (close() runs in a thread, so a torn gate shows
as a hang, not a stuck suite).

Not met yet (issue 9, item 4): today's transitions are several Python lines each, so an
interrupt between two of them tears the gate's counters or leaves a claim; the fix is to make
each transition one C call (with the engine's C jobs). The sweep is kept here, strict-xfail,
so that it starts failing the run the day it passes (in the long profile: AIOPMEM_LONG=1).
Today every public call hangs the reservation at some line (seen: map_anonymous, map_file,
unmap, persist, extend, shrink, close).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import aiopmem
import kernel
from aiopmem.sync import Reservation, reserve
from sizes import P

LIBRARY = str(Path(aiopmem.__file__).resolve().parent)


class Interrupt:
    """A trace function raising KeyboardInterrupt at the k-th library line it sees."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(LIBRARY):
            return None
        if event == "line" and not self.fired:
            self.seen += 1
            if self.seen == self.k:
                self.fired = True
                raise KeyboardInterrupt
        return self


def interrupted_at(k: int, call: Callable[[], object]) -> bool:
    """Run ``call`` with an interrupt at its k-th library line; whether it fired."""
    tracer = Interrupt(k)
    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt:
        pass
    except Exception:  # the call's own error (e.g. BufferError) is a valid outcome
        pass
    finally:
        sys.settrace(None)
    return tracer.fired


def still_works(rsv: Reservation) -> None:
    kernel.assert_matches_kernel(rsv)
    for m in rsv.mappings():  # listed means mapped, entirely
        assert not m.closed
        assert kernel.coverage(m.address, m.address + P)[0][2].perms != "---p", m
    done = threading.Event()
    errors: list[BaseException] = []

    def use_and_close() -> None:
        try:
            rsv.map_anonymous(12 * P, P).unmap()
            rsv.extend(P)
            rsv.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=use_and_close, daemon=True).start()
    assert done.wait(2), "the reservation hangs after an interrupted call"
    assert not errors, errors
    assert rsv.closed


def _setup(tmp_path: Path) -> tuple[Reservation, aiopmem.sync.Mapping, Path]:
    path = tmp_path / "f"
    path.write_bytes(b"f" * 4 * P)
    rsv = reserve(16 * P)
    m = rsv.map_anonymous(0, P)
    return rsv, m, path


CALLS: dict[str, Callable[[Reservation, Any, Path], object]] = {
    "map_anonymous": lambda rsv, m, path: rsv.map_anonymous(4 * P, P),
    "map_file": lambda rsv, m, path: rsv.map_file(path, 4 * P),
    "unmap": lambda rsv, m, path: m.unmap(),
    "persist": lambda rsv, m, path: m.persist(),
    "extend": lambda rsv, m, path: rsv.extend(P),
    "shrink": lambda rsv, m, path: rsv.shrink(rsv.size - P, P),
    "close": lambda rsv, m, path: rsv.close(),
    "view": lambda rsv, m, path: m.view(),
}


@pytest.mark.long  # about two minutes while every case still hangs: AIOPMEM_LONG=1 or -m long
@pytest.mark.xfail(strict=True, reason="issue 9 item 4: transitions are not one C call yet")
@pytest.mark.parametrize("name", list(CALLS))
def test_an_interrupt_at_any_line_leaves_the_reservation_usable(name: str, tmp_path: Path) -> None:
    call = CALLS[name]
    for k in range(1, 400):
        rsv, m, path = _setup(tmp_path)
        try:
            fired = interrupted_at(k, partial(call, rsv, m, path))
            if not rsv.closed:
                still_works(rsv)
        finally:
            if not rsv.closed:
                # Torn: its close() would wait forever, and so would the garbage collector
                # (__del__ closes) or the interpreter's exit. Abandon it, range and all.
                rsv._closed = True
        if not fired:
            return  # the call ran to its end before the k-th line
    raise AssertionError("the call never ran to its end")
