"""``IntervalIndex`` against a brute-force model: a dict of ``start -> (end, payload)``.

The bucket load is shrunk (``_LOAD`` is read at call time) so that a few dozen entries split
buckets and empty them again; the 50,000-entry test runs at the real load.
"""

from __future__ import annotations

import itertools
import random
from bisect import bisect_left, bisect_right
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aiopmem._core import _intervals
from aiopmem._core._intervals import IntervalIndex

Model = dict[int, tuple[int, Any]]

# A small address universe, so that inserts collide, abut and leave gaps often.
SPACE = 120
starts_st = st.integers(0, SPACE)
lengths_st = st.integers(1, 12)
# Query ranges reach a little past the universe on both sides.
lows_st = st.integers(-5, SPACE + 15)
spans_st = st.integers(1, 30)


# -- the model ---------------------------------------------------------------------------------


def model_overlaps(model: Model, lo: int, hi: int) -> bool:
    return any(s < hi and e > lo for s, (e, _) in model.items())


def model_find(model: Model, lo: int, hi: int) -> Any:
    hits = [s for s, (e, p) in model.items() if s < hi and e > lo and p is not None]
    return model[min(hits)][1] if hits else None


def model_between(model: Model, lo: int, hi: int) -> list[tuple[int, int, Any]]:
    return [(s, *model[s]) for s in sorted(model) if s < hi and model[s][0] > lo]


def model_next(model: Model, start: int) -> Any:
    after = [s for s, (_, p) in model.items() if s > start and p is not None]
    return model[min(after)][1] if after else None


def model_prev(model: Model, start: int) -> Any:
    before = [s for s, (_, p) in model.items() if s < start and p is not None]
    return model[max(before)][1] if before else None


def model_values(model: Model) -> list[Any]:
    return [model[s][1] for s in sorted(model) if model[s][1] is not None]


def check_structure(index: IntervalIndex[Any]) -> None:
    """The bucket invariants every lookup relies on."""
    load = _intervals._LOAD
    assert len(index._starts) == len(index._ends) == len(index._cells) == len(index._firsts)
    for starts, ends, cells, first in zip(
        index._starts, index._ends, index._cells, index._firsts, strict=True
    ):
        assert starts, "empty bucket left behind"
        assert len(starts) <= 2 * load
        assert len(ends) == len(cells) == len(starts)
        assert first == starts[0]
        for start, cell in zip(starts, cells, strict=True):
            assert index._cell[start] is cell
    flat = [s for bucket in index._starts for s in bucket]
    assert flat == sorted(flat)
    assert len(flat) == len(set(flat))
    assert set(flat) == set(index._cell)


# -- the state machine -------------------------------------------------------------------------


class Tally:
    """How often the machine saw the bucket list grow (a split) and shrink (a bucket removed)."""

    splits = 0
    bucket_removals = 0


class IntervalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index: IntervalIndex[Any] = IntervalIndex()
        self.model: Model = {}
        # Payloads are distinct, and the first one is 0: a falsy payload must not pass for a claim.
        self.counter = 0

    def _payload(self) -> int:
        self.counter += 1
        return self.counter - 1

    def _buckets(self) -> int:
        return len(self.index._firsts)

    def _insert(self, start: int, end: int, payload: Any) -> None:
        before = self._buckets()
        self.index.insert(start, end, payload)
        self.model[start] = (end, payload)
        if self._buckets() > before + (before == 0):
            Tally.splits += 1
            event("bucket split")

    def _remove(self, start: int) -> None:
        before = self._buckets()
        assert self.index.remove(start) == self.model.pop(start)[1]
        if self._buckets() < before:
            Tally.bucket_removals += 1
            event("bucket removed")

    @rule(start=starts_st, length=lengths_st, claim=st.booleans())
    def insert(self, start: int, length: int, claim: bool) -> None:
        end = start + length
        free = not model_overlaps(self.model, start, end)
        assert self.index.overlaps(start, end) == (not free)
        if free:
            self._insert(start, end, None if claim else self._payload())

    @rule(start=starts_st, lengths=st.lists(lengths_st, min_size=2, max_size=10), gap=st.booleans())
    def insert_run(self, start: int, lengths: list[int], gap: bool) -> None:
        """Back-to-back intervals (or with one-unit gaps) while they fit: fills a bucket fast."""
        for length in lengths:
            end = start + length
            if self.index.overlaps(start, end):
                assert model_overlaps(self.model, start, end)
                return
            self._insert(start, end, self._payload())
            start = end + gap

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self._remove(data.draw(st.sampled_from(sorted(self.model)), label="start"))

    @rule(lo=lows_st, span=st.integers(1, 60))
    def remove_window(self, lo: int, span: int) -> None:
        """Remove every entry that starts in ``[lo, lo + span)``, in a shuffled order."""
        doomed = [s for s in self.model if lo <= s < lo + span]
        random.Random(lo * 1000 + span).shuffle(doomed)
        for s in doomed:
            self._remove(s)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def replace(self, data: st.DataObject) -> None:
        """A claim becomes a mapping, or a mapping goes back to being a claim."""
        start = data.draw(st.sampled_from(sorted(self.model)), label="start")
        end, payload = self.model[start]
        new = self._payload() if payload is None else None
        self.index.replace(start, new)
        self.model[start] = (end, new)

    @rule(start=st.integers(-5, SPACE + 15))
    def absent_start(self, start: int) -> None:
        """Every lookup by start raises KeyError for a start that no entry has, and changes
        nothing (a start inside an interval is not the start of one)."""
        if start in self.model:
            return
        for op in (self.index.remove, self.index.next, self.index.prev):
            with pytest.raises(KeyError):
                op(start)
        with pytest.raises(KeyError):
            self.index.replace(start, "x")

    @rule(lo=lows_st, span=spans_st)
    def query_range(self, lo: int, span: int) -> None:
        hi = lo + span
        assert self.index.overlaps(lo, hi) == model_overlaps(self.model, lo, hi)
        assert self.index.find(lo, hi) == model_find(self.model, lo, hi)
        assert self.index.between(lo, hi) == model_between(self.model, lo, hi)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def query_neighbours(self, data: st.DataObject) -> None:
        start = data.draw(st.sampled_from(sorted(self.model)), label="start")
        assert self.index.next(start) == model_next(self.model, start)
        assert self.index.prev(start) == model_prev(self.model, start)

    @rule()
    def clear(self) -> None:
        self.index.clear()
        self.model.clear()

    @invariant()
    def matches_model(self) -> None:
        check_structure(self.index)
        assert len(self.index) == len(self.model)
        assert list(self.index.intervals()) == [(s, *self.model[s]) for s in sorted(self.model)]
        values = model_values(self.model)
        assert self.index.values() == values
        assert self.index.first() == (values[0] if values else None)
        assert self.index.last() == (values[-1] if values else None)
        # Every boundary of every entry, and the unit ranges at both sides of it.
        for s, (e, _) in self.model.items():
            for lo, hi in ((s, s + 1), (e - 1, e), (e, e + 1), (s - 1, s), (s, e)):
                assert self.index.overlaps(lo, hi) == model_overlaps(self.model, lo, hi)
                assert self.index.find(lo, hi) == model_find(self.model, lo, hi)
                assert self.index.between(lo, hi) == model_between(self.model, lo, hi)


