"""The package as users get it: an sdist and a wheel build, the wheel installs into a fresh
virtual environment, and the examples run against that install (not this checkout).

Long profile (AIOPMEM_LONG=1): it builds the C parts twice and installs from the package
index, about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.long
def test_wheel_installs_into_a_fresh_venv_and_runs_the_examples(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    [sdist] = dist.glob("aiopmem-*.tar.gz")
    [wheel] = dist.glob("aiopmem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("aiopmem/py.typed", "aiopmem/_ffi/_core.pyi", "aiopmem/sync.py"):
        assert needed in names, needed
    assert any(n.startswith("aiopmem/_ffi/_lib") and n.endswith(".so") for n in names)
    assert any(n.startswith("aiopmem/_ffi/_core") and n.endswith(".so") for n in names)
    assert sdist.stat().st_size > 0

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "--quiet", f"{wheel}[trio,numpy]")
    # Run from a directory where the checkout is not importable: the installed copy is used.
    where = run(py, "-c", "import aiopmem, sys; print(aiopmem.__file__)", cwd=tmp_path)
    assert str(venv) in where and str(ROOT) not in where
    for example in sorted((ROOT / "examples").glob("*.py")):
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        done = subprocess.run(
            [str(py), str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{example.name}\n{done.stdout}\n{done.stderr}"


# -- metadata (quick) ------------------------------------------------------------------------


def test_the_version_lives_in_one_place() -> None:
    import importlib.metadata

    import aiopmem

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("aiopmem") == aiopmem.__version__


def test_metadata_has_no_placeholder_and_names_every_python() -> None:
    import importlib.metadata

    meta = importlib.metadata.metadata("aiopmem")
    # (str(meta) refolds the headers, which Python 3.13 refuses for a multi-line description)
    text = repr(meta.json)
    assert "example.invalid" not in text and "example.com" not in text
    for url in meta.get_all("Project-URL") or []:
        assert "invalid" not in url
    classifiers = set(meta.get_all("Classifier") or [])
    assert meta["Requires-Python"] == ">=3.10"
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers


def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    """On a fresh clone, `make demo` installs the package and its progress extra, not the
    test and lint tools (`make -n`: what it would run)."""
    out = run("make", "-n", "demo", f"VENV={tmp_path / 'venv'}", cwd=ROOT)
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert installs and all("'.[progress]'" in line for line in installs), out
