"""Junk input to every public function, method and keyword, on the sync API and on the async API
(asyncio, uvloop, trio, through the blocking portal of tests/apis.py).

Every argument in turn gets each of None, True, False, 1.5, nan, inf, "str", b"bytes", -1,
-2**70, 2**70, 2**64 and object() while the others stay valid. The outcome must be one the
contract allows for that kind of argument: ``TypeError`` for a wrong type, a ``PmemError`` for an
integer out of range (``OSError(EINVAL)`` for an aligned reserve address the platform cannot
use, ``FileNotFoundError`` for a path that does not exist), a plain result where the value is
valid (None for an optional argument, any integer for a lookup), and never ``OverflowError``,
never a crash. After each call the reservation's state and the kernel's view of it are as they
were.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import apis
from aiopmem.sync import (
    AddressUnalignedError,
    InvalidFileHandleError,
    NoAccessError,
    PmemError,
    Protection,
    Sharing,
)
from aiopmem.testing import inject
from reliability import TALLY, assert_matches_kernel, kernel_view, state
from sizes import P

SENTINEL = object()
JUNK: list[Any] = [
    None,
    True,
    False,
    1.5,
    float("nan"),
    float("inf"),
    "str",
    b"bytes",
    -1,
    -(2**70),
    2**70,
    2**64,
    SENTINEL,
]
JUNK_IDS = [
    "None",
    "True",
    "False",
    "1.5",
    "nan",
    "inf",
    "str",
    "bytes",
    "-1",
    "-2**70",
    "2**70",
    "2**64",
    "object",
]

pytestmark = pytest.mark.usefixtures("api", "fd_guard")


def is_int(value: Any) -> bool:
    return type(value) is int


# What an argument of each kind may do with a junk value: a set of allowed outcomes, where
# "ok" is a plain return, a class is an exception of that class (or a subclass).
Outcome = Any


def allowed(kind: str, value: Any) -> set[Outcome]:
    if kind == "int":  # a required integer (size, offset, length...)
        return {PmemError} if is_int(value) else {TypeError}
    if kind == "optint":  # an optional integer (None is its default)
        if value is None:
            return {"ok"}
        return {PmemError} if is_int(value) else {TypeError}
    if kind == "lookup":  # an integer argument of find(): never raises for integers
        return {"ok"} if is_int(value) else {TypeError}
    if kind == "address":
        if value is None:
            return {"ok"}
        if not is_int(value):
            return {TypeError}
        if value % P:
            return {AddressUnalignedError}
        return {"EINVAL"}  # aligned, but not an address of this platform
    if kind == "file":
        if isinstance(value, (str, bytes)):
            return {FileNotFoundError}
        if is_int(value):
            return {InvalidFileHandleError}
        return {TypeError}
    if kind in ("mapping", "enum"):
        return {TypeError}
    raise AssertionError(kind)


def outcome_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Outcome, Any]:
    try:
        return "ok", call(*args, **kwargs)
    except Exception as exc:
        return exc, None


def check_outcome(got: Outcome, expected: set[Outcome], where: str) -> None:
    if got == "ok":
        assert "ok" in expected, f"{where}: accepted"
        return
    assert not isinstance(got, OverflowError), f"{where}: {got!r}"
    if isinstance(got, OSError) and not isinstance(got, PmemError) and "EINVAL" in expected:
        assert got.errno == errno.EINVAL, f"{where}: {got!r}"
        return
    classes = [c for c in expected if isinstance(c, type)]
    assert classes and isinstance(got, tuple(classes)), f"{where}: {got!r}, expected {expected}"


def cleanup(result: Any, *existing: Any) -> None:
    """Undo a call that succeeded with a new object."""
    if any(result is obj for obj in existing):
        return
    if isinstance(result, memoryview):
        result.release()
    elif result is not None and hasattr(result, "unmap"):
        result.unmap()
    elif result is not None and hasattr(result, "max_size"):
        result.close()


@pytest.fixture
def junk_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # "str" and b"bytes" as paths must name nothing: run where nothing is.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "file.bin"
    path.write_bytes(b"\xa5" * (4 * P))
    rsv = apis.reserve(16 * P, max_size=32 * P)
    m = rsv.map_file(path, 0, length=2 * P)
    anon = rsv.map_anonymous(4 * P, P)
    yield rsv, m, anon, path
    rsv.close()


def calls(rsv: Any, m: Any, anon: Any, path: Path) -> list[tuple[str, str, Callable[..., Any]]]:
    """(name, kind, call taking the junk value) for every argument of the API."""
    q = 8 * P  # a free offset
    return [
        ("reserve(size)", "int", apis.reserve),
        ("reserve(address=)", "address", lambda v: apis.reserve(P, address=v)),
        ("reserve(max_size=)", "optint", lambda v: apis.reserve(P, max_size=v)),
        ("map_file(file)", "file", lambda v: rsv.map_file(v, q)),
        ("map_file(offset)", "int", lambda v: rsv.map_file(path, v)),
        ("map_file(length=)", "optint", lambda v: rsv.map_file(path, q, length=v)),
        ("map_file(file_offset=)", "int", lambda v: rsv.map_file(path, q, file_offset=v)),
        ("map_file(protection=)", "enum", lambda v: rsv.map_file(path, q, protection=v)),
        ("map_file(sharing=)", "enum", lambda v: rsv.map_file(path, q, sharing=v)),
        ("map_anonymous(offset)", "int", lambda v: rsv.map_anonymous(v, P)),
        ("map_anonymous(length)", "int", lambda v: rsv.map_anonymous(q, v)),
        ("map_anonymous(protection=)", "enum", lambda v: rsv.map_anonymous(q, P, protection=v)),
        ("map_anonymous(sharing=)", "enum", lambda v: rsv.map_anonymous(q, P, sharing=v)),
        ("extend(size)", "int", rsv.extend),
        ("shrink(offset)", "int", lambda v: rsv.shrink(v, P)),
        ("shrink(size)", "int", lambda v: rsv.shrink(15 * P, v)),
        ("Mapping.view(offset)", "int", m.view),
        ("Mapping.view(length)", "optint", lambda v: m.view(0, v)),
        ("Mapping.persist(offset)", "int", m.persist),
        ("Mapping.persist(length)", "optint", lambda v: m.persist(0, v)),
        ("Reservation.view(offset)", "int", rsv.view),
        ("Reservation.view(length)", "optint", lambda v: rsv.view(0, v)),
        ("find(offset)", "lookup", rsv.find),
        ("find(length)", "lookup", lambda v: rsv.find(0, v)),
        ("find_prev(mapping)", "mapping", rsv.find_prev),
        ("find_next(mapping)", "mapping", rsv.find_next),
    ]


#: Where the contract says more than the kind of the argument: ``length=None`` maps to the end
#: of the file, ``Reservation.view(0, None)`` covers placeholders, ...
OVERRIDES: dict[tuple[str, Any], set[Outcome]] = {
    ("map_file(length=)", None): {"ok"},
    ("reserve(max_size=)", None): {"ok"},
    ("reserve(address=)", None): {"ok"},
    ("Mapping.view(length)", None): {"ok"},
    ("Mapping.persist(length)", None): {"ok"},
    ("Reservation.view(length)", None): {NoAccessError},
}


def test_junk_arguments(junk_setup: Any) -> None:
    rsv, m, anon, path = junk_setup
    lo, hi = rsv.address, rsv.address + rsv.max_size
    before = (state(rsv), kernel_view(lo, hi))
    for name, kind, call in calls(rsv, m, anon, path):
        for value, vid in zip(JUNK, JUNK_IDS, strict=True):
            where = f"{name} <- {vid}"
            expected = OVERRIDES.get((name, value), allowed(kind, value))
            got, result = outcome_of(call, value)
            TALLY["junk inputs tried"] += 1
            check_outcome(got, expected, where)
            if name == "find(offset)" and got == "ok":
                assert result is None, f"{where}: {result!r}"  # nothing at any of them
            if name == "find(length)" and got == "ok":
                # from offset 0: the mapping there for a positive length, None otherwise
                assert result is (m if value > 0 else None), f"{where}: {result!r}"
            cleanup(result, m, anon)
            after = (state(rsv), kernel_view(lo, hi))
            assert after == before, f"{where}: the state changed"
    assert_matches_kernel(rsv)


def test_junk_fileno(junk_setup: Any) -> None:
    """Objects whose ``fileno()`` misbehaves."""
    rsv, *_ = junk_setup

    class FileLike:
        def __init__(self, value: Any) -> None:
            self.value = value

        def fileno(self) -> Any:
            if isinstance(self.value, type) and issubclass(self.value, BaseException):
                raise self.value("no descriptor")
            return self.value

    before = state(rsv)
    for value in [*JUNK, ValueError, OSError]:
        if is_int(value):
            expected: set[Outcome] = {InvalidFileHandleError}
        elif value in (ValueError, OSError):
            expected = {InvalidFileHandleError}
        else:
            expected = {TypeError}
        got, _ = outcome_of(rsv.map_file, FileLike(value), 8 * P)
        TALLY["junk inputs tried"] += 1
        check_outcome(got, expected, f"fileno() -> {value!r}")
        assert state(rsv) == before


INJECT_ARGS: list[tuple[str, Callable[[Any], Any]]] = [
    ("syscall", inject),
    ("errno=", lambda v: inject("mmap", errno=v)),
    ("delay=", lambda v: inject("mmap", delay=v)),
    ("after=", lambda v: inject("mmap", after=v)),
    ("times=", lambda v: inject("mmap", times=v)),
]


def _inject_allowed(name: str, value: Any) -> set[Outcome]:
    if name == "syscall":
        return {ValueError} if isinstance(value, str) else {TypeError}
    if name == "errno=":
        if value is None:
            return {"ok"}
        if not is_int(value):
            return {TypeError}
        # an errno is a positive C int
        return {"ok"} if 0 < value < 2**31 else {ValueError}
    if name == "delay=":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return {TypeError}
        if not math.isfinite(value) or value < 0:
            return {ValueError}
        return {"ok"}
    if not is_int(value):
        return {TypeError}
    return {ValueError} if value < 0 else {"ok"}


def test_junk_inject(junk_setup: Any) -> None:
    """``aiopmem.testing.inject``: TypeError or ValueError at construction; an injection it
    accepts must then behave (fail with its errno, or skip, or let the call through)."""
    rsv, *_ = junk_setup
    before = state(rsv)
    for name, make in INJECT_ARGS:
        for value, vid in zip(JUNK, JUNK_IDS, strict=True):
            where = f"inject({name}) <- {vid}"
            got, injection = outcome_of(make, value)
            TALLY["junk inputs tried"] += 1
            expected = _inject_allowed(name, value)
            if got != "ok":
                assert isinstance(got, tuple(c for c in expected if isinstance(c, type))), (
                    f"{where}: {got!r}"
                )
                continue
            assert "ok" in expected, f"{where}: accepted"
            if name == "delay=":
                continue  # accepted delays are real: not worth sleeping for
            # Fire it: the map fails with the injected errno, or goes through.
            with injection:
                res, mapping = outcome_of(lambda: rsv.map_anonymous(8 * P, P))
            if res == "ok":
                mapping.unmap()
            else:
                assert isinstance(res, OSError) and not isinstance(res, PmemError), (
                    f"{where}: fired as {res!r}"
                )
                assert res.errno == value, f"{where}: {res!r}"
            assert state(rsv) == before, where


def test_junk_protection_values(junk_setup: Any) -> None:
    """Protection and Sharing members are the only accepted values: ints and other enums are
    refused with TypeError, as are the flags of the other parameter."""
    rsv, _, _, path = junk_setup
    before = state(rsv)
    value: object
    for value in (3, 1, Sharing.SHARED, "READ", [Protection.READ]):
        got, _ = outcome_of(rsv.map_anonymous, 8 * P, P, protection=value)
        check_outcome(got, {TypeError}, f"protection={value!r}")
    for value in (0, 1, Protection.READ, "SHARED"):
        got, _ = outcome_of(rsv.map_file, path, 8 * P, sharing=value)
        check_outcome(got, {TypeError}, f"sharing={value!r}")
    assert state(rsv) == before
    assert_matches_kernel(rsv)
