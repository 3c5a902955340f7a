# The compiled state core (_core.c). Private to aiopmem: the methods of the bases are the
# transitions the Python classes of aiopmem.sync call after validating their arguments; each
# returns its result, or an int code (one of C_*, or an errno) that the caller raises.
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, final

from typing_extensions import Self

SC_MMAP: Final[int]
SC_MUNMAP: Final[int]
SC_MSYNC: Final[int]
SC_MADVISE: Final[int]
SC_OPEN: Final[int]
SC_FSTAT: Final[int]
SC_MPROTECT: Final[int]
SC_MLOCK: Final[int]
SC_MUNLOCK: Final[int]
C_CLOSED: Final[int]
C_OFF_UNALIGNED: Final[int]
C_OFF_NEGATIVE: Final[int]
C_NO_FIT: Final[int]
C_EXISTS: Final[int]
C_MID: Final[int]
C_WHOLE: Final[int]
C_OFF_RANGE: Final[int]
C_LEN_NONPOS: Final[int]
C_LEN_PAST: Final[int]
C_NOT_EMPTY: Final[int]
C_PAST_ASPACE: Final[int]
C_EXTEND_EXISTS: Final[int]
C_HOLE_NOTED: Final[int]
C_BUSY_BASE: Final[int]
HOLE_BIT: Final[int]
C_FILE: Final[int]
C_WOULD_BLOCK: Final[int]
C_NOACCESS: Final[int]
MADV_COLD: Final[int]
MADV_DONTNEED: Final[int]
MADV_HUGEPAGE: Final[int]
MADV_NOHUGEPAGE: Final[int]
MADV_NORMAL: Final[int]
MADV_PAGEOUT: Final[int]
MADV_RANDOM: Final[int]
MADV_SEQUENTIAL: Final[int]
MADV_WILLNEED: Final[int]
MEM_ADVISE: Final[int]
MEM_LOCK: Final[int]
MEM_PERSIST: Final[int]
MEM_POPULATE: Final[int]
MEM_PROTECT: Final[int]
MEM_READ: Final[int]
MEM_UNLOCK: Final[int]
MEM_WRITE: Final[int]
ST_OPEN: Final[int]
ST_UNMAPPING: Final[int]
ST_CLOSED: Final[int]

class Abandoned(Exception): ...

@final
class Ticket:
    abandoned: int
    def abandon(self) -> None: ...

@final
class OwnedFd:
    fd: int
    def close(self) -> None: ...

class InjectionBase:
    delay: float
    after: int
    times: int
    seen: int
    fired: int
    def __init__(self, sc: int, err: int, delay: float, after: int, times: int) -> None: ...

class MappingBase:
    _rsv: Any
    _views: list[object]
    _file: Any
    _protection: Any
    _sharing: Any
    _facade: Any
    _addr: int
    _size: int
    _span: int
    _file_offset: int
    _state: int
    _gran: int
    _pins: int
    _locked: int

class ReservationBase:
    _address: int
    _size: int
    _max_size: int
    _closed: bool
    @property
    def address(self) -> int:
        """Address of the first usable byte (moves up when the front is shrunk)."""
    @property
    def size(self) -> int:
        """Usable size in bytes."""
    @property
    def max_size(self) -> int:
        """Size up to which ``extend()`` cannot fail for lack of room (the headroom's end)."""
    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
    _count: int
    _facade: Any
    def _map(
        self,
        cls: type[Any],
        offset: int,
        length: int,
        bits: int,
        kind: int,
        fd: int,
        file_offset: int,
        dev: int,
        protection: object,
        sharing: object,
        file: object,
        /,
    ) -> Any: ...
    def _unmap(self, m: MappingBase, /) -> int: ...
    def _map_job(self, port: Port, waiter: object, *args: Any) -> Job | int:
        """``_map``'s arguments after ``port`` and ``waiter``, then ``check_fd``."""
    def _open_job(self, port: Port, waiter: object, path: object, flags: int, /) -> Job: ...
    def _unmap_job(self, port: Port, waiter: object, m: MappingBase, /) -> Job | int: ...
    def _persist_job(
        self, port: Port, waiter: object, m: MappingBase, start: int, end: int, /
    ) -> Job | int: ...
    def _persist(self, m: MappingBase, start: int, end: int, /) -> int: ...
    def _mem(
        self,
        kind: int,
        arg: int,
        m: MappingBase | None,
        lo: int,
        hi: int,
        need: int,
        obj: object,
        /,
    ) -> Any:
        """A memory operation: 0, read()'s bytes, an int code, or (C_NOACCESS, address)."""
    def _mem_job(self, port: Port, waiter: object, *args: Any) -> Any:
        """``_mem``'s arguments after ``port`` and ``waiter``: the job, or what ``_mem``
        returns when nothing began."""
    def _extend(self, n: int, /) -> int: ...
    def _shrink(self, offset: int, size: int, /) -> int: ...
    def _extend_nowait(self, size: object, /) -> int: ...
    def _shrink_nowait(self, offset: object, size: object, /) -> int: ...
    def extend(self, size: int) -> None:
        """Grow the reservation at its end by ``size`` bytes (see the compiled docstring)."""
    def shrink(self, offset: int, size: int) -> None:
        """Remove ``[offset, offset+size)`` at the beginning or the end."""
    def _close(self) -> int: ...
    def _close_job(self, port: Port, waiter: object, /) -> Job | int: ...
    def _extend_job(self, port: Port, waiter: object, size: object, /) -> Job | int: ...
    def _shrink_job(
        self, port: Port, waiter: object, offset: object, size: object, /
    ) -> Job | int: ...
    def _mview(self, m: MappingBase, offset: int, length: int, readonly: bool, /) -> Any: ...
    def _rview(self, lo: int, hi: int, /) -> Any: ...
    def _find(self, lo: int, hi: int, /) -> Any: ...
    def _step(self, m: MappingBase, direction: int, /) -> Any: ...
    def _edge(self, direction: int, /) -> Any: ...
    def _values(self) -> list[Any]: ...
    def _holes(self) -> list[tuple[int, int]]: ...
    def _snapshot(self) -> tuple[int, int, int, list[Any], list[tuple[int, int]]] | None: ...
    def _gate_state(self) -> tuple[int, bool, int, int, int, int]: ...
    def _gate_stats(self) -> tuple[int, int, int, int]: ...
    def _abandon(self) -> None: ...

