"""The layers import in one direction (see STYLE.md): the compiled modules have one importer,
the core and the sync API never load an async framework, and the binding itself loads and
round-trips."""

from __future__ import annotations

import ast
import importlib.resources
import json
import mmap
import os
import platform
import subprocess
import sys
from errno import EBADF, EINVAL
from pathlib import Path
from typing import Any

import pytest

import aiopmem
from aiopmem import _ffi

PACKAGE_DIR = Path(aiopmem.__file__).resolve().parent
SRC_ROOT = PACKAGE_DIR.parent
COMPILED = ("aiopmem._ffi._lib", "aiopmem._ffi._core")
ASYNC_FRAMEWORKS = frozenset({"anyio", "trio", "sniffio"})


# -- import graph, read with ast -------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> set[str]:
    """Every absolute module name the source may load: ``import a.b``, ``from a import b``
    (both ``a`` and ``a.b``, since ``b`` may be a submodule), relative forms resolved against
    ``module``, and ``importlib.import_module``/``__import__`` of a literal name. Imports in
    function bodies and ``if TYPE_CHECKING:`` blocks count too."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                assert node.level - 1 < len(base_parts), f"{module}: import beyond top level"
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                assert node.module is not None
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"__import__", "import_module"}
                )
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.add(node.args[0].value)
    return found


def modules_of(path: Path) -> set[str]:
    return imported_modules(
        path.read_text(), module_name(path), is_package=path.name == "__init__.py"
    )


def names(found: set[str], forbidden: tuple[str, ...]) -> set[str]:
    """The members of ``found`` that are one of ``forbidden`` or inside it."""
    return {m for m in found if any(m == f or m.startswith(f + ".") for f in forbidden)}


def source_files() -> list[Path]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    # The walk found the package, not an empty or foreign directory.
    assert PACKAGE_DIR / "_core" / "_placement.py" in files
    assert PACKAGE_DIR / "sync.py" in files
    return files


def test_import_reader_sees_every_form() -> None:
    """The checker below is only as good as this reader: every way of naming the compiled
    module from inside the package is caught, and innocent imports are not."""
    src = """
from .._ffi._lib import lib
from .._ffi import _core, PAGE_SIZE
import aiopmem._ffi._lib as raw
from . import _align

def later():
    import importlib
    importlib.import_module("aiopmem._ffi._core")
    from anyio import to_thread
