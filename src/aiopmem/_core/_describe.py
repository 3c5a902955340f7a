"""Rendering a reservation as text for people: ``Reservation.describe()``.

The picture is drawn from the library's own state (a snapshot of the index of mappings, taken
by the reservation under its state lock), not from ``/proc/self/maps``: it shows what aiopmem
believes is mapped where. The tests check that the two agree.

Layout of the text (addresses shortened here)::

    aiopmem reservation [0x7f..000, 0x7f..000): size 12 MiB (0xc00000), max_size ..., 3 mappings
      held   0x7f..000 |A~~~~~~~~~~~~~~~~~~~~~~~~~| 0x7f..000  one column = 40 MiB
      usable 0x7f..000 |AAAAAAAABBBBBBBBCCCC....| 0x7f..000  one column = 512 KiB
      A-Z a-z 0-9: the mappings below, '.': placeholder (reserved, inaccessible), '~': ...
      map  offset    size      end       file_offset  protection  sharing  file
      A    0x0       0x400000  0x400000  0x0          READ|WRITE  SHARED   /data/chunk-0

The "held" line is all of ``[address, address + max_size)``; the "usable" line, shown when
there is headroom, is ``[address, address + size)`` again at full width, since next to the
default headroom (1 GiB) a small reservation would be a single column.

This module only renders; it reads nothing shared and takes no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._align import ALIGNMENT, align_up
from ._enums import Protection, Sharing

__all__ = ["Layout", "Row", "render"]

#: One symbol per mapping in the map line, in address order. After 62 mappings they repeat:
#: the table's first column says which row a symbol stands for.
SYMBOLS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PLACEHOLDER: Final = "."
HEADROOM: Final = "~"
HOLE: Final = "!"

_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


@dataclass(frozen=True)
class Row:
    """One mapping, as the table shows it. Offsets are relative to the reservation's address."""

    offset: int
    size: int
    file: str | None
    file_offset: int
    protection: Protection
    sharing: Sharing

    @property
    def end(self) -> int:
        """End of the mapped bytes (``offset + size``; the last page may be partial)."""
        return self.offset + self.size

    @property
    def span_end(self) -> int:
        """End of the range the mapping occupies in the reservation (whole pages)."""
        return self.offset + align_up(self.size)


@dataclass(frozen=True)
class Layout:
    """A consistent snapshot of a reservation (``None`` stands for a closed one)."""

    address: int
    size: int
    max_size: int
    rows: tuple[Row, ...]
    #: Offset ranges where the placeholder could not be laid back (normally none).
    holes: tuple[tuple[int, int], ...] = ()


def human(n: int) -> str:
    """``n`` bytes in binary units: ``4 MiB``, ``1.02 GiB``, ``100 B``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def protection_name(protection: Protection) -> str:
    """``READ|WRITE``, ``READ``, ``NONE``: the flag names in a fixed order on every Python
    version (3.10 has no ``.name`` for combined flags)."""
    names = [
        f.name for f in (Protection.READ, Protection.WRITE, Protection.EXEC) if f in protection
    ]
    return "|".join(n for n in names if n) or "NONE"


def _map_line(layout: Layout, length: int, width: int) -> tuple[str, int]:
    """A one-line map of ``[0, length)`` of the reservation and the bytes a column stands for
    (on average)."""
    # At most one column per page: a column finer than the allocation granularity shows nothing
    # the coarser one would not.
    columns = max(1, min(width, length // ALIGNMENT))
    rows = layout.rows
    chars = []
    first = 0  # rows before `first` end before the current column (both are in address order)
    for col in range(columns):
        lo = length * col // columns
        hi = length * (col + 1) // columns
        while first < len(rows) and rows[first].span_end <= lo:
            first += 1
        # The mapping covering most of the column wins, so that a small mapping next to a large
        # one still shows when it has a column of its own, and any mapping beats a placeholder.
        best, covered = -1, 0
        k = first
        while k < len(rows) and rows[k].offset < hi:
            part = min(hi, rows[k].span_end) - max(lo, rows[k].offset)
            if part > covered:
                best, covered = k, part
            k += 1
        if best >= 0:
            chars.append(SYMBOLS[best % len(SYMBOLS)])
        elif any(h_lo < hi and lo < h_hi for h_lo, h_hi in layout.holes):
            chars.append(HOLE)
        elif lo >= layout.size:
            chars.append(HEADROOM)
        else:
            chars.append(PLACEHOLDER)
    return "".join(chars), length // columns


def render(layout: Layout | None, width: int = 64) -> str:
    """The text of ``Reservation.describe()`` for ``layout`` (``None``: closed)."""
    if layout is None:
        return "aiopmem reservation: closed (it holds no address space)"
    start = layout.address
    count = len(layout.rows)
    lines = [
        f"aiopmem reservation [{start:#x}, {start + layout.size:#x}): "
        f"size {human(layout.size)} ({layout.size:#x}), "
        f"max_size {human(layout.max_size)} ({layout.max_size:#x}), "
        f"{count} mapping{'' if count == 1 else 's'}"
    ]
    # The held range first; when there is headroom, the usable part again at full width, since
    # next to the default headroom (1 GiB) a small reservation is a column or two.
    spans = [("held", layout.max_size)]
    if layout.size < layout.max_size:
        spans.append(("usable", layout.size))
    label_width = max(len(label) for label, _ in spans)
    for label, length in spans:
        picture, column = _map_line(layout, length, width)
        lines.append(
            f"  {label.ljust(label_width)} {start:#x} |{picture}| {start + length:#x}  "
            f"one column = {human(column)}"
        )
    legend = (
        f"  {SYMBOLS[0]}-{SYMBOLS[25]} {SYMBOLS[26]}-{SYMBOLS[51]} {SYMBOLS[52]}-{SYMBOLS[61]}: "
        f"the mappings below, '{PLACEHOLDER}': placeholder (reserved, inaccessible)"
    )
    if layout.size < layout.max_size:
        legend += f", '{HEADROOM}': headroom past size"
    if layout.holes:
        legend += f", '{HOLE}': hole (not re-reserved after an unmap)"
    lines.append(legend)
    for lo, hi in layout.holes:
        lines.append(f"  hole [{lo:#x}, {hi:#x}): nothing is mapped there until it is re-taken")
    if not layout.rows:
        lines.append("  no mappings")
        return "\n".join(lines)
    header = ("map", "offset", "size", "end", "file_offset", "protection", "sharing", "file")
    table = [header] + [
        (
            SYMBOLS[i % len(SYMBOLS)],
            f"{r.offset:#x}",
            f"{r.size:#x}",
            f"{r.end:#x}",
            f"{r.file_offset:#x}",
            protection_name(r.protection),
            r.sharing.name,
            "anonymous" if r.file is None else r.file,
        )
        for i, r in enumerate(layout.rows)
    ]
    # Every column is padded to its widest cell except the last (file), which can be long.
    widths = [max(len(cells[c]) for cells in table) for c in range(len(header) - 1)]
    for cells in table:
        padded = [cell.ljust(w) for cell, w in zip(cells, widths, strict=False)]
        lines.append("  " + "  ".join([*padded, cells[-1]]))
    return "\n".join(lines)
