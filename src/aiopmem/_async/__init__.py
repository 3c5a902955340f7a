"""The anyio facade over ``aiopmem._core``: one async class per core class, same method names
and parameters; it owns the ordering of tasks, the worker-thread offload and the cancellation
policy, and makes no syscall itself."""

from ._mapping import Mapping
from ._opening import Opening
from ._reservation import Reservation, reserve

__all__ = ["Mapping", "Opening", "Reservation", "reserve"]