"""
    found = imported_modules(src, "aiopmem._core._x", is_package=False)
    assert names(found, COMPILED) == {
        "aiopmem._ffi._lib",
        "aiopmem._ffi._lib.lib",
        "aiopmem._ffi._core",
    }
    assert "aiopmem._core._align" in found
    assert "aiopmem._ffi.PAGE_SIZE" in found
    assert {m.partition(".")[0] for m in found} & ASYNC_FRAMEWORKS == {"anyio"}
    # Relative imports from a package's __init__ resolve against the package itself.
    assert imported_modules("from ._lib import ffi", "aiopmem._ffi", is_package=True) >= {
        "aiopmem._ffi._lib"
    }


def test_compiled_modules_have_one_importer() -> None:
    offenders = {}
    for path in source_files():
        if module_name(path).startswith("aiopmem._ffi"):
            continue
        if bad := names(modules_of(path), COMPILED):
            offenders[str(path.relative_to(SRC_ROOT))] = sorted(bad)
    assert offenders == {}
    # ... and that one importer is there: the rule is not satisfied by nobody loading them.
    ffi_imports = modules_of(PACKAGE_DIR / "_ffi" / "__init__.py")
    assert names(ffi_imports, COMPILED) >= set(COMPILED)


def test_core_is_synchronous_and_below_the_facade() -> None:
    core = sorted((PACKAGE_DIR / "_core").glob("*.py"))
    assert core
    offenders = {}
    for path in core:
        found = modules_of(path)
        bad = {m for m in found if m.partition(".")[0] in ASYNC_FRAMEWORKS | {"asyncio"}}
        bad |= names(found, ("aiopmem._async", "aiopmem.sync", "aiopmem.testing"))
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_ffi_does_not_import_upwards() -> None:
    for path in sorted((PACKAGE_DIR / "_ffi").glob("*.py")):
        if path.name == "_build.py":  # the cffi build script, not part of the runtime
            continue
        found = modules_of(path)
        assert not names(found, ("aiopmem._core", "aiopmem._async")), path.name
        assert not {m.partition(".")[0] for m in found} & ASYNC_FRAMEWORKS, path.name


# -- what a fresh interpreter loads ---------------------------------------------------------

PROBE = """
import importlib, json, sys
module, frameworks = sys.argv[1], set(sys.argv[2].split(","))
importlib.import_module(module)
print(json.dumps({
    "loaded": module in sys.modules,
    "frameworks": sorted(m for m in sys.modules if m.partition(".")[0] in frameworks),
}))
"""


def probe(module: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module, ",".join(ASYNC_FRAMEWORKS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("module", ["aiopmem.sync", "aiopmem.testing", "aiopmem._core"])
def test_sync_namespaces_do_not_load_an_async_framework(module: str) -> None:
    assert probe(module) == {"loaded": True, "frameworks": []}


def test_probe_sees_an_async_framework() -> None:
    """The probe above would notice: importing anyio itself is reported."""
    result = probe("anyio")
    assert "anyio" in result["frameworks"]


# -- the binding --------------------------------------------------------------------------


def test_page_size_round_trips() -> None:
    assert os.sysconf("SC_PAGESIZE") == _ffi.PAGE_SIZE
    assert mmap.PAGESIZE == _ffi.PAGE_SIZE


def test_constants_come_from_the_system_headers() -> None:
    """The values cffi read from <sys/mman.h> and <fcntl.h> agree with the ones CPython
    compiled into ``mmap`` and ``os`` from the same headers."""
    assert _ffi.PROT_NONE == 0
    assert _ffi.PROT_READ == mmap.PROT_READ
    assert _ffi.PROT_WRITE == mmap.PROT_WRITE
    assert _ffi.PROT_EXEC == mmap.PROT_EXEC
    assert _ffi.MAP_SHARED == mmap.MAP_SHARED
    assert _ffi.MAP_PRIVATE == mmap.MAP_PRIVATE
    assert _ffi.MAP_ANONYMOUS == mmap.MAP_ANONYMOUS
    assert _ffi.O_WRONLY == os.O_WRONLY
    assert _ffi.O_ACCMODE == os.O_ACCMODE
    assert _ffi.O_PATH == os.O_PATH


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the values of <asm-generic/mman-common.h> and <linux/mman.h> as on x86-64",
)
def test_linux_x86_64_constants() -> None:
    assert _ffi.MAP_FIXED == 0x10
    assert _ffi.MAP_NORESERVE == 0x4000
    assert _ffi.MAP_FIXED_NOREPLACE == 0x100000
    assert _ffi.MAP_SHARED_VALIDATE == 0x03
    assert _ffi.MAP_SYNC == 0x80000
    assert _ffi.MS_SYNC == 4


def test_fdcheck_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 12345)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        assert _ffi.fdcheck(fd) == 12345
        assert _ffi.last_dev() == os.fstat(fd).st_dev
    finally:
        os.close(fd)
    assert _ffi.fdcheck(fd) == -EBADF  # closed now
    wronly = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        assert _ffi.fdcheck(wronly) == _ffi.AP_FD_WRONLY
    finally:
        os.close(wronly)
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert _ffi.fdcheck(dirfd) == _ffi.AP_FD_DIR
    finally:
        os.close(dirfd)
    pathfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        assert _ffi.fdcheck(pathfd) == _ffi.AP_FD_PATH
    finally:
        os.close(pathfd)
    r, w = os.pipe()
    try:
        assert _ffi.fdcheck(r) == _ffi.AP_FD_NOTREG
    finally:
        os.close(r)
        os.close(w)


def test_memory_round_trips_and_errno_comes_back() -> None:
    page = _ffi.PAGE_SIZE
    addr = _ffi.mmap_anywhere(
        2 * page, _ffi.PROT_READ | _ffi.PROT_WRITE, _ffi.MAP_PRIVATE | _ffi.MAP_ANONYMOUS
    )
    try:
        assert addr % page == 0
        holders: list[object] = []
        with _ffi.new_view(None, (holders,), addr, 2 * page, False) as view:
            assert len(view) == 2 * page
            assert not view.readonly
            assert bytes(view[:4]) == b"\0\0\0\0"  # fresh anonymous memory is zero-filled
            view[page - 2 : page + 3] = b"hello"
            assert bytes(view[page - 2 : page + 3]) == b"hello"
            assert _ffi.live_views((holders,)) == 1
        assert _ffi.live_views((holders,)) == 0
        assert holders == []  # the dead registration was pruned
        with pytest.raises(OSError) as exc:
            _ffi.munmap(addr + 1, page)  # unaligned: the kernel's EINVAL comes back
        assert exc.value.errno == EINVAL
    finally:
        _ffi.munmap(addr, 2 * page)


# -- packaging ----------------------------------------------------------------------------


def test_py_typed_is_shipped() -> None:
    marker = importlib.resources.files("aiopmem").joinpath("py.typed")
    assert marker.is_file()
    assert (PACKAGE_DIR / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")
    pyproject = SRC_ROOT.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("installed from a wheel: no pyproject.toml next to the sources")
    config = tomllib.loads(pyproject.read_text())
    # In the wheel too, not only in the source tree.
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["aiopmem"]
