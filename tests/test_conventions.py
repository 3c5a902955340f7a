"""API.md v1.1 "Conventions": checkpoints, forgotten awaits, exceptions leaving ``with``, and
distinct names for the sync and async classes (issue 9, items 10-13)."""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem.testing import inject
from sizes import P


class Boom(Exception):
    pass


# -- every async function is a checkpoint --------------------------------------------------------


async def _calls(
    rsv: aiopmem.Reservation, m: aiopmem.Mapping
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "reserve": lambda: aiopmem.reserve(P),
        "map_anonymous": lambda: rsv.map_anonymous(4 * P, P),
        "extend": lambda: rsv.extend(P),
        "extend(0)": lambda: rsv.extend(0),
        "shrink": lambda: rsv.shrink(rsv.size - P, P),
        "persist": m.persist,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["reserve", "map_anonymous", "extend", "extend(0)", "shrink", "persist"]
)
async def test_a_call_in_a_cancelled_scope_does_nothing_and_raises(name: str) -> None:
    async with aiopmem.reserve(16 * P) as rsv:
        m = await rsv.map_anonymous(0, P)
        call = (await _calls(rsv, m))[name]
        before = (rsv.size, rsv.max_size, [x.offset for x in rsv.mappings()])
        # (The held range only: worker threads come and go, and so do their stacks.)
        held = (rsv.address, rsv.address + rsv.max_size)
        vmas = kernel.vmas_in(*held)
        with inject("mmap", errno=1, times=10) as mm, inject("msync", errno=1) as ms:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await call()
                pytest.fail("not a checkpoint")  # pragma: no cover
        assert scope.cancelled_caught
        assert mm.seen == 0 and ms.seen == 0, "a syscall was made"
        assert (rsv.size, rsv.max_size, [x.offset for x in rsv.mappings()]) == before
        assert kernel.vmas_in(*held) == vmas
        await m.unmap()


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["unmap", "aclose"])
async def test_unmap_and_aclose_in_a_cancelled_scope_run_then_raise(what: str) -> None:
    """Item 10: they run to the end, then deliver the cancellation (Reservation.aclose()
    returned without raising it)."""
    rsv = await aiopmem.reserve(16 * P)
    m = await rsv.map_anonymous(0, P)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await (m.unmap() if what == "unmap" else rsv.aclose())
        pytest.fail("the cancellation was not delivered")  # pragma: no cover
    assert scope.cancelled_caught
    assert m.closed
    assert rsv.closed == (what == "aclose")
    await rsv.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["unmap", "aclose"])
async def test_no_op_unmap_and_aclose_are_checkpoints(what: str) -> None:
    rsv = await aiopmem.reserve(16 * P)
    m = await rsv.map_anonymous(0, P)
    await m.unmap()
    if what == "aclose":
        await rsv.aclose()
    call = m.unmap if what == "unmap" else rsv.aclose
    with anyio.CancelScope() as scope:
        scope.cancel()
        await call()
        pytest.fail("not a checkpoint")  # pragma: no cover
    assert scope.cancelled_caught
    # ... and a schedule point: another task gets to run (trio picks the order of runnable
    # tasks at random, so give it a few chances; with no schedule point it never runs).
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        for _ in range(30):
            await call()
            if ran:
                break
        assert ran
    await rsv.aclose()


