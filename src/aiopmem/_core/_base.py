"""The fields of a reservation every part of its class reads: the C base's state, as the
plain attributes of the contract. ``Reservation`` (``_reservation.py``) is made of the parts
that build on it: ``Holes`` (``_placement.py``), ``Maps`` (``_maps.py``) and ``Views``
(``_views.py``), as libpmem2 splits its reservation, map and view code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _ffi

__all__ = ["ReservationFields"]


class ReservationFields(_ffi.ReservationBase):
    """The attributes of a reservation (plain, non-blocking)."""

    __slots__ = ()

    if TYPE_CHECKING:  # the fields of the C base
        _address: int
        _size: int
        _max_size: int
        _closed: bool
        _facade: object | None
        _count: int

    # -- attributes ----------------------------------------------------------------------------

    @property
    def address(self) -> int:
        """Address of the first usable byte (moves up when the front is shrunk)."""
        return self._address

    @property
    def size(self) -> int:
        """Usable size in bytes."""
        return self._size

    @property
    def max_size(self) -> int:
        """Size up to which ``extend()`` cannot fail for lack of room (the headroom's end)."""
        return self._max_size

    @property
    def closed(self) -> bool:
        return self._closed
