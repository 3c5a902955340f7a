"""``python -m aiopmem demo``: the log verifies on every backend, and the verifier catches a
damaged log (each kind of damage, with and without numpy)."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import anyio
import pytest

from aiopmem.__main__ import main
from aiopmem._demo import (
    LOG_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    Progress,
    Verification,
    chunk_paths,
    verify_directory,
)

RECORDS = 3000
RECORD_SIZE = 200
CHUNK = 64 << 10
TASKS = 5
SMALL = [
    "--records", str(RECORDS),
    "--record-size", str(RECORD_SIZE),
    "--chunk-size", "64KiB",
    "--tasks", str(TASKS),
    "--batch", "16",
    "--no-progress",
]  # fmt: skip

BACKENDS = [
    pytest.param(["--backend", "asyncio"], id="asyncio"),
    pytest.param(["--backend", "asyncio", "--uvloop"], id="uvloop"),
    pytest.param(["--backend", "trio"], id="trio"),
]


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(args)
    return status, capsys.readouterr().out


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log written once by the demo; tests damage copies of it."""
    directory = tmp_path_factory.mktemp("log") / "log"
    assert main(["demo", *SMALL, "--dir", str(directory)]) == 0
    return directory


def copy_of(log_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    for path in chunk_paths(log_dir):
        (target / path.name).write_bytes(path.read_bytes())
    return target


def verify(directory: Path, use_numpy: bool | None = None) -> Verification:
    return anyio.run(partial(verify_directory, directory, use_numpy=use_numpy))


def flip(directory: Path, offset: int, mask: int = 0x40) -> None:
    """Flip bits of the byte at ``offset`` of the log (the chunks back to back)."""
    index, at = divmod(offset, CHUNK)
    path = chunk_paths(directory)[index]
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(data)


def record_at(index: int) -> int:
    return LOG_HEADER_SIZE + index * RECORD_SIZE


def read_log(directory: Path) -> bytearray:
    return bytearray(b"".join(p.read_bytes() for p in chunk_paths(directory)))


def write_log(directory: Path, data: bytes | bytearray) -> None:
    for index, path in enumerate(chunk_paths(directory)):
        path.write_bytes(data[index * CHUNK : (index + 1) * CHUNK])


# -- the demo runs and verifies --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_verifies(
    backend: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--uvloop" in backend:
        pytest.importorskip("uvloop")
    if "trio" in backend:
        pytest.importorskip("trio")
    directory = tmp_path / "log"
    status, out = run_main(["demo", *SMALL, *backend, "--dir", str(directory)], capsys)
    assert status == 0, out
    assert "OK: the log verified" in out
    assert "sequence numbers are complete" in out
    chunks = -(-(LOG_HEADER_SIZE + RECORDS * RECORD_SIZE) // CHUNK)
    assert len(chunk_paths(directory)) == chunks
    assert all(p.stat().st_size == CHUNK for p in chunk_paths(directory))
    assert f"by {chunks - 1} extend()s" in out and "MOVED" not in out
    # The layout picture of the reopened log: one row per chunk, in order.
    rows = [line.split() for line in out.splitlines() if line.endswith(".log")]
    assert [Path(r[-1]).name for r in rows] == [p.name for p in chunk_paths(directory)]
    assert [int(r[1], 16) for r in rows] == [i * CHUNK for i in range(chunks)]
    result = verify(directory)
    assert result.ok and result.records == RECORDS and result.tasks == TASKS
    assert result.straddling > 0  # records do cross chunk boundaries
    status, out = run_main(["verify", str(directory), *backend], capsys)
    assert status == 0 and "OK: the log verified" in out


def test_temporary_directory_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status, out = run_main(["demo", *SMALL], capsys)
    assert status == 0, out
    assert list(tmp_path.iterdir()) == []


def test_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aiopmem", "demo", *SMALL, "--dir", str(tmp_path / "log")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: the log verified" in proc.stdout


def test_numpy_and_plain_checkers_agree(log_dir: Path) -> None:
    pytest.importorskip("numpy")
    with_numpy, plain = verify(log_dir, use_numpy=True), verify(log_dir, use_numpy=False)
    assert with_numpy.used_numpy and not plain.used_numpy
    assert with_numpy.ok and plain.ok
    assert (with_numpy.records, with_numpy.straddling) == (plain.records, plain.straddling)


# -- damage is detected ----------------------------------------------------------------------

CHECKERS = [
    pytest.param(True, id="numpy"),
    pytest.param(False, id="plain"),
]


@pytest.mark.parametrize("use_numpy", CHECKERS)
@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        pytest.param(record_at(100) + RECORD_HEADER_SIZE + 50, "crc32", id="payload"),
        pytest.param(record_at(7) + 12, "crc32", id="task-id"),
        pytest.param(record_at(7) + 16, "crc32", id="sequence-number"),
        pytest.param(record_at(7) + 8, "length", id="length"),
        pytest.param(record_at(2999) + 1, "bad magic", id="magic-of-the-last-record"),
        # The record that straddles the first chunk boundary, on both sides of it.
        pytest.param(CHUNK - 1, "crc32", id="straddling-before"),
        pytest.param(CHUNK, "crc32", id="straddling-after"),
        pytest.param(record_at(RECORDS) + 5, "not zero", id="past-the-end"),
        pytest.param(3, "bad log header", id="log-header"),
    ],
)
def test_a_flipped_byte_is_detected(
    log_dir: Path, tmp_path: Path, offset: int, expected: str, use_numpy: bool
) -> None:
    if use_numpy:
        pytest.importorskip("numpy")
    directory = copy_of(log_dir, tmp_path)
    assert verify(directory, use_numpy).ok
    flip(directory, offset)
    result = verify(directory, use_numpy)
    assert not result.ok
    assert any(expected in e for e in result.errors), result.errors


