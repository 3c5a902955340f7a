"""Fault injection at every syscall of every operation, at every position.

For each public operation, each syscall ("mmap", "munmap", "msync", "open", "fstat") and each
errno (ENOMEM, EAGAIN, EINTR, EIO), the injection fails the call at position ``after = 0, 1,
2, ...`` until it no longer fires. What each outcome must be:

- the injection did not fire: the operation made exactly ``after`` calls of that syscall and
  succeeded, as in a run without injection (the reference run);
- EINTR: the library retried; the operation succeeded with exactly the reference's end state,
  one more call of the syscall seen;
- any other errno: ``OSError`` with that errno (never a ``PmemError``), and the library's state,
  the kernel's view of the range and the open file descriptors are exactly as before, except
  where the contract documents a recovery: an unmap whose placeholder overlay gets ENOMEM falls
  back to munmap + MAP_FIXED_NOREPLACE and succeeds; a reserve without max_size settles for
  half the default headroom on ENOMEM.

Every case runs in a fresh reservation at the same quiet address, so that end states compare
exactly. The whole matrix runs on aiopmem.sync and on the async API (asyncio, uvloop, trio)
through the blocking portal of tests/apis.py. Chained failures (every call failing from some
position on) are tested separately at the end.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import apis
import kernel
from aiopmem.sync import (
    MappingExistsError,
    PmemError,
    Protection,
    ReservationNotEmptyError,
)
from aiopmem.testing import inject
from reliability import (
    TALLY,
    assert_matches_kernel,
    fast_matches_kernel,
    kernel_view,
    state,
    vmas_between,
)
from sizes import P

SIZE = 32 * P
MAX = 48 * P
SYSCALLS = ("mmap", "munmap", "msync", "open", "fstat")
ERRNOS = (errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.EIO)
#: the default headroom of a reservation made without max_size (see _core/_placement.py)
DEFAULT_HEADROOM = 1 << 30

pytestmark = pytest.mark.usefixtures("api")


@dataclass
class Env:
    """A reservation at ``q`` with a file mapping (pattern written) and an anonymous one."""

    rsv: Any
    q: int
    q2: int
    path: Path
    fd: int
    m_file: Any
    m_anon: Any
    made: list[Any]


@contextmanager
def environment(q: int, q2: int, path: Path, fd: int) -> Iterator[Env]:
    rsv = apis.reserve(SIZE, address=q, max_size=MAX)
    made: list[Any] = []
    try:
        m_file = rsv.map_file(path, 8 * P, length=4 * P)
        view = m_file.view()
        view[:] = bytes(range(256)) * (len(view) // 256)
        view.release()
        m_anon = rsv.map_anonymous(16 * P, 2 * P)
        view = m_anon.view()
        view[:7] = b"aiopmem"
        view.release()
        yield Env(rsv, q, q2, path, fd, m_file, m_anon, made)
    finally:
        rsv.close()
        for other in made:
            other.close()
    assert not vmas_between(q - 16 * P, q + MAX + 64 * P)
    assert not vmas_between(q2, q2 + 32 * P)


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable[[Env], Any]
    #: what the op made that must be closed afterwards (a reservation), if anything
    makes: bool = False


def _reserve(**kwargs: Any) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        if kwargs.get("address") == "q2":
            rsv = apis.reserve(16 * P, **{**kwargs, "address": env.q2})
        else:
            rsv = apis.reserve(16 * P, **kwargs)
        env.made.append(rsv)
        return rsv

    return run


OPS = [
    Op("reserve(max_size) at address", _reserve(address="q2", max_size=32 * P), makes=True),
    Op("reserve(max_size)", _reserve(max_size=32 * P), makes=True),
    Op("reserve() at address", _reserve(address="q2"), makes=True),
    Op("reserve()", _reserve(), makes=True),
    Op("map_file(path)", lambda e: e.rsv.map_file(e.path, 24 * P, length=2 * P)),
    Op(
        "map_file(path, read-only)",
        lambda e: e.rsv.map_file(e.path, 24 * P, file_offset=12 * P, protection=Protection.READ),
    ),
    Op("map_file(fd)", lambda e: e.rsv.map_file(e.fd, 24 * P, length=2 * P, file_offset=P)),
    Op("map_anonymous", lambda e: e.rsv.map_anonymous(24 * P, 3 * P)),
    Op("unmap", lambda e: e.m_anon.unmap()),
    Op("extend within max_size", lambda e: e.rsv.extend(P)),
    Op("extend past max_size", lambda e: e.rsv.extend(24 * P)),
    Op("shrink front", lambda e: e.rsv.shrink(0, 4 * P)),
    Op("shrink tail", lambda e: e.rsv.shrink(28 * P, 4 * P)),
    Op("persist", lambda e: e.m_file.persist()),
    Op("persist part", lambda e: e.m_file.persist(100, P)),
    Op("close", lambda e: e.rsv.close()),
]


@dataclass
class Observed:
    """What a run of an op left: the op's own result (a new reservation's state) and the
    environment's state, the kernel's view of the quiet area, the fds, the calls made."""

    raised: BaseException | None
    made: tuple[Any, ...] | None
    env_state: tuple[Any, ...]
    kernel: list[Any]
    fds: set[int]
    calls: dict[str, int]
    file_pattern_ok: bool


def _shape(rsv: Any) -> tuple[Any, ...]:
    """A new reservation's state, its address left out when the kernel chose it."""
    return (rsv.size, rsv.max_size, rsv.closed, tuple(rsv.holes), len(rsv.mappings()))


