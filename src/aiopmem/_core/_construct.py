"""Classes users receive but must not build themselves (``Reservation``, ``Mapping``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass: calling the class raises ``TypeError``; the library uses ``cls._create()``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "use aiopmem.reserve() and Reservation.map_file()/map_anonymous()"
        )

    @property
    def __signature__(cls) -> Any:
        # Without this, inspect (and so help()) shows the class as ``Reservation(*args,
        # **kwargs)``, the signature of __call__ above: a constructor users cannot call.
        # ValueError is inspect's "no signature", which help() leaves out.
        raise ValueError(f"{cls.__qualname__} has no public constructor")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def public_name(obj: object) -> str:
    """The name users know a library object's class by (``aiopmem.sync.Mapping`` and
    ``aiopmem.Mapping`` are different classes with the same ``__name__``)."""
    cls = type(obj)
    name: str = getattr(cls, "_public_name", cls.__qualname__)
    return name


def close_on_exit(obj: object, close: Callable[[], object], exc: BaseException | None) -> None:
    """Leaving ``with`` over ``obj``: ``close()``; when the block raised ``exc``, a failure of
    the close does not replace it but is noted on it (``note_left_open``)."""
    if exc is None:
        close()
        return
    try:
        close()
    except Exception as err:
        note_left_open(exc, obj, err)


async def aclose_on_exit(
    obj: object, aclose: Callable[[], Awaitable[object]], exc: BaseException | None
) -> None:
    """``close_on_exit`` for ``async with``."""
    if exc is None:
        await aclose()
        return
    try:
        await aclose()
    except Exception as err:
        note_left_open(exc, obj, err)


def note_left_open(exc: BaseException, obj: object, err: BaseException) -> None:
    """Record on ``exc`` (the exception leaving a ``with`` block) that closing ``obj`` on the
    way out failed with ``err``: the block's own exception is the one that propagates."""
    note = (
        f"{public_name(obj)} was left open: closing it on the way out raised "
        f"{type(err).__name__}: {err}"
    )
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(note)
    else:  # Python 3.10: the attribute add_note() maintains
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]
