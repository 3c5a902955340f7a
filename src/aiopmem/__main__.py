"""``python -m aiopmem``: the demo (``demo``) and the check of a log it left behind
(``verify``). See ``python -m aiopmem demo --help``."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path

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
    from ._demo import DemoConfig

    defaults = DemoConfig()
    top = argparse.ArgumentParser(
        prog="python -m aiopmem",
        description="aiopmem: virtual-memory reservations for async Python.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="concurrent tasks write a growable, persistent log; it is then verified",
        description=(
            "Concurrent tasks append records to a log kept in fixed-size chunk files mapped "
            "back to back into one reservation, which extend()s by a chunk when the log needs "
            "room. The chunks are then persisted, mapped again read-only and every record "
            "is verified. Exit status 0 if it verified, 1 if not."
        ),
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
        description="Map the chunk files read-only and check every record. Exit status 0 if "
        "the log verified, 1 if not.",
    )
    verify.add_argument("dir", type=Path, help="the directory given to demo --dir")
    _add_backend(verify)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m aiopmem`` with ``argv``; returns the exit status."""
    from ._demo import DemoConfig, run_demo, run_verify

    args = parser().parse_args(argv)
    for module, wanted in (("trio", args.backend == "trio"), ("uvloop", args.uvloop)):
        if wanted and importlib.util.find_spec(module) is None:
            print(
                f"python -m aiopmem: {module} is not installed (pip install 'aiopmem[{module}]')",
                file=sys.stderr,
            )
            return 2
    if args.uvloop and args.backend != "asyncio":
        print("python -m aiopmem: --uvloop goes with --backend asyncio", file=sys.stderr)
        return 2
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
        return 2
    try:
        return run_demo(config)
    except FileExistsError as exc:
        print(f"python -m aiopmem demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
