"""The kernel's view of the address space, read from /proc/self/maps: the ground truth the
tests check the library's state against. Independent of aiopmem's own parser on purpose."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiopmem.sync import Protection, Sharing

PAGE = os.sysconf("SC_PAGESIZE")


class MappingState(Protocol):
    """What the checks read of a mapping: a blocking or async one, or a portal to one."""

    @property
    def address(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def file(self) -> str | None: ...
    @property
    def file_offset(self) -> int: ...
    @property
    def protection(self) -> Protection: ...
    @property
    def sharing(self) -> Sharing: ...


class ReservationState(Protocol):
    """What the checks read of a reservation: a blocking or async one, or a portal to one."""

    @property
    def address(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def mappings(self) -> Sequence[MappingState]: ...


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str


def vmas() -> list[Vma]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].strip() if len(parts) > 5 else ""
            out.append(Vma(lo, hi, parts[1], int(parts[2], 16), parts[3], int(parts[4]), path))
    return out


def vmas_in(start: int, end: int, among: Sequence[Vma] | None = None) -> list[Vma]:
    """VMAs intersecting [start, end) (of ``among``, one reading of the maps, or a new one)."""
    return [v for v in (vmas() if among is None else among) if v.end > start and v.start < end]


def is_free(start: int, end: int) -> bool:
    """Nothing at all is mapped in [start, end)."""
    return not vmas_in(start, end)


#: glibc's malloc arenas of threads other than the main one: HEAP_MAX_SIZE-aligned blocks of
#: that size (64 MiB on 64-bit), read-write at their start, PROT_NONE after.
ARENA = 64 << 20


def _thread_stacks(vmas: Sequence[Vma]) -> set[Vma]:
    """The VMAs of thread stacks among ``vmas``: a one-page PROT_NONE guard with the stack's
    read-write anonymous memory right above it."""
    by_start = {v.start: v for v in vmas}
    stacks: set[Vma] = set()
    for guard in vmas:
        above = by_start.get(guard.end)
        if (
            is_placeholder(guard)
            and guard.end - guard.start == PAGE
            and above is not None
            and above.perms == "rw-p"
            and above.inode == 0
            and above.path == ""
        ):
            stacks.update((guard, above))
    return stacks


def released(start: int, end: int) -> bool:
    """Nothing of what was in [start, end) is left: the range is free, or what is there now
    is only malloc arenas and thread stacks another thread made in it since (the kernel reuses
    freed address space at once: a new thread's stack or first malloc can land right there)."""
    left = vmas_in(start, end)
    stacks = _thread_stacks(left)
    left = [v for v in left if v not in stacks]
    blocks = {v.start - v.start % ARENA for v in left}
    for block in blocks:
        mine = [v for v in left if block <= v.start < block + ARENA]
        head = min(mine, key=lambda v: v.start)
        if head.start != block or head.perms != "rw-p" or max(v.end for v in mine) > block + ARENA:
            return False
    return True


def is_placeholder(v: Vma) -> bool:
    return v.perms == "---p" and v.inode == 0 and v.path == ""


def coverage(
    start: int, end: int, among: Sequence[Vma] | None = None
) -> list[tuple[int, int, Vma]]:
    """[start, end) cut into pieces by VMA; asserts there is no hole."""
    pieces = []
    pos = start
    for v in sorted(vmas_in(start, end, among), key=lambda v: v.start):
        assert v.start <= pos, f"hole in [{pos:#x}, {v.start:#x})"
        hi = min(v.end, end)
        pieces.append((pos, hi, v))
        pos = hi
    assert pos >= end, f"hole in [{pos:#x}, {end:#x})"
    return pieces


def expected_perms(m: MappingState) -> str:
    from aiopmem.sync import Protection, Sharing

    prot = m.protection
    return (
        ("r" if Protection.READ in prot else "-")
        + ("w" if Protection.WRITE in prot else "-")
        + ("x" if Protection.EXEC in prot else "-")
        + ("s" if m.sharing is Sharing.SHARED else "p")
    )


def assert_matches_kernel(rsv: ReservationState) -> None:
    """Every byte the reservation holds is, in the kernel's view, either a placeholder or the
    mapping the library says is there (permissions, file and file offset); a closed reservation
    holds nothing: its last range is free or belongs to something else. Reads /proc/self/maps
    once (hundreds of VMAs make each reading slow)."""
    held_start = rsv.address
    held_end = held_start + rsv.max_size
    if rsv.closed:
        return
    mappings = rsv.mappings()
    segments: list[tuple[int, int, MappingState | None]] = []
    pos = held_start
    for mapping in mappings:
        span = -(-mapping.size // PAGE) * PAGE
        if mapping.address > pos:
            segments.append((pos, mapping.address, None))
        segments.append((mapping.address, mapping.address + span, mapping))
        pos = mapping.address + span
    if pos < held_end:
        segments.append((pos, held_end, None))
    holes = getattr(rsv, "holes", [])
    among = vmas()
    for lo, hi, m in segments:
        for a, b, v in coverage(lo, hi, among):
            if m is None:
                if any(h0 <= a - held_start < h1 for h0, h1 in holes):
                    continue
                assert is_placeholder(v), f"[{a:#x}, {b:#x}) should be a placeholder, is {v}"
            else:
                assert v.perms == expected_perms(m), (m, v)
                if m.file is None:
                    assert v.inode == 0 or v.path.startswith("/dev/zero"), (m, v)
                else:
                    st = os.stat(m.file) if os.path.exists(m.file) else None
                    if st is not None:
                        assert v.inode == st.st_ino, (m, v)
                    assert v.offset + (a - v.start) == m.file_offset + (a - m.address), (m, v)


def snapshot(rsv: Any) -> tuple[object, ...]:
    """Everything observable about a reservation: attributes, mappings and the kernel's view of
    the held range (VMAs clipped to it, so that unrelated neighbours do not matter). Two
    snapshots are equal when a call changed nothing."""
    lo, hi = rsv.address, rsv.address + rsv.max_size
    maps = tuple(
        (m, m.address, m.offset, m.size, m.file_offset, m.protection, m.sharing, m.closed)
        for m in rsv.mappings()
    )
    vmas_ = tuple(
        (max(v.start, lo), min(v.end, hi), v.perms, v.inode, v.offset) for v in vmas_in(lo, hi)
    )
    return rsv.closed, rsv.address, rsv.size, rsv.max_size, maps, vmas_


def assert_gate_at_rest(rsv: Any) -> None:
    """No operation of the (sync) reservation admitted, running, waiting or queued."""
    shared, exclusive, waiting, queued, claims, _ = rsv._gate_state()
    assert (shared, exclusive, waiting, queued, claims) == (0, False, 0, 0, 0)


def open_fds() -> set[int]:
    """The open descriptors, without the eventfd each event loop's job port holds for as long
    as the loop lives (one per loop, made by its first job: not a leak)."""
    from aiopmem._async._dispatch import ports

    # Without the descriptor the listing itself used (closed again by now).
    fds = {int(x) for x in os.listdir("/proc/self/fd")}
    return {fd for fd in fds if _is_open(fd)} - {p.fd for p in list(ports)}


def _is_open(fd: int) -> bool:
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def quiet_address(length: int) -> int:
    """A free address far below where the kernel places new mappings (top-down from near the
    top of the user address space), so that the space around it stays free during a test: a
    reservation there can be extended past its max_size for sure."""
    import random

    for _ in range(100):
        addr = random.randrange(0x100000000000, 0x300000000000, 1 << 30)
        if is_free(addr - (1 << 30), addr + length + (1 << 30)):
            return addr
    raise AssertionError("no quiet address found")


def _smaps_of(start: int, end: int) -> list[tuple[dict[str, int], set[str]]]:
    """For each VMA intersecting [start, end): its kB fields of /proc/self/smaps and VmFlags."""
    out: list[tuple[dict[str, int], set[str]]] = []
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = hi > start and lo < end
                if inside:
                    out.append(({}, set()))
                continue
            if not inside:
                continue
            key, _, value = line.partition(":")
            if key == "VmFlags":
                out[-1][1].update(value.split())
                continue
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[-1][0][key] = int(parts[0]) * 1024
    return out


def smaps(start: int, end: int) -> dict[str, int]:
    """The fields of /proc/self/smaps (Rss, Locked, AnonHugePages, Anonymous...), in bytes,
    summed over the VMAs intersecting [start, end)."""
    totals: dict[str, int] = {}
    for fields, _ in _smaps_of(start, end):
        for key, value in fields.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def vm_flags(addr: int) -> set[str]:
    """The VmFlags of the VMA containing ``addr`` (hg: HUGEPAGE, nh: NOHUGEPAGE, rr: RANDOM,
    sr: SEQUENTIAL, lo: locked...)."""
    (entry,) = _smaps_of(addr, addr + 1)
    return entry[1]


def vm_size() -> int:
    """The process's virtual size in bytes (VmSize of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")
