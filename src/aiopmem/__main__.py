"""``python -m aiopmem``: the demo (``demo``) and the check of a log it left behind
(``verify``). See ``python -m aiopmem demo --help``."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

#: Exit statuses, documented in --help.
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
_STATUSES = (
    "exit status: 0 the log verified (an interrupted log verifies up to its last commit), "
    "1 it did not, 2 bad options, 130 interrupted (Ctrl-C)"
)

_SIZE = re.compile(r"(?i)^\s*(\d+)\s*(k|m|g|kib|mib|gib|kb|mb|gb)?\s*$")
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(text: str) -> int:
    """A byte count: ``4194304``, ``4M``, ``4MiB``, ``64k`` (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64k, 4MiB)")
    return int(match[1]) * _UNIT[(match[2] or "")[:1].lower()]


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop anyio runs on (default: asyncio)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="asyncio with uvloop's event loop (if installed)"
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m aiopmem``."""
    from . import __version__
    from ._demo import DemoConfig

    defaults = DemoConfig()
    top = argparse.ArgumentParser(
        prog="python -m aiopmem",
        description="aiopmem: virtual-memory reservations for async Python.",
        epilog=_STATUSES,
    )
    top.add_argument("--version", action="version", version=f"aiopmem {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="concurrent tasks write a growable, persistent log; it is then verified",
        description=(
            "Concurrent tasks append records to a log kept in fixed-size chunk files mapped "
            "back to back into one reservation, which extend()s by a chunk when the log needs "
            "room; a committer persists the records written so far, then the header that "
            "counts them, so a run killed or interrupted at any moment leaves a log that "
            "verifies up to its last commit. The chunks are then mapped again read-only and "
            "every record is verified."
        ),
        epilog=_STATUSES,
    )
    _add_backend(demo)
    demo.add_argument(
        "--tasks", type=int, default=defaults.tasks, help="concurrent writer tasks (default: 8)"
    )
    demo.add_argument(
        "--records",
        type=int,
        default=defaults.records,
        help=f"records in all (default: {defaults.records:,})",
    )
    demo.add_argument(
        "--record-size",
        type=size,
        default=defaults.record_size,
        help=f"bytes per record, its 24-byte header included (default: {defaults.record_size})",
    )
    demo.add_argument(
        "--chunk-size",
        type=size,
        default=defaults.chunk_size,
        help="bytes per chunk file, a multiple of the page size (default: 4MiB)",
    )
    demo.add_argument(
        "--batch",
        type=int,
        default=defaults.batch,
        help=f"records a task claims and writes at once (default: {defaults.batch})",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep the chunk files in this directory (default: a temporary one, removed)",
    )
    demo.add_argument("--no-progress", action="store_true", help="show no progress display")
    verify = commands.add_parser(
        "verify",
        help="verify a log the demo left in a directory (demo --dir)",
        description="Map the chunk files read-only and check every committed record (a log "
        "whose run was interrupted is checked up to its last commit).",
        epilog=_STATUSES,
    )
    verify.add_argument("dir", type=Path, help="the directory given to demo --dir")
    _add_backend(verify)
    return top


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or an exception group of nothing else (trio and
    anyio task groups wrap what their tasks raise). On Python 3.10 asyncio's runner reports
    Ctrl-C as the CancelledError of the main task (it cannot uncancel it, 3.11+ does): one
    escaping the whole run is that."""
    import asyncio

    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return True
    inner: tuple[BaseException, ...] = getattr(exc, "exceptions", ())
    return bool(inner) and all(map(_interrupted, inner))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m aiopmem`` with ``argv``; returns the exit status.

    Ctrl-C ends it with status 130 and one line on stderr, on every backend."""
    args = parser().parse_args(argv)
    # A Ctrl-C right when tasks or calls are starting leaves coroutines (and Openings) that
    # never ran; the interpreter warns about each when it collects them, which can be while the
    # interrupted run unwinds, before the line below is printed. That line says it all.
    warnings.filterwarnings("ignore", ".* was never awaited", RuntimeWarning)
    try:
        return _run(args)
    except BaseException as exc:
        if not _interrupted(exc):
            raise
    where = getattr(args, "dir", None)
    kept = f": the log in {where} keeps every committed record" if where else ""
    print(f"python -m aiopmem {args.command}: interrupted{kept}", file=sys.stderr)
    return INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    from ._demo import DemoConfig, run_demo, run_verify

    for module, wanted in (("trio", args.backend == "trio"), ("uvloop", args.uvloop)):
        if wanted and importlib.util.find_spec(module) is None:
            print(
                f"python -m aiopmem: {module} is not installed (pip install 'aiopmem[{module}]')",
                file=sys.stderr,
            )
            return USAGE
    if args.uvloop and args.backend != "asyncio":
        print("python -m aiopmem: --uvloop goes with --backend asyncio", file=sys.stderr)
        return USAGE
    if args.command == "verify":
        return run_verify(args.dir, args.backend, args.uvloop)
    config = DemoConfig(
        tasks=args.tasks,
        records=args.records,
        record_size=args.record_size,
        chunk_size=args.chunk_size,
        batch=args.batch,
        directory=args.dir,
        backend=args.backend,
        uvloop=args.uvloop,
        progress=not args.no_progress,
    )
    try:
        config.check()
    except ValueError as exc:
        print(f"python -m aiopmem demo: {exc}", file=sys.stderr)
        return USAGE
    try:
        return run_demo(config)
    except FileExistsError as exc:
        print(f"python -m aiopmem demo: {exc}", file=sys.stderr)
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
