"""One loop timer per time slot for all streams, instead of a timer per stream.

Strategy: every open stream has a deadline (its next heartbeat, idle timeout
or end of its allowed duration), and an event-loop timer handle per stream
costs ~0.5 KB, a large share of what an idle stream holds. Deadlines are
rounded up to slots of ``resolution`` seconds; each slot that has callbacks
has one loop timer, shared by every stream that falls in it. A callback runs
at most ``resolution`` late, never early. Removal is O(1), so a stream that
ends drops out at once rather than staying referenced until its slot fires.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

Callback = Callable[[], None]


class TimerWheel:
    __slots__ = ("_loop", "_resolution", "_slots")

    def __init__(self, resolution: float = 0.025) -> None:
        self._resolution = resolution
        self._slots: dict[int, set[Callback]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, when: float, callback: Callback) -> int:
        """Call ``callback`` once, at or shortly after loop time ``when``; the slot to remove."""
        slot = math.ceil(when / self._resolution)
        callbacks = self._slots.get(slot)
        if callbacks is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            callbacks = self._slots[slot] = set()
            self._loop.call_at(slot * self._resolution, self._fire, slot)
        callbacks.add(callback)
        return slot

    def remove(self, slot: int, callback: Callback) -> None:
        """Forget a callback that has not run yet (no-op if it ran)."""
        callbacks = self._slots.get(slot)
        if callbacks is not None:
            callbacks.discard(callback)

    def __len__(self) -> int:
        return sum(len(callbacks) for callbacks in self._slots.values())

    def _fire(self, slot: int) -> None:
        for callback in self._slots.pop(slot, ()):
            callback()