def observe_run(
    op: Op,
    env: Env,
    fault: tuple[str, int, int, int] | None,
    outer: tuple[str, int] | None = None,
) -> tuple[Observed, Any]:
    """Run ``op`` with ``fault = (syscall, errno, after, times)`` injected (innermost: it sees
    a call first), counting every syscall. ``outer = (syscall, errno)`` adds a one-shot
    injection underneath, which takes the first call the fault lets through."""
    with ExitStack() as stack:
        if outer is not None:
            stack.enter_context(inject(outer[0], errno=outer[1]))
        fired = None
        if fault is not None:
            sc, err, after, times = fault
            fired = stack.enter_context(inject(sc, errno=err, after=after, times=times))
        # The counters are innermost: they see every call and never fire.
        counters = {sc: stack.enter_context(inject(sc, times=0)) for sc in SYSCALLS}
        raised: BaseException | None = None
        result = None
        try:
            result = op.run(env)
        except Exception as exc:
            raised = exc
        calls = {sc: c.seen for sc, c in counters.items()}
    if fired is not None and fired.fired:
        TALLY["faults injected"] += fired.fired
    TALLY["fault matrix: operations"] += 1
    made = _shape(result) if op.makes and raised is None else None
    rsv = env.rsv
    file_ok = True
    if not rsv.closed and not env.m_file.closed:
        view = env.m_file.view()
        file_ok = bytes(view) == bytes(range(256)) * (len(view) // 256)
        view.release()
    obs = Observed(
        raised,
        made,
        state(rsv),
        kernel_view(env.q - 16 * P, env.q + MAX + 64 * P),
        kernel.open_fds(),
        calls,
        file_ok,
    )
    if fired is not None:
        return obs, fired.fired
    return obs, None


#: The sizes a reservation made by the ``reserve`` ops can have (16 pages, and its headroom).
_RESERVE_SIZES = frozenset([16 * P, 32 * P] + [16 * P + (DEFAULT_HEADROOM >> k) for k in range(20)])


def _placeholders() -> list[int]:
    """Sizes of the placeholders of the process (---p, anonymous, no name) that could be a
    reservation of the ``reserve`` ops: a failed reserve must not leave one behind. (Other
    ---p regions change size on their own: glibc's per-thread malloc arenas, thread stacks.)"""
    sizes = []
    with open("/proc/self/maps", "rb") as f:
        for line in f.read().splitlines():
            fields = line.split()
            if len(fields) == 5 and fields[1] == b"---p" and fields[4] == b"0":
                lo, hi = fields[0].split(b"-")
                if int(hi, 16) - int(lo, 16) in _RESERVE_SIZES:
                    sizes.append(int(hi, 16) - int(lo, 16))
    return sorted(sizes)


@pytest.fixture
def quiet() -> tuple[int, int]:
    """Two quiet addresses far apart: the environment's and a free one for ``reserve``."""
    q = kernel.quiet_address(MAX + 128 * P)
    while True:
        q2 = kernel.quiet_address(32 * P)
        if abs(q2 - q) > 1 << 32:
            return q, q2


def _recovery(op: Op, sc: str, err: int, after: int) -> str | None:
    """The documented recoveries from a single failing call."""
    if err != errno.ENOMEM or sc != "mmap":
        return None
    if op.name == "unmap" and after == 0:
        return "unmap falls back to munmap + MAP_FIXED_NOREPLACE"
    if op.name == "reserve()" and after == 0:
        return "less headroom"
    if op.name == "reserve() at address" and after == 1:
        return "less headroom"
    return None


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_every_fault_at_every_position(
    op: Op, tmp_path: Path, quiet: tuple[int, int], fd_guard: None
) -> None:
    q, q2 = quiet
    path = tmp_path / "file"
    path.write_bytes(os.urandom(16 * P))
    fd = os.open(path, os.O_RDWR)
    try:
        # Warm up: the first shared map of a file on a device learns whether MAP_SYNC works
        # there (one more mmap); the matrix sees the steady state.
        with environment(q, q2, path, fd):
            pass
        with environment(q, q2, path, fd) as env:
            before_env = state(env.rsv)
            fds = kernel.open_fds()
            ref, _ = observe_run(op, env, None)
        assert ref.raised is None, ref.raised
        assert ref.fds == fds
        assert ref.file_pattern_ok
        for sc in SYSCALLS:
            for err in ERRNOS:
                after = 0
                while True:
                    assert after <= ref.calls[sc], "the injection fired past the last call"
                    with environment(q, q2, path, fd) as env:
                        fds = kernel.open_fds()
                        before = (
                            state(env.rsv),
                            kernel_view(q - 16 * P, q + MAX + 64 * P),
                            _placeholders(),
                        )
                        assert before[0] == before_env
                        got, fired = observe_run(op, env, (sc, err, after, 1))
                        where = f"{op.name}: {sc} #{after} -> {errno.errorcode[err]}"
                        if not fired:
                            # Past the last call: a plain successful run.
                            assert after == ref.calls[sc], where
                            assert got.raised is None, where
                            assert got.calls == ref.calls, where
                            _assert_same_end(got, ref, where)
                            break
                        _check_fault(op, env, sc, err, after, got, ref, before, fds, where)
                    after += 1
                TALLY["fault matrix: cases"] += after + 1
    finally:
        os.close(fd)


def _assert_same_end(got: Observed, ref: Observed, where: str) -> None:
    assert got.made == ref.made, where
    assert got.env_state == ref.env_state, where
    assert got.kernel == ref.kernel, where
    assert got.file_pattern_ok, where


def _check_fault(
    op: Op,
    env: Env,
    sc: str,
    err: int,
    after: int,
    got: Observed,
    ref: Observed,
    before: tuple[Any, ...],
    fds: set[int],
    where: str,
) -> None:
    assert got.fds == fds, f"{where}: fds leaked or closed"
    if err == errno.EINTR:
        assert got.raised is None, f"{where}: EINTR must be retried, got {got.raised!r}"
        expected_calls = dict(ref.calls)
        expected_calls[sc] += 1
        assert got.calls == expected_calls, where
        _assert_same_end(got, ref, where)
        assert_matches_kernel(env.rsv)
        return
    recovery = _recovery(op, sc, err, after)
    if recovery == "unmap falls back to munmap + MAP_FIXED_NOREPLACE":
        assert got.raised is None, f"{where}: {got.raised!r}"
        assert got.calls["munmap"] == ref.calls["munmap"] + 1, where
        assert got.calls["mmap"] == ref.calls["mmap"] + 1, where
        _assert_same_end(got, ref, where)
        assert env.rsv.holes == []
        return
    if recovery == "less headroom":
        assert got.raised is None, f"{where}: {got.raised!r}"
        assert got.made is not None and ref.made is not None
        size, max_size = ref.made[0], ref.made[1]
        assert max_size == size + DEFAULT_HEADROOM, where
        assert got.made[1] == size + DEFAULT_HEADROOM // 2, f"{where}: {got.made}"
        assert got.env_state == ref.env_state
        return
    assert recovery is None
    exc = got.raised
    assert exc is not None, f"{where}: the failure was swallowed"
    assert isinstance(exc, OSError) and not isinstance(exc, PmemError), f"{where}: {exc!r}"
    assert exc.errno == err, f"{where}: {exc!r}"
    assert got.made is None
    # Nothing changed: the library's state, the kernel's view, the placeholders elsewhere.
    assert got.env_state == before[0], where
    assert got.kernel == before[1], where
    assert _placeholders() == before[2], f"{where}: a placeholder leaked"
    assert got.file_pattern_ok, where
    if not env.rsv.closed:
        assert_matches_kernel(env.rsv)
    # A failed map is followed by the mend: one MAP_FIXED_NOREPLACE mmap (which gets EEXIST).
    if op.name.startswith("map_") and sc == "mmap":
        assert got.calls["mmap"] == ref.calls["mmap"] + 1, where


# -- chained failures: every call failing from some position on ---------------------------------

FAILING = (errno.ENOMEM, errno.EAGAIN, errno.EIO)


@pytest.mark.parametrize("err", FAILING, ids=errno.errorcode.get)
def test_failed_map_whose_mend_fails_too(
    err: int, tmp_path: Path, quiet: tuple[int, int], fd_guard: None
) -> None:
    """The map fails and so does the MAP_FIXED_NOREPLACE mend: the library then reads
    /proc/self/maps, finds the placeholder intact and notes no hole."""
    q, q2 = quiet
    path = tmp_path / "file"
    path.write_bytes(os.urandom(16 * P))
    fd = os.open(path, os.O_RDWR)
    try:
        for op in (OPS[4], OPS[6], OPS[7]):  # map_file(path), map_file(fd), map_anonymous
            with environment(q, q2, path, fd) as env:
                before = (state(env.rsv), kernel_view(q, q + MAX))
                with inject("mmap", errno=err, times=100) as inj, pytest.raises(OSError) as info:
                    op.run(env)
                TALLY["faults injected"] += inj.fired
                assert info.value.errno == err and not isinstance(info.value, PmemError)
                assert inj.fired == 2, "the map and its mend"
                assert (state(env.rsv), kernel_view(q, q + MAX)) == before
                assert env.rsv.holes == []
    finally:
        os.close(fd)


@pytest.mark.parametrize("err", FAILING, ids=errno.errorcode.get)
def test_unmap_whose_every_mmap_fails(
    err: int, tmp_path: Path, quiet: tuple[int, int], fd_guard: None
) -> None:
    """ENOMEM on the overlay takes the VMA-limit path: munmap, then a MAP_FIXED_NOREPLACE
    placeholder. When that fails too the range is a hole: the unmap succeeds with a
    RuntimeWarning, ``holes`` names the range, nothing can be mapped there, and the next
    extend (or close) takes it back. Any other errno fails the unmap with nothing changed."""
    q, q2 = quiet
    path = tmp_path / "file"
    path.write_bytes(os.urandom(16 * P))
    fd = os.open(path, os.O_RDWR)
    try:
        with environment(q, q2, path, fd) as env:
            rsv, m = env.rsv, env.m_anon
            before = (state(rsv), kernel_view(q, q + MAX))
            if err != errno.ENOMEM:
                with inject("mmap", errno=err, times=100) as inj, pytest.raises(OSError) as info:
                    m.unmap()
                assert info.value.errno == err and inj.fired == 1
                assert (state(rsv), kernel_view(q, q + MAX)) == before
                assert bytes(m.view()[:7]) == b"aiopmem"
                return
            with (
                inject("mmap", errno=err, times=100) as inj,
                pytest.warns(RuntimeWarning, match="could not be re-reserved"),
            ):
                m.unmap()
            TALLY["faults injected"] += inj.fired
            assert inj.fired == 2, "the overlay and the placeholder after munmap"
            assert m.closed and rsv.find(16 * P) is None and m not in rsv.mappings()
            assert rsv.holes == [(16 * P, 18 * P)]
            assert kernel.is_free(q + 16 * P, q + 18 * P)
            fast_matches_kernel(rsv)  # (kernel.assert_matches_kernel refuses any hole)
            with pytest.raises(MappingExistsError):
                rsv.map_anonymous(17 * P, P)
            # While the hole cannot be taken back, it counts as occupied.
            with (
                inject("mmap", errno=err, times=100),
                pytest.raises(ReservationNotEmptyError),
            ):
                rsv.shrink(12 * P, SIZE - 12 * P)
            assert rsv.holes == [(16 * P, 18 * P)]
            rsv.extend(P)  # repairs the hole first
            assert rsv.holes == []
            assert_matches_kernel(rsv)
            rsv.map_anonymous(16 * P, 2 * P).unmap()
    finally:
        os.close(fd)


@pytest.mark.parametrize("sc", ["munmap", "mmap"])
@pytest.mark.parametrize("err", ERRNOS, ids=errno.errorcode.get)
def test_faults_in_the_vma_limit_path_of_unmap(
    sc: str, err: int, tmp_path: Path, quiet: tuple[int, int], fd_guard: None
) -> None:
    """The overlay gets ENOMEM (as at the VMA limit); then the munmap, or the placeholder laid
    after it, fails too."""
    q, q2 = quiet
    path = tmp_path / "file"
    path.write_bytes(os.urandom(16 * P))
    fd = os.open(path, os.O_RDWR)
    unmap = OPS[8]
    try:
        with environment(q, q2, path, fd) as env:
            ref, _ = observe_run(unmap, env, None)
        with environment(q, q2, path, fd) as env:
            before = (state(env.rsv), kernel_view(q, q + MAX))
            # For mmap, skip the overlay (the outer ENOMEM takes it): fail the placeholder.
            after = 1 if sc == "mmap" else 0
            if sc == "mmap" and err not in (errno.EINTR,):
                with pytest.warns(RuntimeWarning, match="could not be re-reserved"):
                    got, fired = observe_run(
                        unmap, env, (sc, err, after, 1), outer=("mmap", errno.ENOMEM)
                    )
                assert fired == 1 and got.raised is None
                assert env.m_anon.closed and env.rsv.holes == [(16 * P, 18 * P)]
                assert kernel.is_free(q + 16 * P, q + 18 * P)
                fast_matches_kernel(env.rsv)
                return
            got, fired = observe_run(unmap, env, (sc, err, after, 1), outer=("mmap", errno.ENOMEM))
            assert fired == 1
            if err == errno.EINTR:
                assert got.raised is None
                _assert_same_end(got, ref, "EINTR")
                assert env.rsv.holes == []
                return
            assert isinstance(got.raised, OSError) and got.raised.errno == err
            assert not isinstance(got.raised, PmemError)
            assert (got.env_state, got.kernel[:]) == (before[0], got.kernel)
            assert (state(env.rsv), kernel_view(q, q + MAX)) == before
            assert bytes(env.m_anon.view()[:7]) == b"aiopmem"
    finally:
        os.close(fd)


def test_reserve_settles_for_less_headroom() -> None:
    """Without max_size, each ENOMEM halves the default headroom, down to none; the reserve
    fails only when even the bare size cannot be had."""
    for k in range(21):
        with inject("mmap", errno=errno.ENOMEM, times=k) as inj:
            if k == 20:
                with pytest.raises(OSError) as info:
                    apis.reserve(16 * P)
                assert info.value.errno == errno.ENOMEM and inj.fired == 20
                continue
            rsv = apis.reserve(16 * P)
        TALLY["faults injected"] += inj.fired
        try:
            assert inj.fired == k
            headroom = DEFAULT_HEADROOM >> k if k < 19 else 0
            assert rsv.max_size == 16 * P + headroom, k
            assert_matches_kernel(rsv)
        finally:
            rsv.close()


def test_reserve_at_address_settles_for_less_headroom(quiet: tuple[int, int]) -> None:
    """At a fixed address the headroom is taken behind the reservation, halving on every
    refusal down to none: such a reservation never fails because of its headroom."""
    _, q2 = quiet
    for k in (1, 2, 5, 19, 40):
        with inject("mmap", errno=errno.ENOMEM, after=1, times=k) as inj:
            rsv = apis.reserve(16 * P, address=q2)
        TALLY["faults injected"] += inj.fired
        try:
            assert inj.fired == min(k, 19)
            headroom = DEFAULT_HEADROOM >> k if k < 19 else 0
            assert (rsv.address, rsv.max_size) == (q2, 16 * P + headroom), k
            assert_matches_kernel(rsv)
        finally:
            rsv.close()
        assert kernel.is_free(q2, q2 + 16 * P + DEFAULT_HEADROOM)
