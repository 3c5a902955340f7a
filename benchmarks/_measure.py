"""What every figure shares: profiles, metric descriptions, summaries of repetitions, the
calibration of timed loops and the scratch files.

A figure is measured in *repetitions*. One repetition of a throughput figure is one timed loop
of ``n`` operations (``n`` chosen once per figure by ``calibrate`` so that a loop lasts about
``Profile.rep_seconds``); its sample is ``n / elapsed``. The summary of a metric is the
min/median/max over its repetitions' samples.
"""

from __future__ import annotations

import abc
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
TiB: Final = 1 << 40

#: The unit every map/unmap figure works with: one 64 KiB mapping of a 64 KiB file region
#: (the size the issue's C floor uses).
SLOT: Final = 64 * KiB

#: Number of concurrent tasks of the "many tasks" variants (each with its own 64 KiB slot).
TASKS: Final = 32


@dataclass(frozen=True)
class Profile:
    """How much work each figure does. ``default`` is what ``make bench`` runs (a few minutes
    at most on a small VM); ``quick`` runs every figure with tiny repetitions (seconds), for
    the smoke test."""

    name: str
    #: Repetitions of every figure (min/median/max are taken over them).
    reps: int
    #: Target duration of one timed loop; ``calibrate`` picks the loop's op count from it.
    rep_seconds: float
    #: Mapping counts of the find() figure: (small, large).
    find_counts: tuple[int, int]
    #: Random lookups per repetition of the find() figure.
    find_lookups: int
    #: Size of the buffer copied by the bandwidth figure.
    bandwidth_bytes: int
    #: Copies per repetition of the bandwidth figure (per side).
    bandwidth_copies: int
    #: Bytes mapped, written and persisted per backend by the stall figure, in total ...
    stall_bytes: int
    #: ... as mappings of this size ...
    stall_chunk: int
    #: ... split into this many repetitions (each reports its own longest stall).
    stall_reps: int


PROFILES: Final = {
    "default": Profile(
        name="default",
        reps=5,
        rep_seconds=0.4,
        find_counts=(100, 50_000),
        find_lookups=200_000,
        bandwidth_bytes=256 * MiB,
        bandwidth_copies=4,
        stall_bytes=1 * GiB,
        stall_chunk=64 * MiB,
        stall_reps=4,
    ),
    "quick": Profile(
        name="quick",
        reps=3,
        rep_seconds=0.01,
        find_counts=(100, 5_000),
        find_lookups=5_000,
        bandwidth_bytes=16 * MiB,
        bandwidth_copies=1,
        stall_bytes=48 * MiB,
        stall_chunk=16 * MiB,
        stall_reps=3,
    ),
}

#: (label, anyio backend, backend options) of every async backend measured.
BACKENDS: Final[tuple[tuple[str, str, dict[str, object]], ...]] = (
    ("asyncio", "asyncio", {"use_uvloop": False}),
    ("uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
)


@dataclass(frozen=True)
class Metric:
    """One number a figure reports per repetition."""

    key: str
    label: str
    unit: str
    #: Whether 0 is a legitimate outcome (e.g. RSS growth); otherwise every sample is > 0.
    zero_ok: bool = False


@dataclass(frozen=True)
class Summary:
    """min/median/max over the repetitions' samples (samples kept in run order)."""

    min: float
    median: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        return cls(min(samples), statistics.median(samples), max(samples), tuple(samples))

    def spread(self) -> float:
        """(max - min) / median: how noisy the repetitions were (0.1 = 10 %)."""
        return (self.max - self.min) / self.median if self.median else 0.0


class Unavailable(Exception):
    """Raised by ``Figure.prepare()`` when what the figure measures is not on this machine (a
    library not installed): the figure is skipped with this one-line reason, no traceback."""


@dataclass
class Scratch:
    """Files every figure may use, in one temporary directory of the default temp dir
    (``tempfile.gettempdir()``), removed at the end of the run."""

    directory: str
    #: A 64 KiB file (written, so its blocks exist) opened read-write once: the ``fd`` of every
    #: map/unmap figure, C floor included.
    slot_path: str
    slot_fd: int

    @classmethod
    def create(cls) -> Scratch:
        directory = tempfile.mkdtemp(prefix="aiopmem-bench-")
        path = os.path.join(directory, "slot.bin")
        with open(path, "wb") as f:
            f.write(b"\xa5" * SLOT)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return cls(directory, path, fd)

    def close(self) -> None:
        os.close(self.slot_fd)
        for name in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, name))
        os.rmdir(self.directory)


@dataclass
class Context:
    """What a figure gets: the profile and the scratch files."""

    profile: Profile
    scratch: Scratch
    #: Notes gathered while running (shown under the table and stored in the JSON).
    notes: list[str] = field(default_factory=list)


class Figure(abc.ABC):
    """One figure of the suite: a set of metrics measured over repetitions.

    ``prepare()`` runs once before the first repetition (compiling, calibrating loop sizes);
    ``run_rep()`` measures one repetition of every metric; ``close()`` releases what
    ``prepare()`` made. Anything a repetition maps or allocates, it releases before returning,
    so figures do not disturb each other.
    """

    name: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.reps = ctx.profile.reps
        #: Parameters worth recording next to the numbers (loop sizes, layouts, ...).
        self.params: dict[str, object] = {}

    @property
    @abc.abstractmethod
    def metrics(self) -> list[Metric]:
        """The metrics, in the order they are printed."""

    @property
    def source(self) -> str:
        """Where the numbers come from: the figure's class docstring."""
        return " ".join((type(self).__doc__ or "").split())

    def prepare(self) -> None:  # noqa: B027 (optional hook)
        """Compile, calibrate, create files; runs once before the first repetition."""

    @abc.abstractmethod
    def run_rep(self, rep: int) -> dict[str, float]:
        """Measure one repetition: a sample for each metric key."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what ``prepare()`` made."""


def timed(loop: Callable[[int], None], n: int) -> float:
    """Seconds taken by ``loop(n)``, after a garbage collection (so that a collection owed by
    the previous loop is not charged to this one)."""
    gc.collect()
    t0 = time.perf_counter()
    loop(n)
    return time.perf_counter() - t0


def calibrate(
    run: Callable[[int], float], seconds: float, *, multiple: int = 1, least: int = 8
) -> int:
    """The op count for which ``run(n)`` (returning the seconds its timed loop took) lasts
    about ``seconds``: probes with growing ``n`` (from ``least``) until a probe lasts at least
    a tenth of the target, then scales. The result is a multiple of ``multiple`` (e.g. the
    task count) and at least ``least``, so that a slow first probe on a busy machine cannot
    shrink a loop to one op."""

    def round_up(x: float) -> int:
        return max(multiple, -(-int(x) // multiple) * multiple)

    least = round_up(least)
    n = least
    while True:
        elapsed = run(n)
        if elapsed >= seconds / 10 or n >= 1 << 32:
            break
        grow = 16.0 if elapsed <= 0 else min(16.0, max(2.0, seconds / 10 / elapsed * 1.5))
        n = round_up(n * grow)
    return max(least, round_up(n * seconds / max(elapsed, 1e-9)))
