"""Every script in examples/ runs as a user would run it: ``python examples/X.py``, no
arguments, exit status 0, and it leaves nothing behind in the temporary directory."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Examples that need an optional dependency (an extra of the package).
NEEDS = {
    "trio_basics.py": "trio",
    "numpy_over_files.py": "numpy",
    "growing_array.py": "numpy",
}


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} >= {
        "asyncio_basics.py",
        "trio_basics.py",
        "sync_threads.py",
        "numpy_over_files.py",
        "growing_array.py",
        "huge_pages.py",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(name: str, tmp_path: Path) -> None:
    needed = NEEDS.get(name)
    if needed is not None and importlib.util.find_spec(needed) is None:
        pytest.skip(f"needs {needed}")
    # A private temporary directory, to see that the example cleans up after itself.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith(name.removesuffix(".py") + ":") and last.endswith("OK"), proc.stdout
    assert list(tmp_path.iterdir()) == [], "the example left files behind"


README = EXAMPLES.parent / "README.md"


def _readme_blocks() -> list[str]:
    """The ```python blocks of the README, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in README.read_text().splitlines():
        if current is None:
            if line.strip() == "```python":
                current = []
        elif line.strip() == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line)
    return blocks


def test_the_readme_has_python_blocks() -> None:
    assert _readme_blocks(), "no ```python block found in README.md"


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_block_runs_as_written_in_an_empty_directory(index: int, tmp_path: Path) -> None:
    """A user copies the README's code into a file and runs it where nothing else is."""
    script = tmp_path / "readme_example.py"
    script.write_text(_readme_blocks()[index])
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr  # not even a warning
    if "describe()" in _readme_blocks()[index]:  # the picture names every file it maps
        for name in ("a.bin", "b.bin", "c.bin"):
            assert name in proc.stdout, proc.stdout
