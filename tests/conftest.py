from __future__ import annotations

import faulthandler
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import apis
import reliability
from kernel import open_fds
from sizes import MiB

S = 16 * MiB  # the file size of libpmem2's reservation test catalogue


def make_file(path: Path, size: int, fill: bytes | None = None) -> Path:
    """A file of ``size`` bytes: holey (sparse) unless ``fill`` is given."""
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write((fill * (size // len(fill) + 1))[:size])
    return path


@pytest.fixture
def holey_file(tmp_path: Path) -> Path:
    """libpmem2's test file: 16 MiB, holey."""
    return make_file(tmp_path / "testfile", S)


@pytest.fixture
def fd_guard() -> Iterator[None]:
    """Fails the test if it leaves a file descriptor open."""
    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    leaked = open_fds() - before
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in sorted(leaked)
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


# Every async test runs on asyncio, asyncio+uvloop and trio through anyio's pytest plugin.
@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        *(
            []
            if os.environ.get("AIOPMEM_MATRIX")  # see apis.BACKENDS
            else [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
        ),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(params=list(apis.BACKENDS))
def api(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a blocking scenario once on aiopmem.sync and once on the async API per backend
    (see apis.py); scenarios call ``apis.reserve``."""
    with apis.using(request.param) as name:
        yield name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long profiles (``@pytest.mark.long``) run only with AIOPMEM_LONG=1 or ``-m long``."""
    if reliability.LONG or "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long profile: set AIOPMEM_LONG=1 or pass -m long")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the reliability suite exercised in this run (operations, faults, inputs...)."""
    if reliability.TALLY:
        terminalreporter.section("reliability tally")
        for key, count in sorted(reliability.TALLY.items()):
            terminalreporter.write_line(f"{key:>40}: {count:,}")


@pytest.fixture(autouse=True)
def _no_stack_dump_in_long_profiles(request: pytest.FixtureRequest) -> None:
    """The long profiles run past ``faulthandler_timeout``; the watchdog's dump of every
    thread's stack, taken while the threads run, can itself crash the interpreter (it did, in
    hypothesis' frames). pytest-timeout still bounds them (``reliability.LONG_TIMEOUT``)."""
    if request.node.get_closest_marker("long") is not None:
        faulthandler.cancel_dump_traceback_later()
