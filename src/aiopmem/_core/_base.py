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
    # address, size, max_size and closed are the C base's own descriptors (read-only).
