"""``python -m benchmarks [--quick] [--only NAME[,NAME]] [--json PATH] [--reps N]``.

Runs the selected figures (all by default) in interleaved rounds, prints the table of
min/median/max per metric and the targets, and writes everything to a JSON file
(``bench-results/bench-<timestamp>.json`` under the repository root by default). The exit
status is 1 if a figure failed to run, 0 otherwise: targets that are not met are reported, not
treated as errors (timings are measurements, not tests).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import faulthandler
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._measure import PROFILES, Context, Figure, Profile, Scratch, Summary, Unavailable
from ._report import evaluate, outcome_json, render, skipped, targets
from .bandwidth import Bandwidth
from .c_floor import CFloor
from .extent import ExtendShrink
from .libpmem2 import Libpmem2
from .lookups import Find
from .map_unmap import AsyncMapUnmap, SyncMapUnmap
from .reserve import Reserve64TiB
from .stall import Stall
from .to_thread import ToThread

#: Every figure, in the order of the issue (and of each round).
FIGURES: list[type[Figure]] = [
    CFloor,
    Libpmem2,
    SyncMapUnmap,
    AsyncMapUnmap,
    ToThread,
    ExtendShrink,
    Find,
    Reserve64TiB,
    Bandwidth,
    Stall,
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [f.name for f in FIGURES]
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aiopmem's benchmark suite (see benchmarks/README.md).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="every figure with tiny repetitions (seconds; numbers are not meaningful)",
    )
    p.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"run only these figures, among: {', '.join(names)}",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        help="where to write the results (default: bench-results/bench-<timestamp>.json)",
    )
    p.add_argument("--reps", type=int, metavar="N", help="repetitions per figure")
    p.add_argument(
        "--step-timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="abort with every thread's stack if one figure's preparation or repetition takes "
        "longer than S seconds (a hang); 0: never (default: %(default)s)",
    )
    p.add_argument(
        "--hog",
        action="store_true",
        help="keep one CPU busy (a spinning process) for the whole run: the figures on a loaded "
        "machine, where the event loop and the workers compete for CPUs",
    )
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    args = p.parse_args(argv)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"unknown figure(s): {', '.join(unknown)} (known: {', '.join(names)})")
        args.only = set(wanted)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return r.stdout.strip()


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (/proc/loadavg)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def describe_machine(profile: Profile) -> dict[str, Any]:
    """What the numbers were measured on."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": profile.name,
        "reps": profile.reps,
        "stall_reps": profile.stall_reps,
        "rep_seconds": profile.rep_seconds,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "versions": {
            d: _version(d) for d in ("aiopmem", "anyio", "trio", "uvloop", "numpy", "cffi")
        },
        "argv": sys.argv[1:],
        # Other processes competing for the CPUs make every figure noisier: worth knowing.
        "loadavg_start": _loadavg(),
        "cpu_hog": "--hog" in sys.argv[1:],
    }


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """If the block takes longer than ``seconds``, dump every thread's Python stack to stderr
    and exit the process (faulthandler): a hang in the library (a deadlocked worker, an
    event loop waiting forever) then ends the run with a diagnosis instead of blocking
    ``make bench`` forever. 0 disables it."""
    if seconds <= 0:
        yield
        return
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def run(
    figures: list[Figure], log: Any, step_timeout: float = 0
) -> tuple[dict[str, dict[str, list[float]]], dict[str, str], dict[str, dict[str, float]]]:
    """Prepare every figure, run their repetitions in interleaved rounds, close them. Each
    step (one figure's preparation or repetition) runs under ``watchdog(step_timeout)``.

    Returns the samples (``[figure][metric] -> list``), the errors (``figure -> message``) and
    the wall time each figure took (``figure -> {"prepare_s", "reps_s"}``); a figure that fails
    is dropped from later rounds and the others go on.
    """
    samples: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, str] = {}
    spent: dict[str, dict[str, float]] = {}
    live: list[Figure] = []
    print("  preparing:", end="", file=log, flush=True)
    for fig in figures:
        print(f" {fig.name}", end="", file=log, flush=True)
        t0 = time.perf_counter()
        try:
            with watchdog(step_timeout):
                fig.prepare()
        except Unavailable as exc:
            errors[fig.name] = f"skipped: {exc}"
            print(f" (skipped: {exc})", end="", file=log, flush=True)
            continue
        except Exception as exc:
            errors[fig.name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=log)
            with contextlib.suppress(Exception):
                fig.close()  # whatever prepare() made before it failed
            continue
        finally:
            spent[fig.name] = {"prepare_s": time.perf_counter() - t0, "reps_s": 0.0}
        samples[fig.name] = {m.key: [] for m in fig.metrics}
        live.append(fig)
    print(file=log)
    rounds = max((f.reps for f in live), default=0)
    for rep in range(rounds):
        print(f"  round {rep + 1}/{rounds}:", end="", file=log, flush=True)
        for fig in live:
            if rep >= fig.reps or fig.name in errors:
                continue
            print(f" {fig.name}", end="", file=log, flush=True)
            t0 = time.perf_counter()
            try:
                with watchdog(step_timeout):
                    values = fig.run_rep(rep)
            except Exception as exc:
                errors[fig.name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=log)
                continue
            finally:
                spent[fig.name]["reps_s"] += time.perf_counter() - t0
            for key, value in values.items():
                samples[fig.name][key].append(value)
        print(file=log)
    for fig in live:
        try:
            fig.close()
        except Exception as exc:
            errors.setdefault(fig.name, f"{type(exc).__name__}: {exc}")
    return samples, errors, spent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for cls in FIGURES:
            print(f"{cls.name:15} {cls.title}")
        return 0
    profile = PROFILES["quick" if args.quick else "default"]
    if args.reps is not None:
        # The stall figure keeps its own split of the file (its segments must divide it).
        profile = dataclasses.replace(profile, reps=args.reps)
    started = time.perf_counter()
    machine = describe_machine(profile)
    scratch = Scratch.create()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.hog else None
    try:
        ctx = Context(profile, scratch)
        figures = [cls(ctx) for cls in FIGURES if not args.only or cls.name in args.only]
        print(
            f"aiopmem benchmarks ({profile.name} profile): {', '.join(f.name for f in figures)}",
            file=sys.stderr,
            flush=True,
        )
        samples, errors, spent = run(figures, sys.stderr, args.step_timeout)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        scratch.close()
    doc: dict[str, Any] = {"schema": 1, "meta": machine, "figures": {}}
    for fig in figures:
        entry: dict[str, Any] = {
            "title": fig.title,
            "source": fig.source,
            "params": fig.params,
            "error": errors.get(fig.name),
            "wall_s": {k: round(v, 2) for k, v in spent.get(fig.name, {}).items()},
            "metrics": {},
        }
        for m in fig.metrics:
            got = samples.get(fig.name, {}).get(m.key)
            if not got:
                continue
            s = Summary.of(got)
            entry["metrics"][m.key] = {
                "label": m.label,
                "unit": m.unit,
                "zero_ok": m.zero_ok,
                "min": s.min,
                "median": s.median,
                "max": s.max,
                "samples": list(s.samples),
            }
        doc["figures"][fig.name] = entry
    outcomes = [evaluate(t, samples) for t in targets(profile)]
    doc["targets"] = [outcome_json(o) for o in outcomes]
    doc["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    doc["meta"]["loadavg_end"] = _loadavg()
    doc["meta"]["notes"] = ctx.notes

    print(render(doc, outcomes))
    print(f"\n{doc['meta']['duration_s']} s in total")
    path = args.json
    if path is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = REPO_ROOT / "bench-results" / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {path}")
    # A skipped figure (a library not installed) is not a failure of the run.
    return 1 if any(not skipped(e) for e in errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
