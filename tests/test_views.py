"""Export safety (API.md v1.1): anything that can reach mapped memory pins its mapping while it
lives, whatever consumer holds it; the exporter behind ``view.obj`` cannot be built, reopened or
closed by users; a reservation dropped while a view lives is released once the view dies.

Each test here failed on the exporter that counted buffer exports (issue 9, items 1, 2, 7): a
numpy array built with ``buffer=view`` keeps ``view.obj`` and releases the export at once, so the
count fell to zero while the array could still read the memory.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest

import kernel
from aiopmem import _ffi
from aiopmem.sync import ClosedError, Reservation, reserve
from aiopmem.testing import inject
from sizes import P

N = 4 * P


def _np_ndarray_buffer(v: memoryview) -> object:
    return np.ndarray((N,), np.uint8, buffer=v)


def _np_ndarray_buffer_obj(v: memoryview) -> object:
    return np.ndarray((N,), np.uint8, buffer=v.obj)  # type: ignore[arg-type]  # numpy: no Buffer


def _np_frombuffer(v: memoryview) -> object:
    return np.frombuffer(v, dtype=np.uint8)


def _np_frombuffer_obj(v: memoryview) -> object:
    return np.frombuffer(v.obj, dtype=np.uint8)  # type: ignore[call-overload]


def _np_asarray(v: memoryview) -> object:
    return np.asarray(v)


def _np_view_of_slice(v: memoryview) -> object:
    return np.frombuffer(v, dtype=np.uint32)[3:7].view(np.uint8)


def _np_reshaped(v: memoryview) -> object:
    return np.frombuffer(v, dtype=np.uint8).reshape(4, P)[1]


def _ctypes_from_buffer(v: memoryview) -> object:
    return (ctypes.c_char * N).from_buffer(v)


def _ctypes_from_obj(v: memoryview) -> object:
    return (ctypes.c_uint8 * N).from_buffer(v.obj)


def _slice(v: memoryview) -> object:
    return v[P : 2 * P]


def _cast(v: memoryview) -> object:
    return v.cast("Q")


def _memoryview_of_obj(v: memoryview) -> object:
    return memoryview(v.obj)


def _obj(v: memoryview) -> object:
    return v.obj


CONSUMERS: dict[str, Callable[[memoryview], object]] = {
    "np.ndarray(buffer=view)": _np_ndarray_buffer,
    "np.ndarray(buffer=view.obj)": _np_ndarray_buffer_obj,
    "np.frombuffer(view)": _np_frombuffer,
    "np.frombuffer(view.obj)": _np_frombuffer_obj,
    "np.asarray(view)": _np_asarray,
    "numpy view of a slice": _np_view_of_slice,
    "numpy reshape": _np_reshaped,
    "ctypes from_buffer(view)": _ctypes_from_buffer,
    "ctypes from_buffer(view.obj)": _ctypes_from_obj,
    "memoryview slice": _slice,
    "memoryview cast": _cast,
    "memoryview(view.obj)": _memoryview_of_obj,
    "view.obj": _obj,
}


#: How each consumer's memory is read back, to show it still reaches the mapped bytes.
def _first_byte(held: object) -> int:
    if isinstance(held, np.ndarray):
        return int(held.reshape(-1).view(np.uint8)[0])
    if isinstance(held, memoryview):
        return held.cast("B")[0]
    if isinstance(held, ctypes.Array):
        return bytes(memoryview(held).cast("B")[:1])[0]
    return memoryview(held).cast("B")[0]  # type: ignore[arg-type]


ENDS = ("unmap", "close", "rsv.view+unmap", "rsv.view+close")


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_every_consumer_pins_the_mapping(consumer: str, end: str) -> None:
    """While the consumer lives, unmap/close raise BufferError and change nothing; the memory
    still reads; once it dies, they succeed and the range is a placeholder/free again."""
    rsv = reserve(8 * P)
    try:
        m = rsv.map_anonymous(P, N)
        m.view()[:] = bytes(range(256)) * (N // 256)
        view = rsv.view(P, N) if end.startswith("rsv.view") else m.view()
        held = CONSUMERS[consumer](view)
        view.release()
        del view
        gc.collect()
        action = m.unmap if end.endswith("unmap") else rsv.close
        for _ in range(2):  # a failed attempt does not weaken the next one
            with pytest.raises(BufferError):
                action()
        assert not m.closed and not rsv.closed
        kernel.assert_matches_kernel(rsv)
        first = _first_byte(held)
        assert first in range(256)
        assert m.view()[P] == 0  # the mapping still works
        del held
        gc.collect()
        action()
        assert m.closed
        if end.endswith("unmap"):
            kernel.assert_matches_kernel(rsv)
            with pytest.raises(ClosedError):
                m.view()
    finally:
        gc.collect()
        rsv.close()


def test_consumer_held_past_unmap_attempt_never_crashes_in_a_subprocess() -> None:
    """The exact idiom of the report, in a child process: on the old exporter ``arr[0]``
    after a successful unmap killed the interpreter with SIGSEGV."""
    code = textwrap.dedent(
        """
        import numpy as np, aiopmem.sync as s
        rsv = s.reserve(1 << 20)
        m = rsv.map_anonymous(0, 1 << 16)
        arr = np.ndarray((1 << 16,), np.uint8, buffer=m.view())
        sub = np.ndarray((4096,), np.uint8, buffer=rsv.view(0, 4096))
        for action in (m.unmap, rsv.close):
            try:
                action()
            except BufferError:
                pass
            else:
                raise SystemExit("unpinned: " + action.__name__)
        print(int(arr[0]) + int(sub[0]), "alive")
        del arr, sub
        rsv.close()
        print("closed", m.closed)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "alive", "closed", "True"]