# -- a forgotten await ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["reserve", "map_file", "map_anonymous"])
async def test_an_opening_never_awaited_warns(what: str, tmp_path: Any) -> None:
    """Item 11: like a coroutine, an Opening dropped without being awaited or entered warns."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * P)
    async with aiopmem.reserve(16 * P) as rsv:
        make: Callable[[], object] = {
            "reserve": lambda: aiopmem.reserve(P),
            "map_file": lambda: rsv.map_file(path, 0),
            "map_anonymous": lambda: rsv.map_anonymous(0, P),
        }[what]
        with pytest.warns(RuntimeWarning, match="was never awaited"):
            _drop(make)
        assert rsv.mappings() == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opening = rsv.map_anonymous(0, P)
            opening.close()  # closed explicitly, as a coroutine can be: no warning
            del opening
            gc.collect()


def test_an_opening_drives_as_a_coroutine() -> None:
    """An Opening driven by hand is its coroutine: send() passes its value as it is (a tuple
    too), close() returns None, and the never-awaited warning names the line that dropped it."""
    import types

    from aiopmem import Opening

    @types.coroutine
    def pause() -> Any:
        return (yield "paused")

    async def body() -> Any:
        return await pause()

    opening: Any = Opening(body, (), "body()")
    assert opening.send(None) == "paused"
    with pytest.raises(StopIteration) as stop:
        opening.send((1, 2))
    assert stop.value.value == (1, 2)
    started: Any = Opening(body, (), "body()")
    assert started.send(None) == "paused"
    assert started.close() is None
    dropped: Any = Opening(body, (), "body()")
    line = sys._getframe().f_lineno + 2
    with pytest.warns(RuntimeWarning, match=r"body\(\) was never awaited") as record:
        del dropped
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def _drop(make: Callable[[], object]) -> None:
    make()  # the result is dropped at once, as with a forgotten await
    gc.collect()


# -- exceptions leaving with / async with ----------------------------------------------------------


def test_sync_with_block_exception_is_not_replaced_by_a_failing_close() -> None:
    """Item 12: a view alive when the block raises makes the close fail; the block's own
    exception propagates, with a note, and the objects stay open."""
    keep: list[memoryview] = []
    opened: list[Any] = []

    def body() -> None:
        with aiopmem.sync.reserve(16 * P) as rsv, rsv.map_anonymous(0, P) as m:
            opened.extend((rsv, m))
            keep.append(m.view())
            raise Boom

    with pytest.raises(Boom) as info:
        body()
    rsv, m = opened
    notes = getattr(info.value, "__notes__", [])
    assert any("aiopmem.sync.Mapping was left open" in n and "BufferError" in n for n in notes)
    assert any("aiopmem.sync.Reservation was left open" in n for n in notes)
    assert not rsv.closed and not m.closed
    keep.clear()
    rsv.close()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["reservation", "opening", "mapping"])
async def test_async_with_block_exception_is_not_replaced(how: str) -> None:
    np = pytest.importorskip("numpy")
    keep: list[Any] = []
    rsv = await aiopmem.reserve(16 * P)
    with pytest.raises(Boom) as info:  # noqa: PT012 (Boom must leave the async with block)
        if how == "reservation":
            async with rsv:
                m = await rsv.map_anonymous(0, P)
                keep.append(np.ndarray((P,), np.uint8, buffer=m.view()))
                raise Boom
        elif how == "opening":
            async with rsv.map_anonymous(0, P) as m:
                keep.append(np.ndarray((P,), np.uint8, buffer=m.view()))
                raise Boom
        else:
            m = await rsv.map_anonymous(0, P)
            async with m:
                keep.append(np.ndarray((P,), np.uint8, buffer=m.view()))
                raise Boom
    notes = getattr(info.value, "__notes__", [])
    assert notes and all("was left open" in n and "BufferError" in n for n in notes), notes
    assert not m.closed and not rsv.closed
    keep.clear()
    await rsv.aclose()


def test_with_block_without_exception_still_raises_the_close_error() -> None:
    keep: list[memoryview] = []
    rsv = aiopmem.sync.reserve(16 * P)
    with pytest.raises(BufferError), rsv:
        keep.append(rsv.map_anonymous(0, P).view())
    keep.clear()
    rsv.close()


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sync_and_async_objects_have_distinct_names() -> None:
    """Item 13: reprs name the API, and mixing the two raises TypeError naming both."""
    async with aiopmem.reserve(16 * P) as rsv:
        m = await rsv.map_anonymous(0, P)
        assert repr(rsv).startswith("<aiopmem.Reservation ")
        assert repr(rsv.sync).startswith("<aiopmem.sync.Reservation ")
        assert repr(m).startswith("<aiopmem.Mapping ")
        assert repr(m.sync).startswith("<aiopmem.sync.Mapping ")
        with pytest.raises(TypeError, match=r"aiopmem\.Mapping, not aiopmem\.sync\.Mapping"):
            rsv.find_next(m.sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"aiopmem\.sync\.Mapping, not aiopmem\.Mapping"):
            rsv.sync.find_next(m)  # type: ignore[arg-type]
        await m.unmap()
        assert "closed" in repr(m)
    assert repr(rsv) == "<aiopmem.Reservation closed>"
