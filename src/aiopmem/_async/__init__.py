"""The anyio facade over aiopmem._core (see _reservation.py and _mapping.py)."""