def test_the_exporter_has_no_constructor_and_no_methods() -> None:
    with reserve(4 * P) as rsv:
        m = rsv.map_anonymous(0, P)
        with m.view() as v:
            obj = v.obj
            cls = type(obj)
            with pytest.raises(TypeError):
                cls()
            with pytest.raises(TypeError):
                cls(m.address, P, False)  # type: ignore[call-arg]
            with pytest.raises(TypeError):
                cls.__new__(cls)
            public = [name for name in dir(obj) if not name.startswith("_")]
            assert public == []
            assert not hasattr(obj, "reopen") and not hasattr(obj, "try_close")
            del obj
        m.unmap()


def test_view_obj_kept_after_a_failed_unmap_cannot_reach_unmapped_memory() -> None:
    """A reservation-wide view covers m1 and m2; keeping its exporter pins both. The old
    exporter let m1's unmap close it and a failed unmap of m2 reopen it over m1's unmapped
    range."""
    with reserve(4 * P) as rsv:
        m1 = rsv.map_anonymous(0, P)
        m2 = rsv.map_anonymous(P, P)
        view = rsv.view(0, 2 * P)
        obj = view.obj
        view.release()
        for m in (m1, m2):
            with pytest.raises(BufferError):
                m.unmap()
        with pytest.raises(BufferError):
            rsv.close()
        assert bytes(memoryview(obj)[: 2 * P : P]) == b"\0\0"
        del obj
        m1.unmap()
        m2.unmap()
        kernel.assert_matches_kernel(rsv)


def _held(rsv: Reservation) -> tuple[int, int]:
    return rsv.address, rsv.address + rsv.max_size


def test_reservation_dropped_while_a_view_lives_is_released_when_it_dies() -> None:
    """Item 7: as an ``mmap`` object, a reservation garbage-collected with a view alive stays
    mapped for that view, and is released (with a ResourceWarning) once the view dies."""
    rsv = reserve(4 * P)
    lo, hi = _held(rsv)
    m = rsv.map_anonymous(0, 2 * P)
    m.view()[:5] = b"hello"
    arr = np.ndarray((2 * P,), np.uint8, buffer=m.view())
    del rsv, m
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        assert not kernel.is_free(lo, hi)
        assert bytes(arr[:5]) == b"hello"
        del arr
        gc.collect()
    assert kernel.is_free(lo, hi), kernel.vmas_in(lo, hi)
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def test_reservation_dropped_without_views_is_released() -> None:
    rsv = reserve(4 * P)
    lo, hi = _held(rsv)
    rsv.map_anonymous(P, P)
    del rsv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert kernel.is_free(lo, hi)


def test_view_registrations_do_not_grow_with_views_taken() -> None:
    """Dead views are pruned as new ones are taken: the per-mapping list stays bounded."""
    with reserve(4 * P) as rsv:
        m = rsv.map_anonymous(0, P)
        keep = [m.view() for _ in range(5)]
        for _ in range(10_000):
            m.view().release()
            rsv.view(0, P).release()
        assert len(m._views) <= 2 * 16
        del keep
        m.unmap()


def test_a_view_made_while_a_collection_lets_a_map_claim_before_it_pins_the_right_mapping() -> None:
    """Making a view allocates, an allocation may start a garbage collection, and a collection
    may let another thread run: here a map claims a range *before* the viewed mapping while
    the view is being made (its mmap slowed), which moves the index entries after it. The view
    must still be registered with the mapping it covers (seen: registered with a neighbour,
    so the covered mapping could be unmapped under the live view; or a segfault on the claim)."""
    rsv = reserve(64 * P)
    try:
        rsv.map_anonymous(0, P)
        neighbour = rsv.map_anonymous(4 * P, P)
        target = rsv.map_anonymous(6 * P, P)
        go = threading.Event()
        outcome: list[object] = []

        def mapper() -> None:
            go.wait()
            with inject("mmap", delay=0.5):
                outcome.append(rsv.map_anonymous(2 * P, P))

        thread = threading.Thread(target=mapper)
        thread.start()
        armed = [True]

        def during_collection(phase: str, info: dict[str, int]) -> None:
            caller = sys._getframe(1)
            if phase == "start" and armed[0] and caller.f_code.co_name == "view":
                armed[0] = False
                go.set()
                time.sleep(0.2)  # the mapper claims [2P, 3P) meanwhile, then sleeps in mmap

        gc.callbacks.append(during_collection)
        threshold = gc.get_threshold()
        gc.set_threshold(1)
        try:
            view = rsv.view(6 * P, P)
        finally:
            gc.set_threshold(*threshold)
            gc.callbacks.remove(during_collection)
        thread.join()
        assert not armed[0], "the collection did not run while the view was made"
        assert len(outcome) == 1
        assert _ffi.live_views((target._views,)) == 1
        assert _ffi.live_views((neighbour._views,)) == 0
        with pytest.raises(BufferError):
            target.unmap()
        view.release()
    finally:
        for m in rsv.mappings():
            m.unmap()
        rsv.close()