@pytest.mark.parametrize("use_numpy", CHECKERS)
def test_swapped_records_break_the_sequence(log_dir: Path, tmp_path: Path, use_numpy: bool) -> None:
    """Two intact records of one task in the wrong order: every crc matches, the sequence
    check catches it."""
    if use_numpy:
        pytest.importorskip("numpy")
    directory = copy_of(log_dir, tmp_path)
    data = read_log(directory)
    task_of: dict[int, list[int]] = {}
    for index in range(RECORDS):
        task = int.from_bytes(data[record_at(index) + 12 : record_at(index) + 16], "little")
        task_of.setdefault(task, []).append(index)
    first, second = task_of[2][10], task_of[2][11]
    a = data[record_at(first) : record_at(first) + RECORD_SIZE]
    b = data[record_at(second) : record_at(second) + RECORD_SIZE]
    data[record_at(first) : record_at(first) + RECORD_SIZE] = b
    data[record_at(second) : record_at(second) + RECORD_SIZE] = a
    write_log(directory, data)
    result = verify(directory, use_numpy)
    assert not result.ok
    assert all("task 2:" in e for e in result.errors), result.errors


@pytest.mark.parametrize("use_numpy", CHECKERS)
def test_a_duplicated_record_is_detected(log_dir: Path, tmp_path: Path, use_numpy: bool) -> None:
    """A record overwritten by an intact copy of another one (a lost write)."""
    if use_numpy:
        pytest.importorskip("numpy")
    directory = copy_of(log_dir, tmp_path)
    data = read_log(directory)
    data[record_at(500) : record_at(501)] = data[record_at(400) : record_at(401)]
    write_log(directory, data)
    result = verify(directory, use_numpy)
    assert not result.ok and result.errors


def test_a_missing_chunk_is_detected(log_dir: Path, tmp_path: Path) -> None:
    directory = copy_of(log_dir, tmp_path)
    chunk_paths(directory)[-1].unlink()
    result = verify(directory)
    assert not result.ok and "more than the chunks can hold" in result.errors[0]


