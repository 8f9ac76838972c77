"""One lazily re-armed timer per stream, instead of a timeout object per read.

Strategy: a stream's deadline (next heartbeat, idle timeout, max duration)
moves with every read, and ``asyncio.timeout`` would build, schedule and
cancel a timer each time. Here the stream only writes a float; the timer
handle moves earlier when needed, never later, and when it fires before the
current deadline it simply re-arms. When the deadline has passed while the
stream waits in :meth:`Alarm.wait`, the waiting task is cancelled and
``wait`` raises ``TimeoutError`` (like ``asyncio.timeout``, including its care
for other cancellations that arrive at the same time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Alarm:
    __slots__ = ("_fired", "_handle", "_loop", "_overdue", "_task", "_waiting", "_when", "deadline")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._waiting = False
        self._fired = False
        self._overdue = False
        self.deadline = float("inf")

    def set(self, deadline: float) -> None:
        """The new deadline (cheap: usually no timer is touched)."""
        self.deadline = deadline
        self._overdue = False
        if self._handle is None or self._when > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._when = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, or TimeoutError once the deadline has passed."""
        if self._overdue:
            self._overdue = False
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never started: say so, or Python warns
            raise TimeoutError
        self._waiting = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self._fired:
                raise
            self._fired = False
            if self._task.uncancel() > 0:
                raise  # someone else cancelled too: theirs wins
            raise TimeoutError from None
        finally:
            self._waiting = False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self._loop.time() < self.deadline:
            self._when = self.deadline
            self._handle = self._loop.call_at(self.deadline, self._fire)
        elif self._waiting:
            if not self._fired:
                self._fired = True
                self._task.cancel()
        else:
            self._overdue = True
