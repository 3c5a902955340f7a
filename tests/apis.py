"""Run the blocking scenario suites against the async API too.

The scenario tests call ``apis.reserve(...)`` and use what it returns with the blocking API's
shape. Under the ``api`` fixture's "sync" parameter that is ``aiopmem.sync`` itself; under
"asyncio", "uvloop" and "trio" it is a thin adapter that sends every call through an anyio
blocking portal to an event loop of that backend, where the async API (``aiopmem.reserve``,
``await rsv.map_file(...)``, ...) does the work. The scenario code is shared; only the API
under test changes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from anyio.from_thread import BlockingPortal, start_blocking_portal

import aiopmem
import aiopmem.sync

BACKENDS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "sync": None,
    "asyncio": ("asyncio", {"use_uvloop": False}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
#: CI's runs on the other interpreters (AIOPMEM_MATRIX=1, set by .ci/run) leave uvloop out:
#: it is asyncio's API on another loop, tested by `make test` on the default interpreter, and
#: the matrix must fit CI's time budget.
if os.environ.get("AIOPMEM_MATRIX"):
    del BACKENDS["uvloop"]

#: The async methods of mappings and reservations that take their arguments as the blocking
#: ones do (called through the portal by the wrappers below).
MEMORY_OPERATIONS = frozenset(
    {"populate", "advise", "protect", "lock", "unlock", "write", "read", "read_into", "persist"}
)

_current: Api | None = None
_W = TypeVar("_W")


async def _await(fn: Callable[..., Any], *args: Any) -> Any:
    return await fn(*args)


class PortalMapping:
    """An ``aiopmem.Mapping`` driven from a thread with the blocking API's shape."""

    def __init__(self, api: Api, am: aiopmem.Mapping) -> None:
        self._api = api
        self.async_mapping = am

    def __getattr__(self, name: str) -> Any:
        # Plain attributes of the async mapping: address, size, offset, file, ...; its memory
        # operations (coroutines) are called through the portal.
        attr = getattr(self.async_mapping, name)
        if name in MEMORY_OPERATIONS:
            return functools.partial(self._api.portal.call, attr)
        return attr

    @property
    def reservation(self) -> PortalReservation:
        return self._api.reservation(self.async_mapping.reservation)

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        return self._api.portal.call(self.async_mapping.view, offset, length)

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        self._api.portal.call(self.async_mapping.persist, offset, length)

    def unmap(self) -> None:
        self._api.portal.call(self.async_mapping.unmap)

    close = unmap

    def __enter__(self) -> PortalMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmap()


class PortalReservation:
    """An ``aiopmem.Reservation`` driven from a thread with the blocking API's shape."""

    def __init__(self, api: Api, ar: aiopmem.Reservation) -> None:
        self._api = api
        self.async_reservation = ar

    def __getattr__(self, name: str) -> Any:
        # Plain attributes: address, size, max_size, closed, holes; memory operations as for
        # a mapping.
        attr = getattr(self.async_reservation, name)
        if name in MEMORY_OPERATIONS:
            return functools.partial(self._api.portal.call, attr)
        return attr

    def _mapping(self, am: aiopmem.Mapping | None) -> PortalMapping | None:
        return None if am is None else self._api.mapping(am)

    def map_file(self, *args: Any, **kwargs: Any) -> PortalMapping:
        call = functools.partial(self.async_reservation.map_file, *args, **kwargs)
        return self._api.mapping(self._api.portal.call(_await, call))

    def map_anonymous(self, *args: Any, **kwargs: Any) -> PortalMapping:
        call = functools.partial(self.async_reservation.map_anonymous, *args, **kwargs)
        return self._api.mapping(self._api.portal.call(_await, call))

    def extend(self, size: int) -> None:
        self._api.portal.call(self.async_reservation.extend, size)

    def shrink(self, offset: int, size: int) -> None:
        self._api.portal.call(self.async_reservation.shrink, offset, size)

    def close(self) -> None:
        self._api.portal.call(self.async_reservation.aclose)

    def find(self, offset: int, length: int = 0) -> PortalMapping | None:
        return self._mapping(self._api.portal.call(self.async_reservation.find, offset, length))

    def find_prev(self, m: Any) -> PortalMapping | None:
        am = m.async_mapping if isinstance(m, PortalMapping) else m
        return self._mapping(self._api.portal.call(self.async_reservation.find_prev, am))

    def find_next(self, m: Any) -> PortalMapping | None:
        am = m.async_mapping if isinstance(m, PortalMapping) else m
        return self._mapping(self._api.portal.call(self.async_reservation.find_next, am))

    def find_first(self) -> PortalMapping | None:
        return self._mapping(self._api.portal.call(self.async_reservation.find_first))

    def find_last(self) -> PortalMapping | None:
        return self._mapping(self._api.portal.call(self.async_reservation.find_last))

    def mappings(self) -> list[PortalMapping]:
        return [
            self._api.mapping(m) for m in self._api.portal.call(self.async_reservation.mappings)
        ]

    def __enter__(self) -> PortalReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Api:
    """The async API behind a blocking portal; wrappers are cached so identity (``is``) holds."""

    def __init__(self, portal: BlockingPortal) -> None:
        self.portal = portal
        self._lock = threading.Lock()
        self._wrappers: dict[int, tuple[object, object]] = {}

    def _cached(self, obj: object, make: Callable[[], _W]) -> _W:
        with self._lock:
            hit = self._wrappers.get(id(obj))
            if hit is None or hit[0] is not obj:
                hit = self._wrappers[id(obj)] = (obj, make())
            return cast(_W, hit[1])  # the wrapper that make() built for obj

    def mapping(self, am: aiopmem.Mapping) -> PortalMapping:
        return self._cached(am, lambda: PortalMapping(self, am))

    def reservation(self, ar: aiopmem.Reservation) -> PortalReservation:
        return self._cached(ar, lambda: PortalReservation(self, ar))

    def reserve(self, *args: Any, **kwargs: Any) -> PortalReservation:
        call = functools.partial(aiopmem.reserve, *args, **kwargs)
        return self.reservation(self.portal.call(_await, call))


def reserve(*args: Any, **kwargs: Any) -> Any:
    """``aiopmem.sync.reserve`` or its async twin behind a portal, per the ``api`` fixture."""
    if _current is None:
        return aiopmem.sync.reserve(*args, **kwargs)
    return _current.reserve(*args, **kwargs)


def is_mapping(obj: object) -> bool:
    return isinstance(obj, (aiopmem.sync.Mapping, PortalMapping))


@contextlib.contextmanager
def using(name: str) -> Iterator[str]:
    """Make ``reserve`` use the API ``name`` ("sync", "asyncio", "uvloop", "trio")."""
    global _current
    backend = BACKENDS[name]
    if backend is None:
        yield name
        return
    with start_blocking_portal(backend[0], backend[1]) as portal:
        _current = Api(portal)
        try:
            yield name
        finally:
            _current = None
