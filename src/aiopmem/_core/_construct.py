"""Classes users receive but must not build themselves (``Reservation``, ``Mapping``)."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass: calling the class raises ``TypeError``; the library uses ``cls._create()``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "use aiopmem.reserve() and Reservation.map_file()/map_anonymous()"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
