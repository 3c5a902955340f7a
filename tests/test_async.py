"""The async API on asyncio, asyncio+uvloop and trio: forms, no stall, concurrency, cancellation
at every point, injected errors. Kernel state is checked through /proc/self/maps and fds
through /proc/self/fd after each scenario."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiopmem
import aiopmem.sync
import kernel
from aiopmem import _ffi
from aiopmem._async import _dispatch
from aiopmem._async import _reservation as async_reservation_module
from aiopmem.testing import inject
from sizes import MiB, P

pytestmark = pytest.mark.anyio

A = aiopmem.ALIGNMENT


def held_range(rsv: aiopmem.Reservation) -> tuple[int, int]:
    return rsv.address, rsv.address + rsv.max_size


@asynccontextmanager
async def checked_reservation(size: int = 64 * MiB) -> AsyncIterator[aiopmem.Reservation]:
    """A reservation whose kernel view is checked on the way out, and which must leave no fd
    and no byte of address space behind once closed."""
    fds = kernel.open_fds()
    rsv = await aiopmem.reserve(size)
    try:
        yield rsv
        kernel.assert_matches_kernel(rsv)
    finally:
        start, end = held_range(rsv)  # after any front shrink
        await rsv.aclose()
    assert kernel.is_free(start, end)
    assert kernel.open_fds() <= fds


# -- the forms of the API ------------------------------------------------------------------------


async def test_reserve_forms(holey_file: Path) -> None:
    opening = aiopmem.reserve(16 * MiB)
    assert isinstance(opening, Coroutine)
    rsv = await opening
    assert isinstance(rsv, aiopmem.Reservation)
    start, end = held_range(rsv)
    await rsv.aclose()
    assert rsv.closed and kernel.released(start, end)

    async with aiopmem.reserve(16 * MiB) as rsv:
        start, end = held_range(rsv)
        async with rsv.map_file(holey_file, 0, length=MiB) as m1:
            assert rsv.find(0) is m1
            kernel.assert_matches_kernel(rsv)
        assert m1.closed and rsv.find(0) is None
        async with await rsv.map_file(holey_file, 0, length=MiB) as m2:
            assert isinstance(m2, aiopmem.Mapping)
        assert m2.closed
        m3 = await rsv.map_anonymous(MiB, MiB)
        assert rsv.find(MiB) is m3 and m3.reservation is rsv
        kernel.assert_matches_kernel(rsv)
    assert rsv.closed and m3.closed and kernel.released(start, end)


async def test_openings_run_under_start_soon() -> None:
    async with aiopmem.reserve(16 * MiB) as rsv:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(rsv.map_anonymous, i * MiB, MiB)
        assert [m.offset for m in rsv.mappings()] == [0, MiB, 2 * MiB, 3 * MiB]
        kernel.assert_matches_kernel(rsv)


async def test_entering_does_not_leave_unawaited_coroutines() -> None:
    # filterwarnings=error turns a "coroutine was never awaited" RuntimeWarning into a failure.
    async with aiopmem.reserve(16 * MiB) as rsv, rsv.map_anonymous(0, A) as m:
        assert m.size == A
    opening = aiopmem.reserve(16 * MiB)
    opening.close()  # never started: nothing to clean up, no warning


async def test_errors_surface_unchanged(holey_file: Path) -> None:
    async with checked_reservation(16 * MiB) as rsv:
        with pytest.raises(aiopmem.OffsetUnalignedError):
            await rsv.map_file(holey_file, 1)
        with pytest.raises(aiopmem.LengthOutOfRangeError):
            await rsv.map_anonymous(16 * MiB, A)
        m = await rsv.map_anonymous(0, A)
        with pytest.raises(aiopmem.MappingExistsError):
            await rsv.map_anonymous(0, A)
        with pytest.raises(aiopmem.ReservationNotEmptyError):
            await rsv.shrink(0, A)
        with pytest.raises(aiopmem.NotSupportedError):
            await rsv.shrink(A, A)
        with pytest.raises(TypeError):
            await rsv.extend(1.5)  # type: ignore[arg-type]
        view = m.view()
        with pytest.raises(BufferError):
            await m.unmap()
        with pytest.raises(BufferError):
            await rsv.aclose()
        assert not rsv.closed and not m.closed and rsv.find(0) is m
        view.release()
        await m.unmap()
        with pytest.raises(aiopmem.ClosedError):
            await m.persist()
    with pytest.raises(aiopmem.ClosedError):
        await rsv.map_anonymous(0, A)
    with pytest.raises(aiopmem.ClosedError):
        await rsv.extend(A)


async def test_extend_shrink_persist(holey_file: Path) -> None:
    async with checked_reservation(8 * MiB) as rsv:
        m = await rsv.map_file(holey_file, 4 * MiB, length=MiB)
        await rsv.extend(8 * MiB)
        assert rsv.size == 16 * MiB
        await rsv.shrink(0, 4 * MiB)
        assert m.offset == 0 and m.address == rsv.address
        await rsv.shrink(MiB, rsv.size - MiB)
        assert rsv.size == MiB
        m.view()[:3] = b"abc"
        await m.persist()
        await m.persist(0, 3)
        kernel.assert_matches_kernel(rsv)
    assert (await anyio.Path(holey_file).read_bytes())[:3] == b"abc"


# -- no stall, concurrency -----------------------------------------------------------------------


async def test_event_loop_keeps_ticking_during_slow_syscall() -> None:
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.005)

    async with checked_reservation() as rsv, anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await anyio.sleep(0.02)
        with inject("mmap", delay=0.3) as inj:
            begin = time.monotonic()
            m = await rsv.map_anonymous(0, MiB)
            elapsed = time.monotonic() - begin
        assert inj.fired == 1
        tg.cancel_scope.cancel()
    assert elapsed >= 0.3
    during = [t for t in ticks if begin <= t <= begin + elapsed]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # A blocked loop would show one gap of ~0.3 s and no ticks; 5 ms ticks with a wide margin.
    assert len(during) >= 10, len(during)
    assert max(gaps) < 0.1, max(gaps)
    assert m.closed


async def test_slow_maps_into_disjoint_ranges_overlap() -> None:
    async with checked_reservation() as rsv:
        with inject("mmap", delay=0.4, times=4) as inj:
            begin = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(rsv.map_anonymous, i * MiB, MiB)
            elapsed = time.monotonic() - begin
        assert inj.fired == 4
        assert len(rsv.mappings()) == 4
    # Serialized they would take 1.6 s; overlapping, about 0.4 s.
    assert 0.4 <= elapsed < 1.2, elapsed


async def test_lookup_during_inflight_map_is_immediate_and_does_not_see_it() -> None:
    async with checked_reservation() as rsv:
        existing = await rsv.map_anonymous(0, A)
        result: list[aiopmem.Mapping] = []

        async def slow_map() -> None:
            result.append(await rsv.map_anonymous(MiB, A))

        with inject("mmap", delay=0.4):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_map)
                await anyio.sleep(0.1)
                begin = time.monotonic()
                assert rsv.find(MiB) is None
                assert rsv.find(0, 2 * MiB) is existing
                assert rsv.mappings() == [existing]
                assert rsv.find_next(existing) is None
                assert time.monotonic() - begin < 0.05
        assert rsv.find(MiB) is result[0]


async def test_many_tasks_map_and_unmap_their_own_slots() -> None:
    tasks, rounds, slot = 32, 100, 16 * A
    async with checked_reservation(tasks * slot) as rsv:

        async def worker(i: int) -> None:
            for _ in range(rounds):
                m = await rsv.map_anonymous(i * slot, slot)
                assert m.address == rsv.address + i * slot
                m.view()[:1] = b"x"
                await m.unmap()

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(worker, i)
        assert rsv.mappings() == []
        start, end = held_range(rsv)
        [vma] = kernel.vmas_in(start, end)  # all one placeholder again
        assert kernel.is_placeholder(vma) and (vma.start, vma.end) == (start, end)


async def test_extend_and_shrink_racing_with_maps_keep_every_mapping_in_place() -> None:
    slot = 4 * A
    async with checked_reservation(256 * slot) as rsv:
        head = 64 * slot  # the front part is shrunk away step by step, never mapped
        made: list[aiopmem.Mapping] = []

        async def mapper(i: int) -> None:
            for k in range(8):
                # Offsets shift as the front shrinks: read the base each time, map ahead of it.
                base = rsv.size - (192 - i * 8 - k) * slot
                with contextlib.suppress(aiopmem.MappingExistsError):
                    made.append(await rsv.map_anonymous(base, slot))

        async def resizer() -> None:
            for _ in range(16):
                await rsv.extend(slot)
                await rsv.shrink(0, slot)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(resizer)
            for i in range(16):
                tg.start_soon(mapper, i)
        assert made
        assert rsv.size == 256 * slot
        for m in made:
            assert m.address == rsv.address + m.offset
            assert rsv.find(m.offset) is m
        assert rsv.address == made[0].address - made[0].offset
        assert head  # the shrunk head never held a mapping
        kernel.assert_matches_kernel(rsv)


# -- cancellation at every point -----------------------------------------------------------------

Op = Callable[[aiopmem.Reservation, Path], Awaitable[object]]


def _snapshot(rsv: aiopmem.Reservation) -> tuple[int, int, int, list[tuple[int, int]]]:
    return (
        rsv.address,
        rsv.size,
        rsv.max_size,
        [(m.offset, m.size) for m in rsv.mappings()],
    )


async def _fresh() -> aiopmem.Reservation:
    """16 MiB with max_size 32 MiB at a quiet address: extending past max_size then needs one
    mmap (MAP_FIXED_NOREPLACE), which the scenarios slow down or fail."""
    return await aiopmem.reserve(
        16 * MiB, address=kernel.quiet_address(64 * MiB), max_size=32 * MiB
    )


async def _prepared(rsv: aiopmem.Reservation, path: Path) -> aiopmem.Mapping:
    """Every scenario starts from: a 1 MiB file mapping at offset 4 MiB of a 16 MiB reservation."""
    return await rsv.map_file(path, 4 * MiB, length=MiB)


async def _map_fd(rsv: aiopmem.Reservation, path: Path) -> aiopmem.Mapping:
    """map_file of a plain descriptor (the async map's C path), closed again after."""
    fd = os.open(path, os.O_RDWR)
    try:
        return await rsv.map_file(fd, 0, length=MiB)
    finally:
        os.close(fd)


OPS: dict[str, tuple[str, Op]] = {
    "map_file": ("mmap", lambda rsv, p: rsv.map_file(p, 0, length=MiB)),
    "map_file_fd": ("mmap", _map_fd),
    "map_file_path_open": ("open", lambda rsv, p: rsv.map_file(str(p), 0, length=MiB)),
    "map_anonymous": ("mmap", lambda rsv, p: rsv.map_anonymous(0, MiB)),
    "extend": ("mmap", lambda rsv, p: rsv.extend(rsv.max_size - rsv.size + A)),
    "shrink_front": ("munmap", lambda rsv, p: rsv.shrink(0, MiB)),
    "unmap": ("mmap", lambda rsv, p: rsv.find(4 * MiB).unmap()),  # type: ignore[union-attr]
    "persist": ("msync", lambda rsv, p: rsv.find(4 * MiB).persist()),  # type: ignore[union-attr]
    "aclose": ("munmap", lambda rsv, p: rsv.aclose()),
}


def _outcomes(name: str, before: Any, rsv: aiopmem.Reservation) -> tuple[Any, Any]:
    """The two allowed states after a cancelled `name`: not happened, or happened entirely."""
    addr, size, max_size, maps = before
    if name in ("map_file", "map_file_fd", "map_file_path_open", "map_anonymous"):
        return before, (addr, size, max_size, sorted([(0, MiB), *maps]))
    if name == "extend":
        grown = size + max_size - size + A
        return before, (addr, grown, grown, maps)
    if name == "shrink_front":
        return before, (addr + MiB, size - MiB, max_size - MiB, [(o - MiB, n) for o, n in maps])
    if name == "unmap":
        return before, (addr, size, max_size, [])
    if name == "persist":
        return before, before
    assert name == "aclose"
    return before, "closed"


def _loop_scheduler() -> Callable[[Callable[[], object]], object]:
    """The running event loop's thread-safe "call soon" (for a worker to cancel a scope)."""
    try:
        import asyncio

        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


async def _run_cancelled(
    name: str, when: str, holey_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syscall, op = OPS[name]
    fds = kernel.open_fds()
    rsv = await _fresh()
    start, end = held_range(rsv)
    await _prepared(rsv, holey_file)
    before = _snapshot(rsv)
    cancelled = False

    async def call() -> None:
        await op(rsv, holey_file)

    if when == "before":
        with anyio.CancelScope() as scope:
            scope.cancel()
            await call()
        cancelled = scope.cancelled_caught
    elif when == "during":
        with inject(syscall, delay=0.3) as inj:
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def runner() -> None:
                    nonlocal cancelled
                    with scope:
                        await call()
                    cancelled = scope.cancelled_caught

                tg.start_soon(runner)
                await anyio.sleep(0.1)
                scope.cancel()
        assert inj.fired >= 1
    else:  # "after": the cancellation lands right after the syscall, before the result is back
        scope = anyio.CancelScope()
        schedule = _loop_scheduler()
        real = _dispatch.run_blocking
        from aiopmem._async import _mapping as async_mapping_module

        async def then_cancel(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            def in_worker(*a: Any) -> Any:
                result = fn(*a)
                schedule(scope.cancel)  # reaches the loop before the job's result does
                return result

            return await real(in_worker, *args, **kwargs)

        real_job = _dispatch.run_job

        async def job_then_cancel(
            begin: Callable[..., Any], args: Any, *rest: Any, **kwargs: Any
        ) -> Any:
            # A job's syscall runs in a C worker: the cancellation is made right after the job
            # is submitted, on the loop, so it is due before the job's result can be back.
            def begun(*a: Any) -> Any:
                job = begin(*a)
                scope.cancel()
                return job

            return await real_job(begun, args, *rest, **kwargs)

        def c_then_cancel(real_c: Callable[..., Any]) -> Callable[..., Any]:
            # The C paths (aio_map_fd, and aio_unmap) begin the job themselves.
            def begun(*a: Any) -> Any:
                job = real_c(*a)
                if type(job) is _ffi.Job:
                    scope.cancel()
                return job

            return begun

        for module in (async_reservation_module, async_mapping_module):
            monkeypatch.setattr(module, "run_blocking", then_cancel)
            monkeypatch.setattr(module, "run_job", job_then_cancel)
        monkeypatch.setattr(async_reservation_module, "aio_map_fd", c_then_cancel(_ffi.aio_map_fd))
        monkeypatch.setattr(async_mapping_module, "aio_unmap", c_then_cancel(_ffi.aio_unmap))
        with scope:
            await call()
        cancelled = scope.cancelled_caught
        monkeypatch.undo()

    not_happened, happened = _outcomes(name, before, rsv)
    after = "closed" if rsv.closed else _snapshot(rsv)
    assert after in (not_happened, happened), (name, when, before, after)
    if name in ("map_file", "map_file_fd", "map_file_path_open", "map_anonymous"):
        # The caller never received a mapping: it must not exist.
        assert after == not_happened
    if name in ("unmap", "aclose"):
        # Shielded: they always run to the end.
        assert after == happened
    assert cancelled or name in ("unmap", "aclose") or when == "after"
    if not rsv.closed:
        kernel.assert_matches_kernel(rsv)
        start, end = held_range(rsv)
    await rsv.aclose()
    assert kernel.is_free(start, end)
    assert kernel.open_fds() <= fds


@pytest.mark.parametrize("when", ["before", "during", "after"])
@pytest.mark.parametrize("name", list(OPS))
async def test_cancellation(
    name: str, when: str, holey_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _run_cancelled(name, when, holey_file, monkeypatch)


@pytest.mark.parametrize("when", ["before", "during", "after"])
async def test_cancelled_reserve_leaks_nothing(when: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The undo of a cancelled reserve closes it in a worker of the Python pool: one exists
    # before the snapshot, so that its stack and malloc arena are not counted as leaks.
    await _dispatch.run_blocking(int)
    before = kernel.vmas()
    got: list[aiopmem.Reservation] = []
    scope = anyio.CancelScope()
    if when == "before":
        scope.cancel()
        with scope:
            got.append(await aiopmem.reserve(64 * MiB))
    elif when == "during":
        with inject("mmap", delay=0.3):
            async with anyio.create_task_group() as tg:

                async def runner() -> None:
                    with scope:
                        got.append(await aiopmem.reserve(64 * MiB))

                tg.start_soon(runner)
                await anyio.sleep(0.1)
                scope.cancel()
    else:
        real = _dispatch.run_blocking
        schedule = _loop_scheduler()

        async def then_cancel(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            def in_worker(*a: Any) -> Any:
                result = fn(*a)
                schedule(scope.cancel)
                return result

            return await real(in_worker, *args, **kwargs)

        real_job = _dispatch.run_job

        async def job_then_cancel(
            begin: Callable[..., Any], args: Any, *rest: Any, **kwargs: Any
        ) -> Any:
            def begun(*a: Any) -> Any:  # the reserve's mmap runs in a C worker: cancel now
                job = begin(*a)
                scope.cancel()
                return job

            return await real_job(begun, args, *rest, **kwargs)

        monkeypatch.setattr(async_reservation_module, "run_blocking", then_cancel)
        monkeypatch.setattr(async_reservation_module, "run_job", job_then_cancel)
        with scope:
            got.append(await aiopmem.reserve(64 * MiB))
        monkeypatch.undo()
    assert got == []
    assert scope.cancelled_caught
    # No new PROT_NONE region of 64 MiB + headroom was left behind.
    assert {(v.start, v.end) for v in kernel.vmas() if kernel.is_placeholder(v)} <= {
        (v.start, v.end) for v in before if kernel.is_placeholder(v)
    }


async def test_cancelled_async_with_body_unmaps(holey_file: Path) -> None:
    async with checked_reservation(16 * MiB) as rsv:
        with anyio.CancelScope() as scope:
            async with rsv.map_file(holey_file, 0, length=MiB) as m:
                scope.cancel()
                await anyio.sleep(1)
        assert scope.cancelled_caught
        assert m.closed and rsv.mappings() == []


# -- injected errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EAGAIN, errno.EIO])
@pytest.mark.parametrize("name", list(OPS))
async def test_injected_errors_leave_state_unchanged(name: str, err: int, holey_file: Path) -> None:
    syscall, op = OPS[name]
    fds = kernel.open_fds()
    rsv = await _fresh()
    await _prepared(rsv, holey_file)
    before = _snapshot(rsv)
    if name == "unmap" and err == errno.ENOMEM:
        # ENOMEM is how the kernel refuses the placeholder overlay at the VMA limit; unmap then
        # falls back to munmap + MAP_FIXED_NOREPLACE, and succeeds.
        with inject(syscall, errno=err) as inj:
            await op(rsv, holey_file)
        assert inj.fired == 1
        assert _snapshot(rsv) == _outcomes(name, before, rsv)[1]
        assert rsv.holes == []
    else:
        with inject(syscall, errno=err) as inj, pytest.raises(OSError) as info:
            await op(rsv, holey_file)
        assert inj.fired == 1
        assert info.value.errno == err
        assert not rsv.closed
        assert _snapshot(rsv) == before
    kernel.assert_matches_kernel(rsv)
    start, end = held_range(rsv)
    await rsv.aclose()
    assert kernel.is_free(start, end)
    assert kernel.open_fds() <= fds


# -- parity with the sync API --------------------------------------------------------------------


def _public(cls: type) -> dict[str, Any]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


def _call_shape(fn: Any) -> list[tuple[str, Any, Any]]:
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self"
    ]


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [
        (aiopmem.sync.Reservation, aiopmem.Reservation),
        (aiopmem.sync.Mapping, aiopmem.Mapping),
    ],
)
def test_async_classes_mirror_sync_ones(sync_cls: type, async_cls: type) -> None:
    sync_members, async_members = _public(sync_cls), _public(async_cls)
    for name, member in sync_members.items():
        target = "aclose" if name == "close" else name
        assert target in async_members, f"{async_cls.__name__} lacks {target}"
        other = async_members[target]
        if inspect.isdatadescriptor(member):  # a property, or a field of the compiled base
            assert inspect.isdatadescriptor(other), name
            continue
        # Names, kinds and defaults (a method of the compiled base has no annotations).
        assert _call_shape(member) == _call_shape(other), name
        blocking = name in {
            "map_file", "map_anonymous", "extend", "shrink", "close", "unmap", "persist",
            "populate", "advise", "protect", "lock", "unlock", "write", "read", "read_into",
        }  # fmt: skip
        if blocking:
            # A coroutine function, or one returning an awaitable opening (map_*).
            returns = inspect.signature(other).return_annotation
            assert inspect.iscoroutinefunction(other) or "Opening" in str(returns), name
        else:
            assert not inspect.iscoroutinefunction(other), name


def test_async_module_exports_match_sync() -> None:
    # API.md: both export the same names; aiopmem also exports Opening.
    assert set(aiopmem.sync.__all__) | {"Opening"} == set(aiopmem.__all__)
    for name in aiopmem.__all__:
        assert hasattr(aiopmem, name)
        if name not in ("reserve", "Reservation", "Mapping", "Opening"):
            assert getattr(aiopmem, name) is getattr(aiopmem.sync, name)


def test_sync_core_is_reachable_for_threads() -> None:
    async def main() -> None:
        async with aiopmem.reserve(16 * MiB) as rsv:
            core = rsv.sync
            m = await anyio.to_thread.run_sync(core.map_anonymous, 0, MiB)
            assert rsv.find(0).sync is m  # type: ignore[union-attr]

    anyio.run(main)


_ = os  # (used by helpers in other scenarios)


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_the_cheap_cancellation_check_agrees_with_anyio(uvloop: bool) -> None:
    """On asyncio the async API asks ``cancel_due`` (a plain function) before and after each
    job and awaits anyio's ``checkpoint_if_cancelled`` only when it says yes: it must say yes
    exactly where that checkpoint would raise, through nested, cancelled and shielded scopes."""
    if uvloop and os.environ.get("AIOPMEM_MATRIX"):
        pytest.skip("uvloop is left to make test on this interpreter (AIOPMEM_MATRIX)")

    async def agrees() -> bool:
        due = _dispatch.cancel_due(_dispatch.current_task(asyncio.get_running_loop()))
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            assert due, "checkpoint_if_cancelled raised where cancel_due said no"
            return True
        assert not due, "cancel_due said yes where checkpoint_if_cancelled did not raise"
        return False

    async def scenarios() -> list[bool]:
        seen = [await agrees()]  # no scope cancelled
        with anyio.CancelScope() as outer:
            outer.cancel()
            seen.append(await agrees())  # cancelled, not yet delivered
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                seen.append(await agrees())  # a shield under the cancelled scope
        with anyio.CancelScope(shield=True), anyio.CancelScope() as inner:
            inner.cancel()
            seen.append(await agrees())  # cancelled under a shield
        with anyio.CancelScope() as outer:
            with anyio.CancelScope():
                outer.cancel()
                seen.append(await agrees())  # cancelled two scopes out
        return seen

    options = {"use_uvloop": uvloop}
    assert anyio.run(scenarios, backend="asyncio", backend_options=options) == [
        False, True, False, True, True,
    ]  # fmt: skip


def test_the_cheap_cancellation_check_agrees_with_trio() -> None:
    """The same on trio: ``_trio_cancel_due`` (the Python path's) and ``cancel_due`` (the C
    prologue's, which it also calls after a job) must say yes exactly where trio's
    ``checkpoint_if_cancelled`` raises (nested, cancelled, shielded scopes, a deadline in the
    past), and where they say no they count the cancel point as trio does
    (``trio.testing.assert_checkpoints`` relies on the count)."""
    import trio
    import trio.testing

    async def agrees() -> bool:
        task = trio.lowlevel.current_task()
        points = task._cancel_points
        due = _dispatch._trio_cancel_due(task)
        assert task._cancel_points == points + (not due)
        assert _dispatch.cancel_due(task) is due
        assert task._cancel_points == points + 2 * (not due)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            assert due, "checkpoint_if_cancelled raised where the check said no"
            return True
        assert not due, "the check said yes where checkpoint_if_cancelled did not raise"
        return False

    async def scenarios() -> list[bool]:
        async with aiopmem.reserve(P):  # sets up the async API's trio side
            pass
        seen = [await agrees()]
        with trio.CancelScope() as outer:
            outer.cancel()
            seen.append(await agrees())
        with trio.CancelScope() as outer:
            outer.cancel()
            with trio.CancelScope(shield=True):
                seen.append(await agrees())
        with trio.CancelScope(shield=True), trio.CancelScope() as inner:
            inner.cancel()
            seen.append(await agrees())
        with trio.move_on_at(trio.current_time() - 1):
            seen.append(await agrees())
        with trio.CancelScope() as outer, trio.CancelScope():
            outer.cancel()
            seen.append(await agrees())
        async with aiopmem.reserve(P) as rsv:
            with trio.testing.assert_checkpoints():
                m = await rsv.map_anonymous(0, P)
            with trio.testing.assert_checkpoints():
                await m.unmap()
        return seen

    assert trio.run(scenarios) == [False, True, False, True, True, True]


async def test_a_map_and_unmap_leave_no_cycle_for_the_collector(holey_file: Path) -> None:
    """A mapping and its async face refer to each other; once unmapped (the path of every
    async mapping's end) they must not be left as a cycle that only the garbage collector
    frees: at 32 tasks that made the collector run every ~280 map+unmap pairs."""
    import gc

    fd = os.open(holey_file, os.O_RDWR)
    try:
        async with checked_reservation() as rsv:

            async def worker(slot: int) -> None:
                for _ in range(25):
                    m = await rsv.map_file(fd, slot * MiB, length=MiB)
                    await m.unmap()
                    m = await rsv.map_anonymous(slot * MiB, P)
                    await m.aclose()

            await worker(0)  # warm
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                async with anyio.create_task_group() as tg:
                    for slot in range(8):
                        tg.start_soon(worker, slot)
                gc.collect()
                found = [type(o) for o in gc.garbage]
            finally:
                gc.garbage.clear()
                gc.set_debug(0)
                gc.enable()
    finally:
        os.close(fd)
    per_op = (aiopmem.Mapping, aiopmem.sync.Mapping, aiopmem.Opening, _ffi.Job)
    ours = [t for t in found if issubclass(t, per_op)]
    assert not ours, ours[:5]
    assert len(found) < 40, found[:20]  # 400 pairs: not one cycle each


def test_trio_instruments_see_every_reschedule_of_a_job() -> None:
    """On trio a finished job's task is rescheduled without trio's Python ``reschedule`` when
    nothing watches; with an instrument for ``task_scheduled`` trio's own runs, so the
    instrument sees each wake-up (here: each of 20 maps and 20 unmaps, the caller's wait off,
    so each one parks its task), as it would for any trio primitive."""
    import trio
    import trio.abc

    scheduled: list[object] = []

    class Watch(trio.abc.Instrument):
        def task_scheduled(self, task: trio.lowlevel.Task) -> None:
            scheduled.append(task)

    async def main() -> int:
        me = trio.lowlevel.current_task()
        async with aiopmem.reserve(16 * MiB) as rsv:
            watch = Watch()
            trio.lowlevel.add_instrument(watch)
            before = len(scheduled)
            for _ in range(20):
                m = await rsv.map_anonymous(0, P)
                await m.unmap()
            trio.lowlevel.remove_instrument(watch)
            return sum(t is me for t in scheduled[before:])

    old = _ffi.executor_stats()["wait"]
    _ffi.executor_configure(None, None, None, 0.0)  # the caller's wait off: each job parks
    try:
        seen = trio.run(main)
    finally:
        _ffi.executor_configure(None, None, None, old)
    assert seen >= 40, seen


async def test_a_mapping_found_while_its_map_returns_has_one_face(holey_file: Path) -> None:
    """A new mapping is findable once its job is committed, before its task resumes: a task
    that looks it up in between and the task that mapped it must hold the same object, and
    later lookups find that one."""
    fd = os.open(holey_file, os.O_RDWR)
    found: dict[int, set[int]] = {}
    seen: list[aiopmem.Mapping] = []  # (kept alive: ids stay unique)
    done = False
    try:
        async with checked_reservation() as rsv:

            async def finder() -> None:
                while not done:
                    for slot in range(8):
                        m = rsv.find(slot * MiB)
                        if m is not None:
                            seen.append(m)
                            found.setdefault(slot, set()).add(id(m))
                    await anyio.lowlevel.checkpoint()

            async def mapper(slot: int, got: list[aiopmem.Mapping]) -> None:
                got.append(await rsv.map_file(fd, slot * MiB, length=MiB))

            got: list[aiopmem.Mapping] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(finder)
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                async with anyio.create_task_group() as maps:
                    for slot in range(8):
                        maps.start_soon(mapper, slot, got)
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                done = True
            for m in got:
                assert rsv.find(m.offset) is m
                assert found.get(m.offset // MiB, set()) <= {id(m)}, "a second face was made"
                await m.unmap()
    finally:
        os.close(fd)


_TRIO_LAYOUT_SCRIPT = """
import os, sys, tempfile, trio
import aiopmem
from aiopmem._async import _dispatch

if sys.argv[1] == "unknown":  # a trio whose layout is not the one known here
    _dispatch._trio_self_await = lambda lowlevel: None
path = os.path.join(tempfile.mkdtemp(), "f")
with open(path, "wb") as f:
    f.truncate(1 << 16)
fd = os.open(path, os.O_RDWR)

async def main():
    async with aiopmem.reserve(1 << 24) as rsv:
        async def worker(slot):
            for _ in range(50):
                m = await rsv.map_file(fd, slot << 16, length=1 << 16)
                await m.persist()
                await m.unmap()
        async with trio.open_nursery() as nursery:
            for slot in range(8):
                nursery.start_soon(worker, slot)
        with trio.move_on_after(0.01):  # cancelled at any moment, over and over
            while True:
                m = await rsv.map_file(fd, 0, length=1 << 16)
                await m.unmap()
        jobs = [await rsv.map_anonymous(i << 16, 1 << 16) for i in range(3)]
        assert len(rsv.mappings()) == 3, rsv.mappings()
        for m in jobs:
            await m.unmap()
        assert not rsv.mappings()
        port = _dispatch._trio_port_var.get()
        print(port.how[0] if len(port.how) == 4 else "wait_task_rescheduled")

trio.run(main)
os.close(fd)
"""


@pytest.mark.parametrize("layout", ["known", "unknown"])
def test_trio_jobs_with_and_without_the_c_prologue(layout: str) -> None:
    """On trio a job is begun by the C prologue and awaited itself (it yields trio's own
    WaitTaskRescheduled) where trio's layout is the one known here; where it is not, the
    jobs are begun in Python and waited for with ``wait_task_rescheduled``. Both run maps,
    persists and unmaps from many tasks, and cancellations at any moment, to the end (a fresh
    process: the choice is made on the first job under trio)."""
    out = subprocess.run(
        [sys.executable, "-c", _TRIO_LAYOUT_SCRIPT, layout],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["trio" if layout == "known" else "wait_task_rescheduled"]
