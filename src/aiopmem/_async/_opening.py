"""What ``reserve()``, ``map_file()`` and ``map_anonymous()`` return: an object that is both a
coroutine (await it, or hand it to ``TaskGroup.start_soon``) and an async context manager that
closes what it opened when the block ends. Like a coroutine, one dropped without ever being
awaited or entered warns (``RuntimeWarning: ... was never awaited``): a forgotten ``await`` is
never silent."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final

from .._core._construct import aclose_on_exit
from .._ffi import OpeningBase


class _Closeable(Protocol):
    def aclose(self) -> Awaitable[None]: ...


T = TypeVar("T", bound=_Closeable)


@final
class Opening(OpeningBase, Coroutine[Any, Any, T], Generic[T]):
    """Awaitable and async context manager over one opening operation.

    The underlying coroutine is only created when the object is first awaited or entered, so an
    ``async with`` never leaves a never-awaited coroutine behind. Await it once, or enter it
    once, not both.

    (``Opening(factory, args, name)``: the coroutine is ``factory(*args)``; making, awaiting
    and dropping one are C: ``OpeningBase``.)
    """

    __slots__ = ("_value",)

    if TYPE_CHECKING:  # OpeningBase's, typed by what the coroutine returns

        def __await__(self) -> Generator[Any, None, T]: ...
        def _started(self) -> Coroutine[Any, Any, T]: ...
        def send(self, value: Any, /) -> Any: ...
        def throw(self, *args: Any) -> Any: ...

    async def __aenter__(self) -> T:
        value: T = await self._started()
        self._value = value
        return value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        value = getattr(self, "_value", None)
        if value is None:
            return
        del self._value
        await aclose_on_exit(value, value.aclose, exc)
