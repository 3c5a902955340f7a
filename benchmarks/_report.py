"""The targets (ratios between figures of the same run, and absolute limits), the printed table
and the JSON document."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._measure import Profile, Summary

#: A figure's metric: (figure name, metric key).
Ref = tuple[str, str]


@dataclass(frozen=True)
class Target:
    """A ratio ``numerator / denominator`` (or, without a denominator, a metric itself) checked
    against ``threshold`` with ``op`` on one statistic of its repetitions.

    Ratios pair repetitions: sample i is numerator[i] / denominator[i], two numbers taken in
    the same round of the run (seconds apart). A target without threshold is printed for
    information only.
    """

    name: str
    numerator: Ref
    denominator: Ref | None
    op: str | None
    threshold: float | None
    #: Which statistic of the samples decides: "median" for throughput ratios (robust to a
    #: noisy repetition), "max" for the stall (the longest stall of the whole run is the stall).
    decided_on: str = "median"
    unit: str = "x"


def targets(profile: Profile) -> list[Target]:
    """The issue's targets (and a few ratios printed for information), for this profile."""
    small, large = profile.find_counts
    return [
        Target(
            "sync map+unmap / libpmem2 map+delete",
            ("sync_map", "ops_per_s"),
            ("libpmem2", "map_ops_per_s"),
            ">=",
            1.5,
        ),
        Target(
            "sync extend+shrink / libpmem2 extend+shrink",
            ("extend_shrink", "sync_pairs_per_s"),
            ("libpmem2", "extent_pairs_per_s"),
            ">=",
            1.5,
        ),
        Target(
            "libpmem2 map+delete / C floor",
            ("libpmem2", "map_ops_per_s"),
            ("c_floor", "ops_per_s"),
            None,
            None,
        ),
        Target(
            "sync map+unmap / C floor",
            ("sync_map", "ops_per_s"),
            ("c_floor", "ops_per_s"),
            ">=",
            0.5,
        ),
        Target(
            "async map+unmap 32 tasks / C floor, asyncio",
            ("async_map", "asyncio_32_ops_per_s"),
            ("c_floor", "ops_per_s"),
            ">=",
            0.3,
        ),
        Target(
            "async map+unmap 32 tasks / C floor, uvloop",
            ("async_map", "uvloop_32_ops_per_s"),
            ("c_floor", "ops_per_s"),
            None,
            None,
        ),
        Target(
            "async map+unmap 32 tasks / C floor, trio",
            ("async_map", "trio_32_ops_per_s"),
            ("c_floor", "ops_per_s"),
            ">=",
            0.25,
        ),
        *[
            Target(
                f"async map+unmap {tasks} task{'s' if tasks > 1 else ''} / sync, {label}",
                ("async_map", f"{label}_{tasks}_ops_per_s"),
                ("sync_map", "ops_per_s"),
                None if threshold is None else ">=",
                threshold,
            )
            for label, tasks, threshold in (
                ("asyncio", 32, 0.5),
                ("uvloop", 32, None),
                ("trio", 32, 0.4),
                ("asyncio", 1, 0.15),
                ("uvloop", 1, None),
                ("trio", 1, 0.10),
            )
        ],
        *[
            Target(
                f"loop CPU per async map+unmap / sync map+unmap time, {label}, {tasks} "
                f"task{'s' if tasks > 1 else ''}",
                ("async_map", f"{label}_{tasks}_loop_cpu_us"),
                ("sync_map", "us_per_op"),
                None,
                None,
            )
            for label in ("asyncio", "trio")
            for tasks in (1, 32)
        ],
        Target(
            "async map+unmap 1 task µs / to_thread hop µs, asyncio",
            ("async_map", "asyncio_1_us_per_op"),
            ("to_thread", "asyncio_1_us_per_op"),
            "<=",
            1.0,
        ),
        Target(
            "async map+unmap 1 task µs / to_thread hop µs, uvloop",
            ("async_map", "uvloop_1_us_per_op"),
            ("to_thread", "uvloop_1_us_per_op"),
            "<=",
            1.0,
        ),
        Target(
            "async map+unmap 1 task µs / to_thread hop µs, trio",
            ("async_map", "trio_1_us_per_op"),
            ("to_thread", "trio_1_us_per_op"),
            "<=",
            1.0,
        ),
        Target(
            f"find() at {large:,} / find() at {small:,}",
            ("find", "large_ns"),
            ("find", "small_ns"),
            "<=",
            2.0,
        ),
        Target(
            "write via view() / numpy copy",
            ("bandwidth", "view_numpy_gbps"),
            ("bandwidth", "numpy_gbps"),
            ">=",
            0.9,
        ),
        Target(
            "await rsv.write() / numpy copy into pre-faulted memory",
            ("bandwidth", "rsv_write_gbps"),
            ("bandwidth", "numpy_gbps"),
            ">=",
            0.8,
        ),
        Target(
            "view write after populate() / numpy copy",
            ("bandwidth", "populated_view_gbps"),
            ("bandwidth", "numpy_gbps"),
            ">=",
            0.9,
        ),
        Target(
            "event-loop stall, await rsv.write() + persist, asyncio",
            ("stall", "asyncio_rsv_write_stall_ms"),
            None,
            "<=",
            5.0,
            decided_on="max",
            unit="ms",
        ),
        Target(
            "event-loop stall, await rsv.write() + persist, trio",
            ("stall", "trio_rsv_write_stall_ms"),
            None,
            "<=",
            5.0,
            decided_on="max",
            unit="ms",
        ),
        Target(
            "event-loop stall, asyncio",
            ("stall", "asyncio_stall_ms"),
            None,
            "<=",
            5.0,
            decided_on="max",
            unit="ms",
        ),
        Target(
            "event-loop stall, trio",
            ("stall", "trio_stall_ms"),
            None,
            "<=",
            5.0,
            decided_on="max",
            unit="ms",
        ),
    ]


