"""The benchmark suite runs end to end (``--quick``) and writes a complete JSON document.

Only the shape of the results is checked: every figure is present and was measured, every
metric has min <= median <= max and plausible (positive) values. No throughput or latency
threshold is asserted: timings are measurements, they belong in benchmarks/, not in tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Every figure of the suite (benchmarks.__main__.FIGURES), spelled out so that dropping one
#: by accident fails here.
FIGURES = {
    "c_floor",
    "libpmem2",
    "sync_map",
    "async_map",
    "to_thread",
    "extend_shrink",
    "find",
    "reserve",
    "bandwidth",
    "stall",
}


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())

    assert doc["meta"]["profile"] == "quick"
    assert set(doc["figures"]) == FIGURES
    for name, fig in doc["figures"].items():
        # Only a figure whose library is not installed may be missing, with its reason.
        skipped = name == "libpmem2" and str(fig["error"]).startswith("skipped: ")
        assert fig["error"] is None or skipped, f"{name}: {fig['error']}"
        assert fig["source"], f"{name}: no description of where its numbers come from"
        if skipped:
            continue
        assert fig["metrics"], f"{name}: no metric"
        for key, m in fig["metrics"].items():
            where = f"{name}.{key}"
            samples = m["samples"]
            assert samples, where
            assert all(math.isfinite(x) for x in samples), where
            assert m["min"] <= m["median"] <= m["max"], where
            assert m["min"] == min(samples) and m["max"] == max(samples), where
            if m["zero_ok"]:
                assert m["min"] >= 0, where
            else:
                assert m["min"] > 0, where

    # Every target was evaluated on this run's numbers (met or not: no threshold is asserted).
    assert doc["targets"]
    for t in doc["targets"]:
        if t["median"] is None and "libpmem2" in t["name"] and doc["figures"]["libpmem2"]["error"]:
            continue  # the libpmem2 figure was skipped
        assert t["median"] is not None, t["name"]
        assert t["min"] <= t["median"] <= t["max"], t["name"]
        assert t["verdict"] in {"met", "NOT MET", "info"}, t["name"]

    # The printed table names every figure.
    for name in FIGURES:
        assert name in proc.stdout
