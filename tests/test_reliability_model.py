"""A reservation against a plain-Python model, driven by hypothesis' stateful testing.

The model holds the layout (address, size, max_size, the mappings by absolute address with
their size, protection, sharing and file) and the bytes they show (anonymous memory, the files'
contents, the pages of private file mappings that were copied on write). Every rule predicts
the outcome, errors included (the exact class, in the contract's validation order), and after
every step the library's lookups and attributes must equal the model, the views still alive
must show the model's bytes, the files must hold them, and ``/proc/self/maps`` must agree
(``kernel.assert_matches_kernel``). At teardown the reservation is closed and nothing of it
may remain mapped.

The same machine runs on ``aiopmem.sync`` and, through an anyio blocking portal (tests/apis.py),
on the async API under asyncio and trio.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import apis
import kernel
from aiopmem.sync import (
    ClosedError,
    Granularity,
    LengthOutOfRangeError,
    LengthUnalignedError,
    MappingExistsError,
    MapRangeError,
    NoAccessError,
    NotSupportedError,
    OffsetOutOfRangeError,
    OffsetUnalignedError,
    Protection,
    ReservationNotEmptyError,
    Sharing,
)
from reliability import TALLY, Profile, assert_matches_kernel, profiles
from sizes import P

R, W = Protection.READ, Protection.WRITE
RW = R | W
SIZE0 = 24 * P
MAX0 = 32 * P
#: extend() is not tried past this size (the quiet area around the reservation is 1 GiB).
GROW_LIMIT = 64 * P
MAX_GROUPS = 4

# -- strategies --------------------------------------------------------------------------------

# Mostly aligned values, sometimes off by a byte or half a page.
jitter = st.sampled_from((0,) * 12 + (1, P // 2))


def paged(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.builds(lambda p, j: p * P + j, st.integers(lo, hi), jitter)


protections = st.sampled_from([RW, RW, R, R, Protection.NONE, W])
sharings = st.sampled_from([Sharing.SHARED, Sharing.SHARED, Sharing.PRIVATE])
sources = st.sampled_from(["path", "fd", "rofd", "fileobj"])
lengths = st.one_of(st.none(), st.just(0), paged(-1, 18))
picks = st.integers(0, 10**6)


# -- the model ---------------------------------------------------------------------------------


@dataclass
class FileModel:
    path: str
    data: bytearray = field(repr=False)
    fd: int
    rofd: int
    fileobj: Any

    @property
    def size(self) -> int:
        return len(self.data)

    def page(self, file_offset: int) -> bytes:
        """The page of the file at ``file_offset``; zeros past the end."""
        chunk = bytes(self.data[file_offset : file_offset + P])
        return chunk + bytes(P - len(chunk))


@dataclass
class MappingModel:
    obj: Any
    addr: int
    size: int
    protection: Protection
    sharing: Sharing
    file: FileModel | None = None
    file_offset: int = 0
    name: str | None = None
    #: anonymous memory: its bytes
    content: bytearray | None = field(default=None, repr=False)
    #: private file mapping: pages copied on write, by page index
    cow: dict[int, bytearray] = field(default_factory=dict, repr=False)

    @property
    def span(self) -> int:
        return -(-self.size // P) * P

    @property
    def end(self) -> int:
        return self.addr + self.span

    def read(self, x: int, n: int) -> bytes:
        """``n`` bytes at offset ``x`` of the mapping (within its span)."""
        if self.content is not None:
            return bytes(self.content[x : x + n])
        assert self.file is not None
        out = bytearray()
        for page in range(x // P, (x + n - 1) // P + 1):
            if page in self.cow:
                out += self.cow[page]
            else:
                out += self.file.page(self.file_offset + page * P)
        first = (x // P) * P
        return bytes(out[x - first : x - first + n])

    def write(self, x: int, data: bytes) -> None:
        """Store ``data`` at offset ``x`` (inside ``[0, size)``) as the kernel would."""
        if self.content is not None:
            self.content[x : x + len(data)] = data
        elif self.sharing is Sharing.SHARED:
            assert self.file is not None
            fo = self.file_offset + x
            self.file.data[fo : fo + len(data)] = data
        else:
            assert self.file is not None
            for i, byte in enumerate(data):
                page, within = divmod(x + i, P)
                if page not in self.cow:
                    self.cow[page] = bytearray(self.file.page(self.file_offset + page * P))
                self.cow[page][within] = byte


@dataclass
class Group:
    """A view and objects built on it, kept alive together: they pin ``pinned``."""

    base: memoryview
    start: int  # absolute address of base[0]
    pinned: list[MappingModel]
    #: (start, length) of the buffer exporter behind base (what memoryview(base.obj) shows:
    #: the range the view was made for)
    window: tuple[int, int]
    extra: list[Any]
    array: Any = None

    def release(self) -> None:
        self.array = None
        for obj in self.extra:
            obj.release()
        self.extra.clear()
        self.base.release()


def outcome(call: Any) -> tuple[Any, type[BaseException] | None]:
    """``(result, None)`` or ``(None, type of the exception)``; keeps no traceback alive (its
    frames could hold views)."""
    try:
        return call(), None
    except Exception as exc:
        kind = type(exc)
        exc.__traceback__ = None
        del exc
        return None, kind


def check(got: type[BaseException] | None, expected: type[BaseException] | None) -> None:
    assert got is expected, f"raised {got.__name__ if got else None}, expected " + (
        expected.__name__ if expected else "success"
    )


class ReservationMachine(RuleBasedStateMachine):
    """Subclassed per API; ``reserve`` is ``apis.reserve`` (sync or through a portal)."""

    def __init__(self) -> None:
        super().__init__()
        # tmpfs when there is one: persist() there costs no disk write
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.tmp = tempfile.mkdtemp(prefix="aiopmem-model-", dir=shm)
        self.files = [
            self._make_file("a", 16 * P),
            self._make_file("b", 5 * P + 100),  # a partial last page
        ]
        self.base = kernel.quiet_address(4 * GROW_LIMIT)
        self.rsv = apis.reserve(SIZE0, address=self.base, max_size=MAX0)
        self.address = self.base
        self.size = SIZE0
        self.max_size = MAX0
        self.closed = False
        self.maps: dict[int, MappingModel] = {}
        self.gone: list[MappingModel] = []
        self.groups: list[Group] = []
        TALLY["model: reservations"] += 1

    def _make_file(self, name: str, size: int) -> FileModel:
        path = os.path.join(self.tmp, name)
        data = bytearray(os.urandom(size))
        with open(path, "wb") as f:
            f.write(data)
        fd = os.open(path, os.O_RDWR)
        rofd = os.open(path, os.O_RDONLY)
        return FileModel(path, data, fd, rofd, open(path, "r+b", buffering=0))

    # -- model queries ---------------------------------------------------------------------

    def live(self) -> list[MappingModel]:
        return [self.maps[a] for a in sorted(self.maps)]

    def overlapping(self, lo: int, hi: int) -> list[MappingModel]:
        return [m for m in self.live() if m.addr < hi and m.end > lo]

    def pinned(self, m: MappingModel) -> bool:
        return any(m in g.pinned for g in self.groups)

    def model_of(self, obj: Any) -> MappingModel | None:
        for m in [*self.maps.values(), *self.gone]:
            if m.obj is obj:
                return m
        return None

    def read(self, lo: int, n: int) -> bytes:
        out = bytearray(n)
        for m in self.overlapping(lo, lo + n):
            a, b = max(lo, m.addr), min(lo + n, m.end)
            out[a - lo : b - lo] = m.read(a - m.addr, b - a)
        return bytes(out)

    def pick_mapping(self, k: int) -> MappingModel | None:
        pool = [*self.live(), *self.gone[-3:]]
        return pool[k % len(pool)] if pool else None

    # -- mapping ---------------------------------------------------------------------------

    def _map_range_error(self, offset: int, span: int) -> type[BaseException] | None:
        """Steps 6-8 of map validation."""
        if offset % P:
            return OffsetUnalignedError
        if offset < 0 or offset + span > self.size:
            return LengthOutOfRangeError
        addr = self.address + offset
        if self.overlapping(addr, addr + span):
            return MappingExistsError
        return None

    def _added(self, m: MappingModel, got: Any) -> None:
        assert got is not None
        m.obj = got
        self.maps[m.addr] = m

    @rule(offset=paged(-2, 34), length=paged(-1, 6), prot=protections, sharing=sharings)
    def map_anonymous(self, offset: int, length: int, prot: Protection, sharing: Sharing) -> None:
        if self.closed:
            expected: type[BaseException] | None = ClosedError
        elif length % P:
            expected = LengthUnalignedError
        elif length <= 0:
            expected = LengthOutOfRangeError
        else:
            expected = self._map_range_error(offset, length)
        got, err = outcome(
            lambda: self.rsv.map_anonymous(offset, length, protection=prot, sharing=sharing)
        )
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            m = MappingModel(
                None, self.address + offset, length, prot, sharing, content=bytearray(length)
            )
            self._added(m, got)

    @rule(
        which=st.integers(0, 1),
        source=sources,
        offset=paged(-1, 34),
        length=lengths,
        file_offset=paged(-1, 17),
        prot=protections,
        sharing=sharings,
    )
    def map_file(
        self,
        which: int,
        source: str,
        offset: int,
        length: int | None,
        file_offset: int,
        prot: Protection,
        sharing: Sharing,
    ) -> None:
        f = self.files[which]
        file: Any = {"path": f.path, "fd": f.fd, "rofd": f.rofd, "fileobj": f.fileobj}[source]
        name = {
            "path": f.path,
            "fd": f"file descriptor {f.fd}",
            "rofd": f"file descriptor {f.rofd}",
            "fileobj": f.fileobj.name,
        }[source]
        n = 0 if length is None else length
        expected: type[BaseException] | None = None
        if self.closed:
            expected = ClosedError
        elif file_offset % P:
            expected = OffsetUnalignedError
        elif file_offset < 0:
            expected = MapRangeError
        elif n < 0:
            expected = LengthOutOfRangeError
        elif n % P:
            expected = LengthUnalignedError
        elif (n == 0 and file_offset >= f.size) or (n and file_offset + n > f.size):
            expected = MapRangeError
        else:
            n = n or f.size - file_offset
            expected = self._map_range_error(offset, -(-n // P) * P)
            if expected is None and source == "rofd" and sharing is Sharing.SHARED and W in prot:
                expected = NoAccessError  # the kernel's EACCES
        got, err = outcome(
            lambda: self.rsv.map_file(
                file,
                offset,
                length=length,
                file_offset=file_offset,
                protection=prot,
                sharing=sharing,
            )
        )
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            m = MappingModel(None, self.address + offset, n, prot, sharing, f, file_offset, name)
            self._added(m, got)

    @rule(
        k=picks,
        pages=st.integers(1, 4),
        which=st.integers(-1, 1),
        prot=st.sampled_from([RW, R]),
        sharing=sharings,
    )
    def map_somewhere_free(
        self, k: int, pages: int, which: int, prot: Protection, sharing: Sharing
    ) -> None:
        """A map the model knows will succeed (the other map rules mostly probe errors)."""
        if self.closed:
            return
        n = pages * P
        free = [
            off
            for off in range(0, self.size - n + 1, P)
            if not self.overlapping(self.address + off, self.address + off + n)
        ]
        if not free:
            return
        off = free[k % len(free)]
        if which < 0:
            got = self.rsv.map_anonymous(off, n, protection=prot, sharing=sharing)
            m = MappingModel(None, self.address + off, n, prot, sharing, content=bytearray(n))
        else:
            f = self.files[which]
            fo = (k % (f.size // P - pages + 1)) * P
            got = self.rsv.map_file(
                f.path, off, length=n, file_offset=fo, protection=prot, sharing=sharing
            )
            m = MappingModel(None, self.address + off, n, prot, sharing, f, fo, f.path)
        TALLY["model: operations"] += 1
        self._added(m, got)

    @rule(k=picks, pinned=st.booleans())
    def unmap(self, k: int, pinned: bool) -> None:
        held = [m for g in self.groups for m in g.pinned]
        m = held[k % len(held)] if pinned and held else self.pick_mapping(k)
        if m is None:
            return
        is_live = m.addr in self.maps and self.maps[m.addr] is m
        expected = BufferError if is_live and self.pinned(m) else None
        _, err = outcome(m.obj.unmap)
        TALLY["model: operations"] += 1
        check(err, expected)
        if is_live and expected is None:
            del self.maps[m.addr]
            self.gone.append(m)
        assert m.obj.closed == (expected is None)

    # -- extent ----------------------------------------------------------------------------

    @rule(n=paged(-1, 12))
    def extend(self, n: int) -> None:
        if self.size + n > GROW_LIMIT:
            return
        if self.closed:
            expected: type[BaseException] | None = ClosedError
        elif n % P:
            expected = LengthUnalignedError
        elif n < 0:
            expected = LengthOutOfRangeError
        else:
            expected = None
        _, err = outcome(lambda: self.rsv.extend(n))
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            self.size += n
            self.max_size = max(self.max_size, self.size)

    @rule(
        where=st.sampled_from(["front", "tail", "any"]),
        n=paged(-1, 10),
        offset=paged(-1, 40),
    )
    def shrink(self, where: str, n: int, offset: int) -> None:
        if where == "front":
            offset = 0
        elif where == "tail":
            offset = self.size - n
        cur = self.size
        expected: type[BaseException] | None = None
        if self.closed:
            expected = ClosedError
        elif offset % P:
            expected = OffsetUnalignedError
        elif n % P:
            expected = LengthUnalignedError
        elif offset < 0 or offset >= cur:
            expected = OffsetOutOfRangeError
        elif n <= 0 or offset + n > cur:
            expected = LengthOutOfRangeError
        elif (offset != 0 and offset + n != cur) or (offset == 0 and n == cur):
            expected = NotSupportedError
        elif self.overlapping(self.address + offset, self.address + offset + n):
            expected = ReservationNotEmptyError
        _, err = outcome(lambda: self.rsv.shrink(offset, n))
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            if offset == 0:
                old = self.address
                self.address += n
                self.max_size -= n
                assert kernel.is_free(old, old + n), "a shrunk head must go back to the system"
            self.size -= n

    # -- lookups ---------------------------------------------------------------------------

    @rule(
        aim=st.none() | picks,
        edge=st.booleans(),
        delta=st.integers(-2, 1),
        offset=st.integers(-3 * P, 70 * P),
        length=st.sampled_from([0, 1, 2, 3, P - 1, P, P + 1, 3 * P, -1]),
    )
    def find(self, aim: int | None, edge: bool, delta: int, offset: int, length: int) -> None:
        live = self.live()
        if aim is not None and live:
            # Right at, before or after a mapping's first or last byte.
            m = live[aim % len(live)]
            offset = (m.end if edge else m.addr) - self.address + delta
        got = self.rsv.find(offset, length)
        TALLY["model: operations"] += 1
        if self.closed or length < 0:
            assert got is None
            return
        lo = self.address + offset
        hits = self.overlapping(lo, lo + (length or 1))
        assert got is (hits[0].obj if hits else None)

    @rule(k=picks, forward=st.booleans())
    def find_neighbour(self, k: int, forward: bool) -> None:
        m = self.pick_mapping(k)
        if m is None:
            return
        got = (self.rsv.find_next if forward else self.rsv.find_prev)(m.obj)
        TALLY["model: operations"] += 1
        live = self.live()
        if m not in live:
            assert got is None
            return
        i = live.index(m) + (1 if forward else -1)
        assert got is (live[i].obj if 0 <= i < len(live) else None)

    # -- views -----------------------------------------------------------------------------

    def _hold(
        self,
        base: memoryview,
        start: int,
        pinned: list[MappingModel],
        window: tuple[int, int],
        how: int,
    ) -> None:
        group = Group(base, start, pinned, window, [])
        if how & 1:
            group.extra.append(base[1:])
        if how & 2:
            group.extra.append(memoryview(base.obj))
        if how & 4 and len(base):
            group.array = np.frombuffer(base, dtype=np.uint8)
        self.groups.append(group)

    @precondition(lambda self: len(self.groups) < MAX_GROUPS)
    @rule(
        k=picks,
        readable=st.booleans(),
        eighths=st.tuples(st.integers(0, 8), st.none() | st.integers(0, 8)),
        wild=st.none() | st.tuples(st.integers(-1, 3 * P), st.none() | st.integers(-1, 3 * P)),
        how=st.integers(0, 7),
    )
    def view(
        self,
        k: int,
        readable: bool,
        eighths: tuple[int, int | None],
        wild: tuple[int, int | None] | None,
        how: int,
    ) -> None:
        pool = [m for m in self.live() if R in m.protection]
        m = pool[k % len(pool)] if readable and pool else self.pick_mapping(k)
        if m is None:
            return
        if wild is None:
            # In range: offset and length in eighths of the mapping.
            offset = m.size * eighths[0] // 8
            length = None if eighths[1] is None else (m.size - offset) * eighths[1] // 8
        else:
            offset, length = wild
        expected: type[BaseException] | None = None
        n = m.size - offset if length is None else length
        if m.addr not in self.maps or self.maps[m.addr] is not m:
            expected = ClosedError
        elif R not in m.protection:
            expected = NoAccessError
        elif offset < 0 or offset > m.size:
            expected = OffsetOutOfRangeError
        elif n < 0 or offset + n > m.size:
            expected = LengthOutOfRangeError
        got, err = outcome(lambda: m.obj.view(offset, length))
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            assert len(got) == n and got.readonly == (W not in m.protection)
            self._hold(got, m.addr + offset, [m], (m.addr + offset, n), how)

    @precondition(lambda self: len(self.groups) < MAX_GROUPS)
    @rule(
        aim=st.none() | picks,
        offset=st.integers(-1, 40),
        delta=st.integers(-1, 2),
        length=st.none() | st.integers(-1, 12),
        how=st.integers(0, 7),
    )
    def reservation_view(
        self, aim: int | None, offset: int, delta: int, length: int | None, how: int
    ) -> None:
        live = self.live()
        if aim is not None and live:
            # Aim at a run of mappings laid back to back, give or take a page at the end.
            i = aim % len(live)
            end = live[i].end
            for m in live[i + 1 :]:
                if m.addr != end:
                    break
                end = m.end
            off = live[i].addr - self.address + max(delta, 0) * 100
            n = None if length is None else end - self.address - off + delta * P
        else:
            # in pages, plus one byte off now and then: views need no alignment
            off = offset * P + (offset % 3 == 2)
            n = None if length is None else length * P
        expected: type[BaseException] | None = None
        lo = self.address + off
        size = self.size
        count = size - off if n is None else n
        covered: list[MappingModel] = []
        if self.closed:
            expected = ClosedError
        elif off < 0 or off > size:
            expected = OffsetOutOfRangeError
        elif count < 0 or off + count > size:
            expected = LengthOutOfRangeError
        elif count:
            pos = lo
            for m in self.overlapping(lo, lo + count):
                if m.addr > pos:
                    break
                if R not in m.protection:
                    expected = NoAccessError
                    break
                covered.append(m)
                pos = m.end
            if pos < lo + count:
                expected = NoAccessError
        got, err = outcome(lambda: self.rsv.view(off, n))
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None:
            assert len(got) == count
            if count:
                assert got.readonly == any(W not in m.protection for m in covered)
                self._hold(got, lo, covered, (lo, count), how)
            else:
                got.release()

    @precondition(lambda self: self.groups)
    @rule(k=picks)
    def release(self, k: int) -> None:
        self.groups.pop(k % len(self.groups)).release()

    @precondition(lambda self: self.groups)
    @rule(k=picks, pos=picks, data=st.binary(min_size=1, max_size=64), numpy=st.booleans())
    def write(self, k: int, pos: int, data: bytes, numpy: bool) -> None:
        g = self.groups[k % len(self.groups)]
        if g.base.readonly or not len(g.base):
            return
        x = pos % len(g.base)
        addr = g.start + x
        m = next(m for m in g.pinned if m.addr <= addr < m.end)
        # Stay inside the mapped bytes of one mapping (past a file's end the page is not
        # backed by the file).
        data = data[: min(len(g.base) - x, m.addr + m.size - addr)]
        if not data:
            return
        if numpy and g.array is not None:
            g.array[x : x + len(data)] = np.frombuffer(data, dtype=np.uint8)
        else:
            g.base[x : x + len(data)] = data
        m.write(addr - m.addr, data)
        TALLY["model: operations"] += 1

    @rule(k=picks, offset=st.integers(-1, 6 * P), length=st.none() | st.integers(-1, 6 * P))
    def persist(self, k: int, offset: int, length: int | None) -> None:
        m = self.pick_mapping(k)
        if m is None:
            return
        n = m.size - offset if length is None else length
        expected: type[BaseException] | None = None
        if m.addr not in self.maps or self.maps[m.addr] is not m:
            expected = ClosedError
        elif offset < 0 or offset > m.size:
            expected = OffsetOutOfRangeError
        elif n < 0 or offset + n > m.size:
            expected = LengthOutOfRangeError
        _, err = outcome(lambda: m.obj.persist(offset, length))
        TALLY["model: operations"] += 1
        check(err, expected)

    # -- close -----------------------------------------------------------------------------

    @rule(dice=st.integers(0, 15))
    def close(self, dice: int) -> None:
        if dice != 7:  # rarely: everything after a close is ClosedError or None
            return
        expected = BufferError if self.groups else None
        _, err = outcome(self.rsv.close)
        TALLY["model: operations"] += 1
        check(err, expected)
        if expected is None and not self.closed:
            assert kernel.is_free(self.base, self.address + self.max_size)
            self.closed = True
            self.gone += self.live()
            self.maps.clear()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        rsv = self.rsv
        assert rsv.closed == self.closed
        live = self.live()
        assert [m.obj for m in live] == rsv.mappings()
        if self.closed:
            assert rsv.find_first() is None and rsv.find_last() is None
        else:
            assert (rsv.address, rsv.size, rsv.max_size) == (
                self.address,
                self.size,
                self.max_size,
            )
            assert rsv.holes == []
            assert rsv.find_first() is (live[0].obj if live else None)
            assert rsv.find_last() is (live[-1].obj if live else None)
        for m in live:
            o = m.obj
            assert (o.address, o.size, o.offset, o.file_offset) == (
                m.addr,
                m.size,
                m.addr - self.address,
                m.file_offset,
            )
            assert (o.protection, o.sharing, o.file, o.closed) == (
                m.protection,
                m.sharing,
                m.name,
                False,
            )
            assert o.reservation is rsv
            if m.file is not None and m.sharing is Sharing.SHARED:
                assert o.granularity in (Granularity.PAGE, Granularity.CACHE_LINE)
            else:
                assert o.granularity is Granularity.BYTE
            assert rsv.find(m.addr - self.address) is o
            assert rsv.find(m.end - 1 - self.address) is o
            # A range whose last byte is the mapping's first, or which starts at its last.
            for edge in (m.addr, m.end):
                lowest = self.overlapping(edge - 1, edge + 1)[0].obj
                assert rsv.find(edge - 1 - self.address, 2) is lowest
        for m in self.gone:
            assert m.obj.closed
        assert_matches_kernel(rsv)

    @invariant()
    def bytes_match_model(self) -> None:
        for g in self.groups:
            want = self.read(g.start, len(g.base))
            assert bytes(g.base) == want
            if g.array is not None:
                assert g.array.tobytes() == want
                assert g.array.flags.writeable == (not g.base.readonly)
            for extra in g.extra:
                if extra.obj is g.base.obj and len(extra) == g.window[1]:
                    assert bytes(extra) == self.read(g.window[0], g.window[1])
                else:
                    assert bytes(extra) == want[1:]
        for f in self.files:
            assert os.pread(f.fd, f.size + 1, 0) == bytes(f.data)

    def teardown(self) -> None:
        try:
            for g in self.groups:
                g.release()
            self.groups.clear()
            start = self.base
            self.rsv.close()
            assert self.rsv.closed and self.rsv.mappings() == []
            for m in [*self.gone, *self.maps.values()]:
                assert m.obj.closed
            assert kernel.is_free(start, self.address + self.max_size)
        finally:
            for f in self.files:
                os.close(f.fd)
                os.close(f.rofd)
                f.fileobj.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


PROFILES = profiles(
    quick={"examples": 60, "steps": 40, "async_examples": 15},
    long={"examples": 1000, "steps": 80, "async_examples": 250},
)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("api", ["sync", "asyncio", "trio"], indirect=True)
def test_reservation_matches_model(api: str, profile: Profile) -> None:
    examples = profile["examples"] if api == "sync" else profile["async_examples"]
    run_state_machine_as_test(
        ReservationMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=profile["steps"],
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
