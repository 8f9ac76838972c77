"""A one-shot asyncio.Event that costs nothing until someone waits on it.

Every session claim carries a "released" event that a newer claim of the
same session may wait on, but almost none is ever waited on: an
``asyncio.Event`` holds a deque (a block of 64 slots) from the start, this
one a future per waiter, and only while it waits.
"""

from __future__ import annotations

import asyncio


class Flag:
    """Set once (and for good); :meth:`wait` returns once it is set, at once if it is."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set it, waking every waiter."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            # A waiter cancelled (or timed out) before the set: not woken later.
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