@pytest.mark.parametrize("load", [1, 2, 4])
def test_interval_index_matches_model(monkeypatch: pytest.MonkeyPatch, load: int) -> None:
    monkeypatch.setattr(_intervals, "_LOAD", load)
    Tally.splits = Tally.bucket_removals = 0
    run_state_machine_as_test(
        IntervalMachine,
        settings=settings(
            max_examples=120,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # The runs went through the bucket bookkeeping, not just one bucket.
    assert Tally.splits > 0
    assert Tally.bucket_removals > 0


# -- deterministic ----------------------------------------------------------------------------


def test_buckets_split_and_go_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_intervals, "_LOAD", 2)
    index: IntervalIndex[int] = IntervalIndex()
    # Descending inserts go to the front of bucket 0 and move its first start each time.
    for s in range(40, 0, -2):
        index.insert(s, s + 1, s)
    check_structure(index)
    assert len(index._firsts) > 1
    assert index.values() == list(range(2, 42, 2))
    # Emptying the first bucket, then a middle one, leaves the others findable.
    for s in index._starts[0][:]:
        index.remove(s)
    check_structure(index)
    middle = index._starts[len(index._starts) // 2][:]
    buckets = len(index._firsts)
    for s in middle:
        index.remove(s)
    assert len(index._firsts) == buckets - 1
    check_structure(index)
    left = index.values()
    assert left and not set(middle) & set(left)
    for a, b in itertools.pairwise(left):
        assert index.next(a) == b
        assert index.prev(b) == a
        assert index.find(a, b + 1) == a
        assert index.find(a + 1, b + 1) == b  # a's interval is [a, a + 1)
    for s in left:
        index.remove(s)
    assert len(index) == 0
    assert index._firsts == []
    assert index.first() is None
    assert index.last() is None
    assert index.find(-(10**9), 10**9) is None


def test_claims_block_but_are_invisible() -> None:
    index: IntervalIndex[str] = IntervalIndex()
    index.insert(10, 20, "a")
    index.insert(20, 30, None)
    index.insert(30, 40, "b")
    assert index.overlaps(25, 26)
    assert index.find(20, 30) is None
    assert index.find(20, 31) == "b"
    assert index.next(10) == "b"
    assert index.prev(30) == "a"
    assert index.next(20) == "b"  # the lookups work from a claim's start too
    assert index.prev(20) == "a"
    assert index.values() == ["a", "b"]
    assert len(index) == 3
    index.replace(20, "c")
    assert index.find(25, 26) == "c"
    assert index.values() == ["a", "c", "b"]


def test_fifty_thousand_intervals_in_random_order() -> None:
    """At the real bucket load: 50,000 intervals, some of them claims, inserted in a random
    order, checked on a sample; then half removed in a random order and checked again."""
    rng = random.Random(20240611)
    n = 50_000
    # Disjoint intervals with gaps: slot k covers [10k, 10k + length), length 1..10.
    ivals = [(10 * k, 10 * k + rng.randint(1, 10)) for k in range(n)]
    payload = {s: (None if rng.random() < 0.1 else f"m{s}") for s, _ in ivals}
    order = ivals[:]
    rng.shuffle(order)
    index: IntervalIndex[str] = IntervalIndex()
    for s, e in order:
        index.insert(s, e, payload[s])
    assert len(index._firsts) >= n // (2 * _intervals._LOAD)  # it did split, many times

    def check(live: list[tuple[int, int]], samples: int) -> None:
        check_structure(index)
        assert len(index) == len(live)
        assert list(index.intervals()) == [(s, e, payload[s]) for s, e in live]
        visible = [s for s, _ in live if payload[s] is not None]
        assert index.values() == [payload[s] for s in visible]
        assert index.first() == payload[visible[0]]
        assert index.last() == payload[visible[-1]]
        starts = [s for s, _ in live]
        for s, e in rng.sample(live, samples):
            j = bisect_right(visible, s)
            assert index.next(s) == (payload[visible[j]] if j < len(visible) else None)
            j = bisect_left(visible, s)
            assert index.prev(s) == (payload[visible[j - 1]] if j > 0 else None)
            # find from a point inside [s, e), from the gap after it, over a wide range
            lo = rng.randrange(s, e)
            hi = lo + rng.randint(1, 40)
            i = bisect_left(starts, s)
            expected = None
            for t, u in live[i:]:
                if t >= hi:
                    break
                if u > lo and payload[t] is not None:
                    expected = payload[t]
                    break
            assert index.find(lo, hi) == expected
            assert index.overlaps(lo, hi)
            assert index.overlaps(e, e + 1) == (i + 1 < len(live) and live[i + 1][0] == e)

    check(ivals, 2000)
    gone = set(rng.sample(range(n), n // 2))
    for k in gone:
        index.remove(ivals[k][0])
    check([iv for k, iv in enumerate(ivals) if k not in gone], 2000)