def new_view(
    owner: object, holders: tuple[list[object], ...], address: int, length: int, readonly: bool, /
) -> memoryview: ...
def live(lists: tuple[list[object], ...], /) -> int: ...
def reserve(
    cls: type[Any],
    address: int | None,
    size: int,
    max_size: int | None,
    headroom: int,
    alignment: int,
    /,
) -> Any: ...
def reserve_job(
    port: Port,
    waiter: object,
    cls: type[Any],
    address: int | None,
    size: int,
    max_size: int | None,
    headroom: int,
    alignment: int,
    /,
) -> Job: ...
def push(injection: InjectionBase, /) -> None: ...
def pop(injection: InjectionBase, /) -> None: ...
def intercept(syscall: int, /) -> int: ...
def set_ticket(ticket: Ticket | None, /) -> None: ...
def open_path(path: str | bytes, flags: int, /) -> OwnedFd: ...
def submit(pool: object, job: object, /) -> None: ...
def wake_or_start(pool: object, /) -> None: ...
def deliver_all(port: object, /) -> None: ...

@final
class Job:
    """One map, unmap or persist of the async API, run by the executor."""

    waiter: Any
    @property
    def delivered(self) -> bool: ...
    _asyncio_future_blocking: bool
    @property
    def task(self) -> Any: ...
    def outcome(self) -> Any: ...
    # Awaited itself (a port whose how is "job": the future protocol of asyncio.Task; on trio,
    # a port whose how is ("trio", ...): it yields trio's WaitTaskRescheduled).
    def __await__(self) -> Generator[Any, None, Any]: ...
    def __iter__(self) -> Job: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any, /) -> Any: ...
    def get_loop(self) -> Any: ...
    def add_done_callback(self, fn: Callable[[Job], object], /, *, context: Any = None) -> None: ...
    def remove_done_callback(self, fn: Callable[[Job], object], /) -> int: ...
    def cancel(self, msg: Any = None) -> bool: ...
    def cancelled(self) -> bool: ...
    def done(self) -> bool: ...
    def result(self) -> None: ...
    def exception(self) -> None: ...

class OpeningBase:
    _name: str
    def __new__(
        cls, factory: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], name: str, /
    ) -> Self: ...
    def _started(self) -> Coroutine[Any, Any, Any]: ...
    def __await__(self) -> Generator[Any, None, Any]: ...
    def send(self, value: Any, /) -> Any: ...
    def throw(self, *args: Any) -> Any: ...
    def close(self) -> None: ...

@final
class Port:
    """Where one event loop's finished jobs wait for it (an eventfd to watch)."""

    how: Any
    @property
    def fd(self) -> int: ...
    def __init__(self, how: Any, schedule: Any = None, /) -> None: ...
    def drain(self) -> None: ...
    def flush(self) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

def aio_configure(
    get_running_loop: Callable[[], Any],
    current_task: Callable[[Any], Any],
    states: dict[Any, Any] | None,
    make_port: Callable[[Any], Port],
    scope_type: type | None,
    state_type: type | None,
    /,
) -> None: ...
def aio_begin(begin: Callable[..., Any], args: tuple[Any, ...], always: bool, /) -> Any: ...
def aio_cancel_due(task: Any, /) -> bool: ...
def aio_unmap(mapping: MappingBase, /) -> Any: ...
def aio_configure_trio(
    run_context: Any,
    port_var: Any,
    make_port: Callable[[], Port],
    task_type: type,
    status_type: type,
    runner_type: type,
    /,
) -> None: ...
def aio_configure_map(
    cls: type, protection: type, sharing: type, shared: Any, bits: tuple[int, ...], mask: int, /
) -> None: ...
def aio_map_fd(
    core: ReservationBase,
    file: object,
    offset: object,
    length: object,
    file_offset: object,
    protection: object,
    sharing: object,
    /,
) -> Any: ...
def executor_stats() -> dict[str, Any]: ...
def executor_after_fork() -> None: ...
def executor_configure(
    max_workers: int | None,
    idle_exit: float | None,
    spin: float | None = None,
    wait: float | None = None,
    /,
) -> None: ...