def test_a_truncated_chunk_is_detected(log_dir: Path, tmp_path: Path) -> None:
    directory = copy_of(log_dir, tmp_path)
    os.truncate(chunk_paths(directory)[3], CHUNK // 2)
    assert not verify(directory).ok


def test_verify_command_exits_non_zero(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = copy_of(log_dir, tmp_path)
    flip(directory, record_at(1234) + 100)
    status, out = run_main(["verify", str(directory)], capsys)
    assert status == 1
    assert "FAILED" in out and "record 1234" in out
    status, out = run_main(["verify", str(tmp_path / "empty")], capsys)
    assert status == 1 and "no chunk files" in out


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ["--chunk-size", "1000"],
        ["--record-size", "10"],
        ["--record-size", "128KiB"],
        ["--tasks", "0"],
        ["--batch", "0"],
    ],
)
def test_bad_options(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *SMALL, *bad]) == 2
    assert "python -m aiopmem demo:" in capsys.readouterr().err


def test_a_directory_holding_a_log_is_refused(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = copy_of(log_dir, tmp_path)
    before = read_log(directory)
    assert main(["demo", *SMALL, "--dir", str(directory)]) == 2
    assert "already holds a log" in capsys.readouterr().err
    assert read_log(directory) == before


def test_no_records_and_one_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_main(["demo", *SMALL, "--records", "0", "--dir", str(tmp_path / "a")], capsys)
    assert status == 0, out
    status, out = run_main(["demo", *SMALL, "--tasks", "1", "--dir", str(tmp_path / "b")], capsys)
    assert status == 0, out


# -- the progress display -------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def _show(progress: Progress, steps: int) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.show)
        for _ in range(steps):
            await anyio.sleep(0.02)
            progress.advance(10)
        tg.cancel_scope.cancel()


def test_progress_lines_without_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(100, True, stream=stream, interval=0.01)
    anyio.run(_show, progress, 10)
    assert "records written" in stream.getvalue()


def test_progress_bar_on_a_terminal() -> None:
    pytest.importorskip("tqdm")
    stream = Terminal()
    anyio.run(_show, Progress(100, True, stream=stream), 40)  # longer than tqdm's delay
    assert "rec" in stream.getvalue()


def test_no_progress() -> None:
    stream = Terminal()
    anyio.run(_show, Progress(100, False, stream=stream, interval=0.01), 5)
    assert stream.getvalue() == ""


# -- crash consistency: a run stopped at any moment leaves a log that verifies -----------------


def _committed(directory: Path) -> int | None:
    """The committed count in the log header, read through the file (None: no header yet)."""
    try:
        with open(directory / "chunk-00000.log", "rb") as f:
            header = f.read(LOG_HEADER_SIZE)
    except FileNotFoundError:
        return None
    if len(header) < LOG_HEADER_SIZE or not header.startswith(b"AIOPMLOG"):
        return None
    return int.from_bytes(header[32:40], "little")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_run_stopped_at_a_random_moment_keeps_every_committed_record(
    sig: signal.Signals, backend: str, tmp_path: Path
) -> None:
    """SIGKILL (nothing runs after it) or SIGINT (Ctrl-C) at a random moment of a --dir run:
    the log then verifies, and holds at least every record committed before the signal. Ctrl-C
    ends the run with status 130 and one line on stderr."""
    rng = random.Random(f"{sig}-{backend}")
    for trial in range(3):
        directory = tmp_path / f"log{trial}"
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "aiopmem", "demo", "--backend", backend,
                "--records", "2000000", "--record-size", "256", "--chunk-size", "1MiB",
                "--no-progress", "--dir", str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while _committed(directory) is None:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the log never appeared"
                time.sleep(0.005)
            # The first trial right at the start (tasks still starting), the others anywhere.
            time.sleep(rng.uniform(0, 0.02 if trial == 0 else 0.6))
            before = _committed(directory)
            assert before is not None
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sig == signal.SIGINT:
            assert proc.returncode == 130, err
            assert err.count("\n") == 1 and "interrupted" in err, err
            assert "Traceback" not in err and "ExceptionGroup" not in err
        else:
            assert proc.returncode == -signal.SIGKILL
        result = verify(directory)
        assert result.ok, result.errors
        assert not result.complete and result.planned == 2_000_000
        assert result.records >= before, (result.records, before)


@pytest.mark.parametrize("command", [[], ["demo"], ["verify"]])
def test_help_documents_the_exit_statuses(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for status in ("0 the log verified", "1 it did not", "2 bad options", "130 interrupted"):
        assert status in " ".join(out.split()), out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import aiopmem

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"aiopmem {aiopmem.__version__}"