_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Outcome:
    """A target evaluated on this run: its samples (or why there are none) and the verdict."""

    target: Target
    summary: Summary | None
    #: The statistic the verdict is taken on (``target.decided_on`` of ``summary``).
    value: float | None
    met: bool | None
    why_missing: str | None = None

    @property
    def verdict(self) -> str:
        if self.summary is None:
            return f"n/a ({self.why_missing})"
        if self.met is None:
            return "info"
        return "met" if self.met else "NOT MET"


def evaluate(target: Target, results: dict[str, dict[str, list[float]]]) -> Outcome:
    """Evaluate ``target`` on the samples of this run (``results[figure][metric]``)."""
    refs = (
        [target.numerator]
        if target.denominator is None
        else [
            target.numerator,
            target.denominator,
        ]
    )
    for figure, metric in refs:
        if not results.get(figure, {}).get(metric):
            return Outcome(target, None, None, None, f"{figure} not measured")
    num = results[target.numerator[0]][target.numerator[1]]
    if target.denominator is None:
        samples = list(num)
    else:
        den = results[target.denominator[0]][target.denominator[1]]
        samples = [a / b for a, b in zip(num, den, strict=False)]
    summary = Summary.of(samples)
    value = summary.max if target.decided_on == "max" else summary.median
    met = None
    if target.op is not None and target.threshold is not None:
        met = _OPS[target.op](value, target.threshold)
    return Outcome(target, summary, value, met)


def skipped(error: str) -> bool:
    """Whether a figure's error is a skip (what it measures is not installed here)."""
    return error.startswith("skipped: ")


def fmt(x: float) -> str:
    """A number with about 3-4 significant digits, thousands separated."""
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(r)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render(doc: dict[str, Any], outcomes: list[Outcome]) -> str:
    """The human-readable report: one row per metric, then one row per target."""
    meta = doc["meta"]
    out = [
        f"aiopmem benchmarks, profile {meta['profile']}, {meta['reps']} repetitions per figure "
        f"(stall: {meta['stall_reps']}), {meta['cpu_count']} CPUs, {meta['python']} "
        f"{meta['kernel']}",
        "",
    ]
    rows = [["figure", "metric", "unit", "min", "median", "max", "spread"]]
    for name, fig in doc["figures"].items():
        if fig.get("error"):
            what = "skipped (see below)" if skipped(fig["error"]) else "ERROR (see below)"
            rows.append([name, what, "", "", "", "", ""])
        for m in fig["metrics"].values():
            s = Summary(m["min"], m["median"], m["max"], tuple(m["samples"]))
            rows.append(
                [
                    name,
                    m["label"],
                    m["unit"],
                    fmt(s.min),
                    fmt(s.median),
                    fmt(s.max),
                    f"{s.spread() * 100:.0f}%",
                ]
            )
    out += _table(rows, {3, 4, 5, 6})
    out.append("")
    rows = [["target", "min", "median", "max", "decided on", "target", "verdict"]]
    for o in outcomes:
        t = o.target
        goal = "-" if t.op is None else f"{t.op} {t.threshold:g}{t.unit}"
        if o.summary is None:
            rows.append([t.name, "", "", "", "", goal, o.verdict])
            continue
        s = o.summary
        rows.append(
            [
                t.name,
                fmt(s.min) + t.unit,
                fmt(s.median) + t.unit,
                fmt(s.max) + t.unit,
                t.decided_on,
                goal,
                o.verdict,
            ]
        )
    out += _table(rows, {1, 2, 3})
    out.append("")
    for name, fig in doc["figures"].items():
        if fig.get("error"):
            out.append(
                f"{name} {fig['error']}"
                if skipped(fig["error"])
                else f"ERROR in {name}: {fig['error']}"
            )
    for note in meta.get("notes", []):
        out.append(f"note: {note}")
    start, end = meta.get("loadavg_start"), meta.get("loadavg_end")
    if start and end:
        out.append(
            f"load average (1 min): {start[0]:.2f} at start, {end[0]:.2f} at end, on "
            f"{meta['cpu_count']} CPUs (other processes make every figure noisier)"
        )
    out.append(
        "spread = (max - min) / median over the repetitions; ratios pair the repetitions of "
        "the same round"
    )
    return "\n".join(out)


def outcome_json(o: Outcome) -> dict[str, Any]:
    t = o.target
    return {
        "name": t.name,
        "numerator": list(t.numerator),
        "denominator": None if t.denominator is None else list(t.denominator),
        "op": t.op,
        "threshold": t.threshold,
        "unit": t.unit,
        "decided_on": t.decided_on,
        "value": o.value,
        "min": None if o.summary is None else o.summary.min,
        "median": None if o.summary is None else o.summary.median,
        "max": None if o.summary is None else o.summary.max,
        "samples": None if o.summary is None else list(o.summary.samples),
        "met": o.met,
        "verdict": o.verdict,
    }
