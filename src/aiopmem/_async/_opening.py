"""What ``reserve()``, ``map_file()`` and ``map_anonymous()`` return: an object that is both a
coroutine (await it, or hand it to ``TaskGroup.start_soon``) and an async context manager that
closes what it opened when the block ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, final


class _Closeable(Protocol):
    def aclose(self) -> Awaitable[None]: ...


T = TypeVar("T", bound=_Closeable)


@final
class Opening(Coroutine[Any, Any, T], Generic[T]):
    """Awaitable and async context manager over one opening operation.

    The underlying coroutine is only created when the object is first awaited or entered, so an
    ``async with`` never leaves a never-awaited coroutine behind. Await it once, or enter it
    once, not both.
    """

    __slots__ = ("_coro", "_factory", "_value")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._factory = factory
        self._coro: Coroutine[Any, Any, T] | None = None
        self._value: T | None = None

    def _started(self) -> Coroutine[Any, Any, T]:
        if self._coro is None:
            self._coro = self._factory()
        return self._coro

    def __await__(self) -> Generator[Any, None, T]:
        return self._started().__await__()

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def __aenter__(self) -> T:
        self._value = await self._started()
        return self._value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        value, self._value = self._value, None
        if value is not None:
            await value.aclose()
