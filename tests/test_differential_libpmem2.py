"""Differential test: the same random operations on the real libpmem2 and on ``aiopmem.sync``.

Each seed drives one libpmem2 reservation (called through ctypes) and one aiopmem reservation
through the same random sequence of reserve, extend, shrink, map_file, unmap and lookups
(find, find_prev, find_next, find_first, find_last), and after every step compares:

- the outcome: libpmem2's return value against aiopmem's exception ``.value`` (``-errno`` for
  a plain ``OSError``), 0 for success;
- the reservation's size and how far its address moved from where it was reserved;
- every mapping pair's offset, size and store granularity, and the list of mappings found by
  walking libpmem2's find_first/find_next against ``mappings()``;
- lookup results, as mapping pairs; "not found" is None in aiopmem and
  PMEM2_E_MAPPING_NOT_FOUND in libpmem2;
- the kernel's view of both reservations (/proc/self/maps, relative to their addresses).

**How extend is made comparable.** libpmem2 holds address space in 2 MiB granules: a
reservation of up to 2 MiB made at a fixed, 2 MiB-aligned address takes 4 MiB, and extend()
succeeds without a syscall while the end stays inside what it holds, and past that only if the
space behind happens to be free. aiopmem's extend() cannot fail up to ``max_size`` and past it
takes the space behind only if it is free. So each seed places both reservations at fixed
addresses in a scratch area the test reserved for itself: the libpmem2 one at a 2 MiB boundary
with a fence (a PROT_NONE mapping of the test's) right after its 4 MiB, the aiopmem one with
``max_size`` = 2 MiB and a fence right after that. An extend whose end stays within 2 MiB of
where the reservation started must then succeed in both; one whose end reaches past 4 MiB must
fail in both with PMEM2_E_MAPPING_EXISTS (both try to take the fenced space); ends in between
(inside libpmem2's padding, past aiopmem's ``max_size``) are not generated (NOT_GENERATED).
Reservations start at 1-64 pages. Maps take files of 1-4 pages, one with a partial last page,
an empty one, and descriptors both must refuse or restrict (read-only, write-only, a directory,
-1, closed, O_PATH, /dev/null, a FIFO), with protections rw, r, w, rx or none, shared or
private; aiopmem gets the same descriptor or, for the files, the path.

The scratch area is the test's own: the reservations and mappings are freed after each seed,
also on failure (libpmem2's mappings before its reservation), then only the PROT_NONE
anonymous pieces left in the area (fences, libpmem2's padding) are unmapped.

Every divergence the contract explains is listed in ``DELIBERATE`` with its reason, and is
recognised only in the exact shape described there (the expected code on each side); anything
else fails the test with the seed, the step, the operation and the steps before it.
``test_deliberate_differences_still_hold`` checks each entry of the table on a directed case,
so that the table cannot go stale. ``python tests/test_differential_libpmem2.py SEED [STEPS]``
replays one seed, printing every step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiopmem.sync import (
    ALIGNMENT,
    Granularity,
    Mapping,
    PmemError,
    Protection,
    Reservation,
    Sharing,
    reserve,
)
from reliability import TALLY, Profile, kernel_view, profiles

try:
    _PMEM2 = ctypes.CDLL("libpmem2.so.1", use_errno=True)
except OSError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"libpmem2 cannot be loaded ({exc})", allow_module_level=True)

P = ALIGNMENT
MiB = 1 << 20
#: libpmem2's alignment granule on Linux for reservations below 1 GiB.
GRANULE = 2 * MiB
#: a fixed-address libpmem2 reservation of up to one granule holds two.
LIB_HOLD = 2 * GRANULE
#: aiopmem's max_size: the end libpmem2's padding guarantees (see the module docstring).
AIO_MAX = GRANULE
#: reservations grow to at most this many pages by extend().
MAX_PAGES = 64

# -- libpmem2 through ctypes -----------------------------------------------------------------

PMEM2_E_NOSUPP = -100001
PMEM2_E_MAP_RANGE = -100006
PMEM2_E_MAPPING_EXISTS = -100007
PMEM2_E_OFFSET_OUT_OF_RANGE = -100010
PMEM2_E_LENGTH_UNALIGNED = -100015
PMEM2_E_MAPPING_NOT_FOUND = -100016
PMEM2_E_SOURCE_EMPTY = -100018
PMEM2_E_LENGTH_OUT_OF_RANGE = -100030
PMEM2_E_VM_RESERVATION_NOT_EMPTY = -100033
PMEM2_E_ADDRESS_UNALIGNED = -100022
PMEM2_E_OFFSET_UNALIGNED = -100011
PMEM2_E_INVALID_FILE_HANDLE = -100004
#: what aiopmem reports for a file_offset past 2**63-1 (the file and length checks, in order)
LATER_MAP_ERRORS = (PMEM2_E_SOURCE_EMPTY, PMEM2_E_LENGTH_UNALIGNED, PMEM2_E_MAP_RANGE)
#: where libpmem2 stops a map with nothing left to map: a reservation-offset check, or mmap
NOTHING_LEFT_LIB_ERRORS = (
    PMEM2_E_OFFSET_UNALIGNED,
    PMEM2_E_LENGTH_OUT_OF_RANGE,
    PMEM2_E_MAPPING_EXISTS,
    -errno.EINVAL,
)
CODE_NAMES = {
    0: "0",
    -errno.EINVAL: "-EINVAL",
    -errno.EBADF: "-EBADF",
    -100001: "NOSUPP",
    -100004: "INVALID_FILE_HANDLE",
    -100005: "INVALID_FILE_TYPE",
    -100006: "MAP_RANGE",
    -100007: "MAPPING_EXISTS",
    -100010: "OFFSET_OUT_OF_RANGE",
    -100011: "OFFSET_UNALIGNED",
    -100015: "LENGTH_UNALIGNED",
    -100016: "MAPPING_NOT_FOUND",
    -100018: "SOURCE_EMPTY",
    -100022: "ADDRESS_UNALIGNED",
    -100030: "LENGTH_OUT_OF_RANGE",
    -100032: "NO_ACCESS",
    -100033: "VM_RESERVATION_NOT_EMPTY",
}
PMEM2_GRANULARITY_PAGE = 2
PMEM2_SHARED, PMEM2_PRIVATE = 0, 1
#: protection flags by the letters of /proc/self/maps
PMEM2_PROT = {"r": 1 << 30, "w": 1 << 31, "x": 1 << 29}

_vp = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_sz = ctypes.c_size_t
_int = ctypes.c_int


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_PMEM2, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


rsv_new = _declare("pmem2_vm_reservation_new", _int, _pp, _vp, _sz)
rsv_delete = _declare("pmem2_vm_reservation_delete", _int, _pp)
rsv_extend = _declare("pmem2_vm_reservation_extend", _int, _vp, _sz)
rsv_shrink = _declare("pmem2_vm_reservation_shrink", _int, _vp, _sz, _sz)
rsv_get_address = _declare("pmem2_vm_reservation_get_address", _vp, _vp)
rsv_get_size = _declare("pmem2_vm_reservation_get_size", _sz, _vp)
rsv_map_find = _declare("pmem2_vm_reservation_map_find", _int, _vp, _sz, _sz, _pp)
rsv_map_find_prev = _declare("pmem2_vm_reservation_map_find_prev", _int, _vp, _vp, _pp)
rsv_map_find_next = _declare("pmem2_vm_reservation_map_find_next", _int, _vp, _vp, _pp)
rsv_map_find_first = _declare("pmem2_vm_reservation_map_find_first", _int, _vp, _pp)
rsv_map_find_last = _declare("pmem2_vm_reservation_map_find_last", _int, _vp, _pp)
source_from_fd = _declare("pmem2_source_from_fd", _int, _pp, _int)
source_delete = _declare("pmem2_source_delete", _int, _pp)
config_new = _declare("pmem2_config_new", _int, _pp)
config_delete = _declare("pmem2_config_delete", _int, _pp)
config_set_granularity = _declare("pmem2_config_set_required_store_granularity", _int, _vp, _int)
config_set_offset = _declare("pmem2_config_set_offset", _int, _vp, _sz)
config_set_length = _declare("pmem2_config_set_length", _int, _vp, _sz)
config_set_sharing = _declare("pmem2_config_set_sharing", _int, _vp, _int)
config_set_protection = _declare("pmem2_config_set_protection", _int, _vp, ctypes.c_uint)
config_set_vm_reservation = _declare("pmem2_config_set_vm_reservation", _int, _vp, _vp, _sz)
map_new = _declare("pmem2_map_new", _int, _pp, _vp, _vp)
map_delete = _declare("pmem2_map_delete", _int, _pp)
map_get_address = _declare("pmem2_map_get_address", _vp, _vp)
map_get_size = _declare("pmem2_map_get_size", _sz, _vp)
map_get_granularity = _declare("pmem2_map_get_store_granularity", _int, _vp)

# The scratch area's own mappings, through libc (the test must not use aiopmem's binding).
_LIBC = ctypes.CDLL(None, use_errno=True)
_mmap = _LIBC.mmap
_mmap.restype = _vp
_mmap.argtypes = [_vp, _sz, _int, _int, _int, ctypes.c_long]
_munmap = _LIBC.munmap
_munmap.restype = _int
_munmap.argtypes = [_vp, _sz]
PROT_NONE, MAP_PRIVATE, MAP_ANONYMOUS = 0, 0x02, 0x20
MAP_FAILED = (1 << 64) - 1


def _ptr(p: ctypes.c_void_p) -> int:
    return p.value or 0


# -- the table of deliberate differences -----------------------------------------------------

#: Divergences the contract (API.md "Deliberate differences from libpmem2", and the mapping
#: rules it states, repeated in docs/design.md) explains. Each is recognised only in the shape
#: its classifier checks; the counts of each seen in a run are in the reliability tally.
DELIBERATE: dict[str, str] = {
    "reserve(0)": "reserve(0) is refused with LengthOutOfRangeError; libpmem2 accepts a "
    "zero-size reservation, which it can then never delete (delete fails with -EINVAL)",
    "lookup not found": "not-found lookups return None; libpmem2 returns "
    "PMEM2_E_MAPPING_NOT_FOUND (normalised to 'not found' on both sides)",
    "close with mappings": "closing a reservation unmaps what is left in it; libpmem2's delete "
    "fails with PMEM2_E_VM_RESERVATION_NOT_EMPTY",
    "close releases padding": "closing releases the whole range; libpmem2 leaves its alignment "
    "padding mapped (PROT_NONE) after a delete",
    "file_offset > 2**63-1": "file_offset is validated in the contract's order (it is then past "
    "the end of the file: MapRangeError, or an earlier file/length error); libpmem2's "
    "pmem2_config_set_offset refuses it first with PMEM2_E_OFFSET_OUT_OF_RANGE",
    "shrink overflow": "shrink ranges are checked for overflow: offset + size past 2**64 is "
    "LengthOutOfRangeError; libpmem2's check wraps (here to 0) and it reports PMEM2_E_NOSUPP",
    "find overflow": "a lookup range past 2**64 finds nothing (API.md: lookups never raise, an "
    "out-of-range range gives None; ranges are checked for overflow); libpmem2's range wraps, "
    "so find(2**64 - 4096, 8192) finds the mapping at offset 0",
    "find in a partial page": "a mapping whose last page is partial occupies the whole page for "
    "find (API.md: [offset, offset + round_up(size)) for overlap checks, shrink and find); "
    "libpmem2's lookup intervals end at the last byte of content",
    "O_PATH descriptor": "a descriptor opened with O_PATH cannot be mapped: aiopmem refuses it "
    "with InvalidFileHandleError among its file checks (API.md step 1: a bad descriptor); "
    "libpmem2 accepts it as a source (fstat works on it), runs its other checks and fails in "
    "mmap with -EBADF",
    "nothing left to map": "file_offset at the end of the file with length 0 (to the end) is "
    "MapRangeError by the contract's step 5 ('nothing left to map'); libpmem2 lets it through "
    "its file checks and fails later: on the reservation offset's checks (steps 6-8), or in "
    "the mmap of 0 bytes with -EINVAL",
}

#: Inputs the generator avoids, and why.
NOT_GENERATED: dict[str, str] = {
    "map_anonymous": "libpmem2 has no counterpart",
    "negative integers": "libpmem2 takes size_t; aiopmem's checks for negatives are tested "
    "against the contract elsewhere",
    "extend into libpmem2's padding": "an end between 2 MiB and 4 MiB past the reservation's "
    "start succeeds in libpmem2 (its padding) and fails in aiopmem (past max_size, fenced): "
    "the headroom difference of the contract, with nothing to compare after it",
    "extend or map-offset overflow": "libpmem2's checks wrap: it would grow to 16 EiB or map "
    "over a neighbouring mapping (the contract's overflow difference)",
    "unmap twice": "a second pmem2_map_delete is a use after free",
}

# -- the operations --------------------------------------------------------------------------


def round_up(n: int) -> int:
    return -(-n // P) * P


@dataclass
class Files:
    """The files both libraries map, and the descriptors libpmem2 (and aiopmem) are given."""

    fds: dict[str, int]
    paths: dict[str, str]
    sizes: dict[str, int | None]

    @classmethod
    @contextlib.contextmanager
    def made_in(cls, tmp: Path) -> Iterator[Files]:
        specs = {"p1": P, "p2": 2 * P, "p3": 3 * P, "p4": 4 * P, "partial": 2 * P + 100, "empty": 0}
        fds: dict[str, int] = {}
        paths: dict[str, str] = {}
        sizes: dict[str, int | None] = {}
        try:
            for name, size in specs.items():
                path = tmp / f"{name}.bin"
                with open(path, "wb") as f:
                    f.write(bytes([len(name)]) * size)
                fds[name] = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                paths[name] = str(path)
                sizes[name] = size
            fds["read-only fd"] = os.open(paths["p2"], os.O_RDONLY | os.O_CLOEXEC)
            sizes["read-only fd"] = 2 * P
            fds["write-only fd"] = os.open(paths["p2"], os.O_WRONLY | os.O_CLOEXEC)
            sizes["write-only fd"] = None
            fds["directory"] = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            paths["directory"] = str(tmp)
            sizes["directory"] = None
            fds["fd -1"] = -1
            sizes["fd -1"] = None
            fds["O_PATH fd"] = os.open(paths["p2"], os.O_PATH | os.O_CLOEXEC)
            sizes["O_PATH fd"] = None
            fds["/dev/null"] = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            sizes["/dev/null"] = None
            os.mkfifo(tmp / "fifo")
            fds["fifo"] = os.open(tmp / "fifo", os.O_RDWR | os.O_CLOEXEC)
            sizes["fifo"] = None
            closed = os.open(paths["p1"], os.O_RDONLY)
            os.close(closed)
            fds["closed fd"] = closed
            sizes["closed fd"] = None
            yield cls(fds, paths, sizes)
        finally:
            for name, fd in fds.items():
                if fd >= 0 and name != "closed fd":
                    os.close(fd)


FILE_WEIGHTS = {
    "p1": 6,
    "p2": 6,
    "p3": 4,
    "p4": 4,
    "partial": 5,
    "empty": 1,
    "read-only fd": 2,
    "write-only fd": 1,
    "directory": 1,
    "fd -1": 1,
    "O_PATH fd": 1,
    "/dev/null": 1,
    "fifo": 1,
    "closed fd": 1,
}


@dataclass(frozen=True)
class Op:
    kind: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        def show(a: Any) -> str:
            if isinstance(a, int) and not isinstance(a, bool) and a >= P:
                pages, rest = divmod(a, P)
                return f"{pages}P" + (f"+{rest}" if rest else "") if a < 1 << 40 else hex(a)
            return repr(a)

        return f"{self.kind}(" + ", ".join(show(a) for a in self.args) + ")"


@dataclass
class Pair:
    """One mapping in both worlds."""

    lib: int  # struct pmem2_map *
    aio: Mapping


@dataclass
class Outcome:
    code: int
    #: lookups: the index of the pair found (None: not found); maps: the new pair
    found: int | None = None
    lookup: bool = False

    def __str__(self) -> str:
        if self.found is not None:
            return f"{CODE_NAMES.get(self.code, self.code)}, mapping #{self.found}"
        if self.lookup and self.code == 0:
            return "not found"
        return str(CODE_NAMES.get(self.code, self.code))


# -- the scratch area and the two reservations -----------------------------------------------


class Retry(Exception):
    """Something outside the test took part of its scratch area: set the seed up again."""


@dataclass
class Arena:
    """A PROT_NONE scratch area the test reserved for itself, laid out as::

        [slack][libpmem2: 4 MiB][fence: 2 MiB][aiopmem: 2 MiB][fence: 2 MiB][slack]

    with the libpmem2 part 2 MiB-aligned. The two parts are unmapped just before the
    reservations are made there; at the end every PROT_NONE anonymous piece left in the area
    (fences, libpmem2's leaked padding) is unmapped, never anything else."""

    start: int = 0
    length: int = 6 * GRANULE
    lib0: int = 0
    aio0: int = 0

    def __post_init__(self) -> None:
        addr = _mmap(None, self.length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if addr is None or addr == MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap of the scratch area failed")
        self.start = addr
        self.lib0 = -(-addr // GRANULE) * GRANULE
        self.aio0 = self.lib0 + LIB_HOLD + GRANULE
        assert self.aio0 + AIO_MAX + GRANULE <= self.start + self.length

    @property
    def lib_fence(self) -> int:
        return self.lib0 + LIB_HOLD

    @property
    def aio_fence(self) -> int:
        return self.aio0 + AIO_MAX

    def open_zones(self) -> None:
        for addr, length in ((self.lib0, LIB_HOLD), (self.aio0, AIO_MAX)):
            assert _munmap(addr, length) == 0

    def release_placeholders(self, lo: int, hi: int) -> None:
        """Unmap the PROT_NONE anonymous pieces of [lo, hi) (clipped to the area)."""
        lo, hi = max(lo, self.start), min(hi, self.start + self.length)
        for a, b, perms, _off, inode, path in kernel_view(lo, hi):
            if perms == "---p" and inode == 0 and not path:
                assert _munmap(a, b - a) == 0

    def close(self) -> None:
        self.release_placeholders(self.start, self.start + self.length)


def kernel_layout(addr: int, size: int) -> list[tuple[int, int, str, int, int]]:
    """The kernel's view of [addr, addr+size), relative to addr."""
    return [
        (a - addr, b - addr, perms, off, inode)
        for a, b, perms, off, inode, _ in kernel_view(addr, addr + size)
    ]


class Divergence(AssertionError):
    pass


@dataclass
class World:
    """One libpmem2 reservation and one aiopmem reservation driven in step."""

    seed: int
    files: Files
    arena: Arena
    lib: ctypes.c_void_p = field(default_factory=ctypes.c_void_p)
    aio: Reservation | None = None
    pairs: list[Pair] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    #: (libpmem2's, aiopmem's) result code of every step
    codes: list[tuple[int, int]] = field(default_factory=list)
    step: int = 0
    #: how often each deliberate difference was seen
    seen: dict[str, int] = field(default_factory=dict)
    #: how often each operation gave each (agreed) result code
    outcomes: Counter[str] = field(default_factory=Counter)

    # -- failure reports

    def fail(self, what: str) -> None:
        recent = "\n".join(f"    {line}" for line in self.history[-25:])
        raise Divergence(
            f"seed {self.seed}, step {self.step}: {what}\n  steps so far (last 25):\n{recent}\n"
            f"  replay: python tests/test_differential_libpmem2.py {self.seed} {self.step + 1}"
        )

    def deliberate(self, key: str) -> None:
        assert key in DELIBERATE, key
        self.seen[key] = self.seen.get(key, 0) + 1

    # -- state

    @property
    def lib_addr(self) -> int:
        return rsv_get_address(self.lib) or 0

    @property
    def lib_size(self) -> int:
        return int(rsv_get_size(self.lib))

    @property
    def rsv(self) -> Reservation:
        assert self.aio is not None
        return self.aio

    def moved(self) -> tuple[int, int]:
        """How far each reservation's address moved from where it was made."""
        return self.lib_addr - self.arena.lib0, self.rsv.address - self.arena.aio0

    def end(self) -> int:
        """The end of the reservation relative to where it was made (the same in both)."""
        return self.moved()[0] + self.lib_size

    def lib_offset(self, m: int) -> int:
        return (map_get_address(m) or 0) - self.lib_addr

    def index_of_lib(self, m: int) -> int:
        for i, pair in enumerate(self.pairs):
            if pair.lib == m:
                return i
        self.fail(f"libpmem2 returned a mapping the test does not know: {m:#x}")
        raise AssertionError  # unreachable

    def index_of_aio(self, m: Mapping | None) -> int | None:
        if m is None:
            return None
        for i, pair in enumerate(self.pairs):
            if pair.aio is m:
                return i
        self.fail(f"aiopmem returned a mapping the test does not know: {m!r}")
        raise AssertionError  # unreachable

    def lib_found(self, rc: int, out: ctypes.c_void_p) -> Outcome:
        if rc == PMEM2_E_MAPPING_NOT_FOUND and not out.value:
            self.deliberate("lookup not found")
            return Outcome(0, None, lookup=True)
        if rc != 0:
            return Outcome(rc, lookup=True)
        return Outcome(0, self.index_of_lib(_ptr(out)), lookup=True)

    def compare_state(self) -> None:
        lib_moved, aio_moved = self.moved()
        if (self.lib_size, lib_moved) != (self.rsv.size, aio_moved):
            self.fail(
                f"reservation: libpmem2 size {self.lib_size} moved {lib_moved}, "
                f"aiopmem size {self.rsv.size} moved {aio_moved}"
            )
        for i, pair in enumerate(self.pairs):
            lib = (
                self.lib_offset(pair.lib),
                int(map_get_size(pair.lib)),
                Granularity(map_get_granularity(pair.lib)),
            )
            aio = (pair.aio.offset, pair.aio.size, pair.aio.granularity)
            if lib != aio or pair.aio.address != self.rsv.address + pair.aio.offset:
                self.fail(
                    f"mapping #{i}: libpmem2 (offset, size, granularity) {lib}, aiopmem {aio}"
                )
        walked = []
        out = ctypes.c_void_p()
        rc = rsv_map_find_first(self.lib, ctypes.byref(out))
        while rc == 0:
            walked.append(self.index_of_lib(_ptr(out)))
            rc = rsv_map_find_next(self.lib, out, ctypes.byref(out))
        if rc != PMEM2_E_MAPPING_NOT_FOUND:
            self.fail(f"walking libpmem2's mappings ended with {rc}")
        listed = [self.index_of_aio(m) for m in self.rsv.mappings()]
        if walked != listed or sorted(walked) != sorted(range(len(self.pairs))):
            self.fail(f"mappings in address order: libpmem2 {walked}, aiopmem {listed}")
        lib_k = kernel_layout(self.lib_addr, self.lib_size)
        aio_k = kernel_layout(self.rsv.address, self.rsv.size)
        if lib_k != aio_k:
            self.fail(
                "kernel view (offset, end, perms, file offset, inode): "
                f"libpmem2 {lib_k}, aiopmem {aio_k}"
            )

    # -- one step on both sides

    def aio_call(self, fn: Callable[[], Any]) -> tuple[int, Any]:
        try:
            return 0, fn()
        except PmemError as e:
            return e.value, None
        except OSError as e:  # an OS failure without a libpmem2 code
            return -(e.errno or 0), None

    def compare(self, op: Op, lib: Outcome, aio: Outcome, explain: str | None = None) -> None:
        self.history.append(f"{self.step:3}: {op} -> libpmem2 {lib}, aiopmem {aio}")
        self.codes.append((lib.code, aio.code))
        self.outcomes[f"{op.kind} -> {lib.code}"] += lib.code == aio.code
        if (lib.code, lib.found) == (aio.code, aio.found):
            return
        if explain is not None:
            self.deliberate(explain)
            return
        self.fail(f"{op}: libpmem2 {lib}, aiopmem {aio}")

    def run(self, op: Op) -> None:
        getattr(self, "do_" + op.kind.replace(" ", "_"))(op, *op.args)

    def do_extend(self, op: Op, n: int) -> None:
        lib = rsv_extend(self.lib, n)
        aio, _ = self.aio_call(lambda: self.rsv.extend(n))
        self.compare(op, Outcome(lib), Outcome(aio))

    def do_shrink(self, op: Op, off: int, n: int) -> None:
        before = self.lib_size
        lib = rsv_shrink(self.lib, off, n)
        aio, _ = self.aio_call(lambda: self.rsv.shrink(off, n))
        # libpmem2's "offset + size > size" check wraps; it goes on to its middle/whole check.
        wraps = off + n >= 1 << 64 and off < before and (off + n) % (1 << 64) <= before
        explain = None
        if wraps and (lib, aio) == (PMEM2_E_NOSUPP, PMEM2_E_LENGTH_OUT_OF_RANGE):
            explain = "shrink overflow"
        self.compare(op, Outcome(lib), Outcome(aio), explain)

    def do_map(
        self,
        op: Op,
        kind: str,
        off: int,
        file_off: int,
        length: int,
        prot: str,
        shared: bool,
        via_path: bool,
        length_none: bool,
    ) -> None:
        fd = self.files.fds[kind]
        lib, m = lib_map(self.lib, fd, off, file_off, length, prot, shared)
        target: int | str = self.files.paths[kind] if via_path else fd
        protection = Protection.NONE
        for letter, flag in (
            ("r", Protection.READ),
            ("w", Protection.WRITE),
            ("x", Protection.EXEC),
        ):
            if letter in prot:
                protection |= flag
        sharing = Sharing.SHARED if shared else Sharing.PRIVATE
        aio, mapping = self.aio_call(
            lambda: self.rsv.map_file(
                target,
                off,
                length=None if length_none else length,
                file_offset=file_off,
                protection=protection,
                sharing=sharing,
            )
        )
        if (lib == 0) != (aio == 0):
            # Only one side mapped (a divergence): undo it, so that nothing is left behind.
            if m:
                map_delete(ctypes.byref(ctypes.c_void_p(m)))
            if mapping is not None:
                mapping.unmap()
            m, mapping = 0, None
        explain = explain_map(kind, self.files.sizes[kind], file_off, length, lib, aio)
        found = None
        if m and mapping is not None:
            self.pairs.append(Pair(m, mapping))
            found = len(self.pairs) - 1
        self.compare(op, Outcome(lib, found), Outcome(aio, found), explain)

    def do_unmap(self, op: Op, i: int) -> None:
        pair = self.pairs.pop(i)
        ptr = ctypes.c_void_p(pair.lib)
        lib = map_delete(ctypes.byref(ptr))
        aio, _ = self.aio_call(pair.aio.unmap)
        self.compare(op, Outcome(lib), Outcome(aio))

    def do_find(self, op: Op, off: int, n: int) -> None:
        out = ctypes.c_void_p()
        lib = self.lib_found(rsv_map_find(self.lib, off, n, ctypes.byref(out)), out)
        aio = Outcome(0, self.index_of_aio(self.rsv.find(off, n)), lookup=True)
        explain = None
        if lib == aio:
            pass
        elif off + n >= 1 << 64:
            if aio.found is None and lib.found == self.model_find(
                off - (1 << 64), n, rounded=False
            ):
                explain = "find overflow"
        elif (lib.found, aio.found) == (
            self.model_find(off, n, rounded=False),
            self.model_find(off, n, rounded=True),
        ):
            explain = "find in a partial page"
        self.compare(op, lib, aio, explain)

    def model_find(self, off: int, n: int, *, rounded: bool) -> int | None:
        """The lowest pair intersecting [off, off+n) (n == 0: containing off), with mapping
        intervals ending at the content (libpmem2) or at the page boundary (aiopmem)."""
        hi = off + max(n, 1)
        best = None
        for i, pair in enumerate(self.pairs):
            lo_m = pair.aio.offset
            hi_m = lo_m + (round_up(pair.aio.size) if rounded else pair.aio.size)
            if lo_m < hi and off < hi_m and (best is None or lo_m < self.pairs[best].aio.offset):
                best = i
        return best

    def do_find_prev(self, op: Op, i: int) -> None:
        out = ctypes.c_void_p()
        lib = self.lib_found(rsv_map_find_prev(self.lib, self.pairs[i].lib, ctypes.byref(out)), out)
        aio = Outcome(0, self.index_of_aio(self.rsv.find_prev(self.pairs[i].aio)), lookup=True)
        self.compare(op, lib, aio)

    def do_find_next(self, op: Op, i: int) -> None:
        out = ctypes.c_void_p()
        lib = self.lib_found(rsv_map_find_next(self.lib, self.pairs[i].lib, ctypes.byref(out)), out)
        aio = Outcome(0, self.index_of_aio(self.rsv.find_next(self.pairs[i].aio)), lookup=True)
        self.compare(op, lib, aio)

    def do_find_first(self, op: Op) -> None:
        out = ctypes.c_void_p()
        lib = self.lib_found(rsv_map_find_first(self.lib, ctypes.byref(out)), out)
        aio = Outcome(0, self.index_of_aio(self.rsv.find_first()), lookup=True)
        self.compare(op, lib, aio)

    def do_find_last(self, op: Op) -> None:
        out = ctypes.c_void_p()
        lib = self.lib_found(rsv_map_find_last(self.lib, ctypes.byref(out)), out)
        aio = Outcome(0, self.index_of_aio(self.rsv.find_last()), lookup=True)
        self.compare(op, lib, aio)

    # -- making and closing the reservations

    def reserve(self, op: Op, lib_addr: int, aio_addr: int, size: int) -> bool:
        """Reserve on both sides; True when both succeeded."""
        lib = rsv_new(ctypes.byref(self.lib), lib_addr, size)
        aio, rsv = self.aio_call(lambda: reserve(size, address=aio_addr, max_size=AIO_MAX))
        self.aio = rsv
        explain = None
        if size == 0 and lib == 0 and aio == PMEM2_E_LENGTH_OUT_OF_RANGE:
            explain = "reserve(0)"
            # libpmem2 cannot delete a zero-size reservation: it must grow by a page first.
            if rsv_extend(self.lib, P) != 0 or rsv_delete(ctypes.byref(self.lib)) != 0:
                self.fail("libpmem2's zero-size reservation could not be deleted")
            self.arena.release_placeholders(self.arena.lib0, self.arena.lib_fence)
        self.compare(op, Outcome(lib), Outcome(aio), explain)
        return lib == 0 and aio == 0

    def close(self) -> None:
        """Close both reservations and check what each left behind."""
        self.step += 1
        lib_addr, aio_addr = self.lib_addr, self.rsv.address
        lib = rsv_delete(ctypes.byref(self.lib))
        aio, _ = self.aio_call(self.rsv.close)
        explain = None
        if self.pairs and lib == PMEM2_E_VM_RESERVATION_NOT_EMPTY and aio == 0:
            explain = "close with mappings"
            self.free_lib_maps()
            if rsv_delete(ctypes.byref(self.lib)) != 0:
                self.fail("libpmem2's delete failed after its mappings were deleted")
        self.pairs.clear()
        self.compare(Op("close"), Outcome(lib), Outcome(aio), explain)
        left = kernel_view(aio_addr, self.arena.aio_fence)
        if left:
            self.fail(f"aiopmem left {left} mapped after close")
        if any(piece[2] == "---p" for piece in kernel_view(lib_addr, self.arena.lib_fence)):
            self.deliberate("close releases padding")

    def free_lib_maps(self) -> None:
        for pair in self.pairs:
            if pair.lib:
                ptr = ctypes.c_void_p(pair.lib)
                if map_delete(ctypes.byref(ptr)) == 0:
                    pair.lib = 0

    def teardown(self) -> bool:
        """Free whatever is left, libpmem2's mappings before its reservation, also after a
        failure; True when everything was freed."""
        self.free_lib_maps()
        freed = not any(pair.lib for pair in self.pairs)
        if self.lib.value:
            freed = rsv_delete(ctypes.byref(self.lib)) == 0 and freed
        if self.aio is not None and not self.aio.closed:
            try:
                self.aio.close()
            except Exception:
                freed = False
        return freed


def explain_map(
    kind: str, size: int | None, file_off: int, length: int, lib: int, aio: int
) -> str | None:
    """The entry of DELIBERATE a map's divergence is, if any."""
    big_offset = size is not None and file_off > (1 << 63) - 1
    if big_offset and lib == PMEM2_E_OFFSET_OUT_OF_RANGE and aio in LATER_MAP_ERRORS:
        return "file_offset > 2**63-1"
    if kind == "O_PATH fd" and lib != 0 and aio == PMEM2_E_INVALID_FILE_HANDLE:
        return "O_PATH descriptor"
    nothing_left = bool(size) and file_off == size and length == 0
    if nothing_left and lib in NOTHING_LEFT_LIB_ERRORS and aio == PMEM2_E_MAP_RANGE:
        return "nothing left to map"
    return None


def lib_map(
    rsv: ctypes.c_void_p, fd: int, off: int, file_off: int, length: int, prot: str, shared: bool
) -> tuple[int, int]:
    """pmem2_map_new of ``fd`` into ``rsv`` at ``off``: (return value, struct pmem2_map *),
    stopping at the first call that fails, as a program would."""
    src = ctypes.c_void_p()
    rc = source_from_fd(ctypes.byref(src), fd)
    if rc:
        return rc, 0
    cfg = ctypes.c_void_p()
    try:
        if config_new(ctypes.byref(cfg)) != 0:
            raise MemoryError("pmem2_config_new failed")
        bits = sum(PMEM2_PROT[letter] for letter in prot)
        setters: list[Callable[[], int]] = [
            lambda: config_set_granularity(cfg, PMEM2_GRANULARITY_PAGE),
            lambda: config_set_offset(cfg, file_off),
            lambda: config_set_length(cfg, length),
            lambda: config_set_protection(cfg, bits),
            lambda: config_set_sharing(cfg, PMEM2_SHARED if shared else PMEM2_PRIVATE),
            lambda: config_set_vm_reservation(cfg, rsv, off),
        ]
        for setter in setters:
            rc = setter()
            if rc:
                return rc, 0
        m = ctypes.c_void_p()
        rc = map_new(ctypes.byref(m), cfg, src)
        return rc, (_ptr(m) if rc == 0 else 0)
    finally:
        if cfg.value:
            config_delete(ctypes.byref(cfg))
        source_delete(ctypes.byref(src))


# -- the random sequences --------------------------------------------------------------------

#: reservations both sides must refuse, tried (0-2 of them) before the real one
PROBES = ("unaligned address", "unaligned size", "zero size", "occupied")

OP_WEIGHTS = {
    "map": 30,
    "unmap": 12,
    "extend": 12,
    "shrink": 14,
    "find": 15,
    "find prev": 4,
    "find next": 4,
    "find first": 2,
    "find last": 2,
}


def pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def gen_extend(rng: random.Random, world: World) -> Op:
    end, size = world.end(), world.lib_size
    room = min(AIO_MAX - end, MAX_PAGES * P - size) // P
    r = rng.random()
    if r < 0.1 or (r >= 0.35 and room < 1):
        n = 0
    elif r < 0.22:
        n = rng.randint(0, 8) * P + rng.choice((1, P // 2, P - 1))
    elif r < 0.35:
        n = LIB_HOLD - end + rng.randint(1, 4) * P  # the end passes both fences
    else:
        n = rng.randint(1, min(16, room)) * P
    return Op("extend", (n,))


def gen_shrink(rng: random.Random, world: World) -> Op:
    size = world.lib_size
    pages = size // P
    r = rng.random()
    if r < 0.3:
        off, n = 0, rng.randint(1, pages) * P  # the head (all pages: the whole)
    elif r < 0.6:
        n = rng.randint(1, pages) * P  # the tail
        off = size - n
    elif r < 0.68 and pages >= 3:
        a = rng.randint(1, pages - 2)  # the middle
        off, n = a * P, rng.randint(1, pages - 1 - a) * P
    elif r < 0.74:
        off, n = rng.randint(0, pages) * P + rng.choice((1, P // 2)), P
    elif r < 0.8:
        off, n = rng.choice((0, size - P)), P + rng.choice((1, P // 2))
    elif r < 0.85:
        off, n = size + rng.randint(0, 3) * P, P
    elif r < 0.89:
        off, n = rng.choice((0, size - P)), 0
    elif r < 0.94:
        off = size - rng.randint(1, pages) * P
        n = size - off + P
    else:
        # offset + size reaches 2**64 (off == 0) or wraps to off - P, which is below size.
        off, n = rng.randint(0, pages - 1) * P, (1 << 64) - P
    return Op("shrink", (off, n))


def gen_map(rng: random.Random, world: World) -> Op:
    kind = pick(rng, FILE_WEIGHTS)
    fsize = world.files.sizes[kind]
    fpages = -(-(fsize if fsize is not None else 2 * P) // P)
    pages = world.lib_size // P
    r = rng.random()
    if r < 0.85:
        off = rng.randint(0, pages + 1) * P
    elif r < 0.95:
        off = rng.randint(0, pages) * P + rng.choice((1, P // 2))
    else:
        off = rng.choice((pages * P, 1 << 40))
    r = rng.random()
    if r < 0.6:
        file_off = 0
    elif r < 0.85:
        file_off = rng.randint(1, fpages + 1) * P
    elif r < 0.92:
        file_off = rng.choice((100, P // 2, P + 1))
    elif r < 0.96:
        file_off = rng.choice((1 << 63, (1 << 63) + P, (1 << 64) - P))
    else:
        file_off = 1 << 62
    r = rng.random()
    if r < 0.5:
        length = 0
    elif r < 0.85:
        length = rng.randint(1, 5) * P
    elif r < 0.95:
        length = rng.choice((P + 1, 100))
    else:
        length = 1 << 62
    via_path = kind in world.files.paths and rng.random() < 0.5
    return Op(
        "map",
        (
            kind,
            off,
            file_off,
            length,
            rng.choice(("rw",) * 8 + ("r",) * 3 + ("", "w", "rx")),  # the protection
            rng.random() < 0.75,  # shared (else private)
            via_path,
            length == 0 and rng.random() < 0.5,  # aiopmem gets length=None (else 0)
        ),
    )


def gen_find(rng: random.Random, world: World) -> Op:
    size = world.lib_size
    r = rng.random()
    if r < 0.6:
        off = rng.randrange(0, size + 2 * P)
    elif r < 0.92:
        off = rng.randint(0, size // P + 2) * P
    elif r < 0.96:
        off = 1 << 40
    else:
        off = (1 << 64) - rng.randint(1, 3) * P  # "negative": the range wraps in libpmem2
    r = rng.random()
    if r < 0.4:
        n = 0
    elif r < 0.8:
        n = rng.randint(1, 3 * P)
    elif r < 0.97:
        n = rng.randint(1, 4) * P
    else:
        n = 1 << 62
    return Op("find", (off, n))


def next_op(rng: random.Random, world: World) -> Op:
    weights = dict(OP_WEIGHTS)
    if not world.pairs:
        for kind in ("unmap", "find prev", "find next"):
            del weights[kind]
    kind = pick(rng, weights)
    if kind == "map":
        return gen_map(rng, world)
    if kind == "extend":
        return gen_extend(rng, world)
    if kind == "shrink":
        return gen_shrink(rng, world)
    if kind == "find":
        return gen_find(rng, world)
    if kind in ("unmap", "find prev", "find next"):
        return Op(kind, (rng.randrange(len(world.pairs)),))
    return Op(kind)


def probe(world: World, label: str, size: int) -> None:
    """A reservation both sides must refuse (or, for size 0, refuse deliberately)."""
    arena = world.arena
    lib_addr, aio_addr = arena.lib0, arena.aio0
    if label == "unaligned address":
        lib_addr, aio_addr = lib_addr + P // 2, aio_addr + P // 2
    elif label == "unaligned size":
        size += P // 2
    elif label == "zero size":
        size = 0
    elif label == "occupied":
        lib_addr, aio_addr = arena.lib_fence, arena.aio_fence
    if world.reserve(Op("reserve", (label, size)), lib_addr, aio_addr, size):
        world.fail(f"reserve({label}, {size}) succeeded on both sides")


def drive(
    world: World,
    size: int,
    probes: list[str],
    ops: Iterator[Op] | Callable[[World], Op | None],
) -> None:
    """Open the zones, run the probes, reserve ``size`` on both sides, run the operations
    (comparing after each), close both."""
    arena = world.arena
    arena.open_zones()
    for label in probes:
        probe(world, label, size)
    if kernel_view(arena.lib0, arena.lib_fence) or kernel_view(arena.aio0, arena.aio_fence):
        raise Retry  # a mapping of someone else's landed in the zones
    if not world.reserve(Op("reserve", ("free", size)), arena.lib0, arena.aio0, size):
        world.fail("the reservations could not both be made")
    world.compare_state()
    while True:
        op = ops(world) if callable(ops) else next(ops, None)
        if op is None:
            break
        world.step += 1
        world.run(op)
        world.compare_state()
    world.close()


@contextlib.contextmanager
def world_in_arena(seed: int, files: Files) -> Iterator[World]:
    arena = Arena()
    world = World(seed, files, arena)
    freed = False
    try:
        yield world
    finally:
        freed = world.teardown()
        if freed:  # else something may still live in the area: leave it mapped
            arena.close()


def run_sequence(seed: int, steps: int, files: Files, verbose: bool = False) -> dict[str, int]:
    """One seed: returns how often each deliberate difference was seen."""
    for _attempt in range(3):
        rng = random.Random(seed)
        size = rng.choice((rng.randint(1, 8), rng.randint(1, MAX_PAGES))) * P
        probes = rng.sample(PROBES, rng.choice((0, 0, 1, 2)))

        def ops(world: World, rng: random.Random = rng) -> Op | None:
            return next_op(rng, world) if world.step < steps else None

        try:
            with world_in_arena(seed, files) as world:
                try:
                    drive(world, size, probes, ops)
                finally:
                    if verbose:
                        print("\n".join(world.history))
                        print(dict(sorted(world.outcomes.items())))
                return world.seen
        except Retry:
            continue
    raise RuntimeError(f"seed {seed}: the scratch area kept being taken by other mappings")


PROFILES = profiles(quick={"seeds": 20, "steps": 60}, long={"seeds": 2000, "steps": 200})


@pytest.mark.parametrize("profile", PROFILES)
def test_libpmem2_and_aiopmem_agree(profile: Profile, tmp_path: Path) -> None:
    """Random sequences give the same results on both sides, but for DELIBERATE."""
    seen: dict[str, int] = {}
    with Files.made_in(tmp_path) as files:
        for seed in range(profile["seeds"]):
            for key, n in run_sequence(seed, profile["steps"], files).items():
                seen[key] = seen.get(key, 0) + n
    TALLY["libpmem2 diff: steps"] += profile["seeds"] * profile["steps"]
    for key, n in seen.items():
        TALLY[f"libpmem2 diff: {key}"] += n


def _map(kind: str, off: int, file_off: int = 0, length: int = 0) -> Op:
    return Op("map", (kind, off, file_off, length, "rw", True, False, False))


#: one directed case per entry of DELIBERATE: (size, probes, operations)
DIRECTED: dict[str, tuple[int, list[str], list[Op]]] = {
    "reserve(0)": (4 * P, ["zero size"], []),
    "lookup not found": (4 * P, [], [Op("find first"), Op("find", (0, 4 * P))]),
    "close with mappings": (4 * P, [], [_map("p1", P)]),
    "close releases padding": (4 * P, [], []),
    "file_offset > 2**63-1": (4 * P, [], [_map("p2", 0, 1 << 63)]),
    "shrink overflow": (4 * P, [], [Op("shrink", (P, (1 << 64) - P))]),
    "find in a partial page": (4 * P, [], [_map("partial", 0), Op("find", (2 * P + 200, 0))]),
    "nothing left to map": (4 * P, [], [_map("p2", 0, 2 * P)]),
    "O_PATH descriptor": (4 * P, [], [_map("O_PATH fd", 0)]),
    "find overflow": (4 * P, [], [_map("p1", 0), Op("find", ((1 << 64) - P, 2 * P))]),
}


@pytest.mark.parametrize("key", list(DIRECTED))
def test_deliberate_differences_still_hold(key: str, tmp_path: Path) -> None:
    """Each entry of DELIBERATE still describes what the two libraries do (a fix on either side
    makes its entry stale: this test then says which)."""
    assert set(DIRECTED) == set(DELIBERATE)
    size, probes, ops = DIRECTED[key]
    with Files.made_in(tmp_path) as files, world_in_arena(-1, files) as world:
        drive(world, size, probes, iter(ops))
        assert key in world.seen, f"{key!r} was not seen: {world.history}"


def test_extend_reaches_both_ends_of_the_budget(tmp_path: Path) -> None:
    """The set-up does what the module docstring says: an extend whose end stays within 2 MiB
    of the start succeeds on both sides, one whose end passes 4 MiB fails on both with
    PMEM2_E_MAPPING_EXISTS, also after a tail shrink (libpmem2 then gives back its padding
    granule) and a head shrink (the address moves, the limit does not)."""
    ops = [
        Op("extend", (AIO_MAX - 4 * P,)),  # the end at 2 MiB
        Op("shrink", (AIO_MAX - 2 * P, 2 * P)),
        Op("extend", (2 * P,)),  # back to 2 MiB
        Op("extend", (LIB_HOLD - AIO_MAX + P,)),  # 4 MiB + 1 page: into the fences
        Op("shrink", (0, P)),
        Op("shrink", (AIO_MAX - 2 * P, P)),
        Op("extend", (P,)),  # back to 2 MiB
        Op("extend", (LIB_HOLD - AIO_MAX + P,)),
    ]
    with Files.made_in(tmp_path) as files, world_in_arena(-2, files) as world:
        drive(world, 4 * P, [], iter(ops))
        codes = world.codes[1:-1]  # without the reserve and the close
    ok, taken = (0, 0), (PMEM2_E_MAPPING_EXISTS, PMEM2_E_MAPPING_EXISTS)
    assert codes == [ok, ok, ok, taken, ok, ok, ok, taken]


if __name__ == "__main__":  # replay one seed, printing every step
    import tempfile

    seed_arg = int(sys.argv[1])
    steps_arg = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    with tempfile.TemporaryDirectory() as tmp, Files.made_in(Path(tmp)) as files_arg:
        print("deliberate differences seen:", run_sequence(seed_arg, steps_arg, files_arg, True))
