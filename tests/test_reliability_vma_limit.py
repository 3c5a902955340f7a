"""Near the kernel's VMA limit (``/proc/sys/vm/max_map_count``).

A reservation is filled with one-page anonymous mappings on every other page: each one splits
the placeholder and costs two VMAs, until the kernel refuses. The refusal must be a clean
``OSError(ENOMEM)``: nothing mapped there, the reservation consistent with the kernel and still
usable. At the limit, unmapping a mapping that lies between placeholders must still work
(its placeholder merges with both neighbours, so it frees two VMAs) and must never leave a hole;
then the space it freed can be mapped again, and the next map is refused cleanly again.

It runs in a child interpreter: at the limit every mmap of the process fails (malloc's too), which
must not disturb the test runner.
"""

from __future__ import annotations

import errno
import json
import random
import sys
import time

import pytest

from reliability import TALLY, Profile, profiles, run_child


@pytest.mark.parametrize("past", [False, True], ids=["at the limit", "one past it"])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("profile", profiles(quick={"rounds": 25}, long={"rounds": 500}))
def test_fill_to_the_vma_limit_and_back(profile: Profile, parity: int, past: bool) -> None:
    """``parity``: one more VMA before the fill, so that the fill stops once with the count
    at the limit and once just below. ``past``: before each unmap and each refused map, push
    the count one past the limit with an mmap of the process's own: the kernel checks
    ``map_count > max_map_count`` before adding a VMA, so it lets the process (malloc, say) get
    there; then it refuses every mmap, the unmap's overlay and the failed map's mend included,
    and the library must take its munmap + placeholder path and read /proc/self/maps."""
    out = run_child(
        "import sys, test_reliability_vma_limit as t; t.child(*map(int, sys.argv[1:]))",
        str(parity),
        str(int(past)),
        str(profile["rounds"]),
        timeout=300,
    )
    report = json.loads(out.strip().splitlines()[-1])
    TALLY["vma limit: mappings made"] += report["mapped"]
    TALLY["vma limit: unmaps at the limit"] += report["unmaps at the limit"]
    TALLY["vma limit: clean refusals"] += report["refusals"]
    TALLY["vma limit: unmaps through munmap + placeholder"] += report["fallbacks"]
    with open("/proc/sys/vm/max_map_count") as f:
        limit = int(f.read())
    # Two VMAs per mapping: the limit was reached with about limit/2 of them.
    assert limit // 2 - 2000 < report["mapped"] < limit // 2
    assert report["refusals"] >= report["unmaps at the limit"] > 0
    if past:
        assert report["fallbacks"] == report["unmaps at the limit"]


def child(parity: int, past: int, rounds: int) -> None:
    import mmap

    from aiopmem.sync import ALIGNMENT as P
    from aiopmem.sync import Mapping, PmemError, reserve
    from aiopmem.testing import inject
    from reliability import fast_matches_kernel

    t0 = time.perf_counter()
    with open("/proc/sys/vm/max_map_count") as f:
        limit = int(f.read())
    pages = limit + 4000  # every other page mapped: enough room to pass the limit
    rsv = reserve(pages * P, max_size=pages * P)
    # At the limit the Python heap cannot grow either (malloc's mmap fails too): everything the
    # walk at the limit needs is allocated before it gets there.
    rng = random.Random(parity)
    candidates = list(range(1, pages, 2))
    maps: list[Mapping | None] = [None] * len(candidates)
    at_limit = [rng.randrange(0, 30_000) for _ in range(rounds)]
    give_back = rng.sample(range(30_000), 200)
    report: dict[str, float] = {"mapped": 0, "unmaps at the limit": 0, "refusals": 0}
    # (held in a list allocated now: growing one at the limit could need new memory)
    extra: list[mmap.mmap | None] = [None] * (2 * rounds + 8)
    made = [0]

    def one_past() -> None:
        """Shared anonymous mmaps (they never merge) until the kernel refuses one: then the
        count is one past the limit."""
        while True:
            try:
                extra[made[0]] = mmap.mmap(-1, P)
            except OSError:
                return
            made[0] += 1

    if parity:
        # One VMA more: a mapping at the far end, whose placeholder split costs one.
        far = rsv.map_anonymous((pages - 1) * P, P)

    def refused(offset: int) -> None:
        """The map at ``offset`` must fail cleanly with ENOMEM."""
        with pytest.raises(OSError) as info:
            rsv.map_anonymous(offset, P)
        assert info.value.errno == errno.ENOMEM and not isinstance(info.value, PmemError)
        assert rsv.find(offset) is None
        assert rsv.holes == []
        report["refusals"] += 1

    count = None
    for i, page in enumerate(candidates):
        try:
            maps[i] = rsv.map_anonymous(page * P, P)
        except OSError as exc:
            # (it was a MemoryError when the library read all of /proc/self/maps into Python
            # objects at the limit)
            count, errno_seen, pmem = i, exc.errno, isinstance(exc, PmemError)
            break
    assert count is not None, "the VMA limit was never reached"
    assert errno_seen == errno.ENOMEM and not pmem
    report["mapped"] = count
    failed_at = candidates[count]
    assert rsv.find(failed_at * P) is None and rsv.holes == []
    refused(failed_at * P)

    # At the limit: unmap one between placeholders, map its page again, be refused again.
    with inject("munmap", times=0) as munmaps, inject("mmap", times=0) as mmaps:
        for i in at_limit:
            if past:
                one_past()
            m = maps[i]
            assert m is not None
            m.unmap()
            assert m.closed and rsv.find(candidates[i] * P) is None
            assert rsv.holes == []
            report["unmaps at the limit"] += 1
            maps[i] = rsv.map_anonymous(candidates[i] * P, P)
            if past:
                one_past()
            refused(failed_at * P)
    # How the unmaps went: one overlay each, or the munmap + placeholder fallback.
    report["fallbacks"] = munmaps.seen
    report["mmaps"] = mmaps.seen

    for region in extra:
        if region is not None:
            region.close()
    # Give back 200 pairs of VMAs, unmapping at the limit, then check everything.
    for i in give_back:
        m = maps[i]
        assert m is not None
        m.unmap()
        maps[i] = None
        assert rsv.holes == []
    alive = [(candidates[i], m) for i, m in enumerate(maps) if m is not None]
    if parity:
        alive.append((pages - 1, far))
    assert [m.offset for m in rsv.mappings()] == [page * P for page, _ in alive]
    # Still consistent with the kernel, mapping by mapping.
    fast_matches_kernel(rsv)

    # Unmap everything: no hole, ever; the VMAs merge back into one placeholder.
    for _, m in alive:
        m.unmap()
    assert rsv.holes == [] and rsv.mappings() == []
    fast_matches_kernel(rsv)
    start, end = rsv.address, rsv.address + rsv.max_size
    rsv.close()
    import kernel

    assert kernel.is_free(start, end)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    sys.stdout.write(json.dumps(report) + "\n")
