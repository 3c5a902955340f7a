"""What ``reserve()``, ``map_file()`` and ``map_anonymous()`` return: an object that is both a
coroutine (await it, or hand it to ``TaskGroup.start_soon``) and an async context manager that
closes what it opened when the block ends. Like a coroutine, one dropped without ever being
awaited or entered warns (``RuntimeWarning: ... was never awaited``): a forgotten ``await`` is
never silent."""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, final

from .._core._construct import aclose_on_exit


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

    __slots__ = ("_args", "_coro", "_factory", "_name", "_value")

    def __init__(
        self, factory: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], name: str
    ) -> None:
        # _factory last: it is what __del__ looks at, so an interrupt in between leaves an
        # object that __del__ takes for never made, not a half-made one.
        self._name = name
        self._coro: Coroutine[Any, Any, T] | None = None
        self._value: T | None = None
        self._args = args
        self._factory: Callable[..., Coroutine[Any, Any, T]] | None = factory

    def __repr__(self) -> str:
        return f"<aiopmem.Opening of {self._name}>"

    def _started(self) -> Coroutine[Any, Any, T]:
        coro = self._coro
        if coro is None:
            factory = self._factory
            if factory is None:
                raise RuntimeError(f"cannot reuse a closed {self!r}")
            self._factory = None  # first: never "never awaited" once the call is under way
            coro = self._coro = factory(*self._args)
        return coro

    def __del__(self) -> None:
        if getattr(self, "_factory", None) is not None:  # never awaited, entered or closed
            warnings.warn(
                f"{self._name} was never awaited", RuntimeWarning, stacklevel=2, source=self
            )

    def __await__(self) -> Generator[Any, None, T]:
        coro = self._coro
        return (self._started() if coro is None else coro).__await__()

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        self._factory = None
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
        if value is None:
            return
        await aclose_on_exit(value, value.aclose, exc)
