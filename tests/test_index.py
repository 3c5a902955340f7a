"""The index of mappings at scale (the C core keeps it in sorted buckets of 256 entries that
split and empty as mappings come and go): thousands of mappings made and unmapped in random
order, every lookup checked against a plain sorted model, and the kernel's view at the end."""

from __future__ import annotations

import bisect
import random

import kernel
from aiopmem.sync import Mapping, reserve
from sizes import P

SLOTS = 3000  # > 10 buckets, far below the VMA limit (a slot is a mapping and a placeholder)


def test_thousands_of_mappings_in_random_order_agree_with_a_model() -> None:
    rng = random.Random(11)
    with reserve(2 * SLOTS * P, max_size=2 * SLOTS * P) as rsv:
        model: list[int] = []  # offsets of the live mappings, sorted
        live: dict[int, Mapping] = {}
        order = list(range(SLOTS))
        rng.shuffle(order)
        for step, slot in enumerate(order + order[: SLOTS // 2]):
            off = 2 * slot * P
            if off in live:  # second pass: unmap half of them, in another random order
                live.pop(off).unmap()
                model.remove(off)
            else:
                live[off] = rsv.map_anonymous(off, P)
                bisect.insort(model, off)
            if step % 97 == 0:
                probe = 2 * rng.randrange(SLOTS) * P
                i = bisect.bisect_left(model, probe)
                found = rsv.find(probe)
                assert (found.offset if found else None) == (
                    probe if i < len(model) and model[i] == probe else None
                )
                after = rsv.find(probe + P, 4 * SLOTS * P)  # the first one after the probe
                j = bisect.bisect_right(model, probe)
                assert (after.offset if after else None) == (model[j] if j < len(model) else None)
        assert [m.offset for m in rsv.mappings()] == model
        first, last = rsv.find_first(), rsv.find_last()
        assert first is not None and last is not None
        assert (first.offset, last.offset) == (model[0], model[-1])
        walk: Mapping | None = first
        walked = []
        while walk is not None:  # find_next across every bucket boundary
            walked.append(walk.offset)
            walk = rsv.find_next(walk)
        assert walked == model
        walk = last
        back = []
        while walk is not None:
            back.append(walk.offset)
            walk = rsv.find_prev(walk)
        assert back == model[::-1]
        kernel.assert_matches_kernel(rsv)
        for m in rsv.mappings():
            m.unmap()
        assert rsv.mappings() == [] and rsv.find_first() is None
        kernel.assert_gate_at_rest(rsv)
