"""Timeouts that count only the time the event loop had free.

A budget around a Redis call says "an outage shows within about this
long". On a loop too busy to run (a burst of new connections, a long GC
pause, a process stopped for a moment) the answer can already sit in the
socket when the budget's timer fires: libuv, under uvloop, runs due timers
before it polls for I/O, so after a stall every call in flight would time
out though Redis answered in time. Rule: time the loop was late to run its
timers does not count against a budget. A per-loop clock ticks every
``TICK`` while any budget is open and adds up how late its ticks ran; a
budget that expires with lateness recorded since it began moves its
deadline on by that much, up to ``MAX_STRETCH`` in all, and expires only
once the loop has polled again. A loop that is never late behaves exactly
as with :func:`asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

#: How often the clock looks at the loop's lateness while a budget is open.
TICK = 0.05
#: Lateness below this is ordinary scheduling jitter, not a stall.
SLACK = 0.005
#: The most a budget is moved on for stalls, in all (an outage on a loop
#: that keeps stalling still shows within budget + this).
MAX_STRETCH = 10.0
#: An expiry moved on waits at least this long, so the loop polls I/O first.
_POLL = 0.001


class _Clock:
    """A loop's lateness, measured while budgets are open (it holds no reference to the loop)."""

    __slots__ = ("_due", "_handle", "lag", "open")

    def __init__(self) -> None:
        #: Seconds the ticks ran late in all (each stall over SLACK counted once).
        self.lag = 0.0
        self.open = 0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.open += 1
        if self._handle is None:
            self._due = loop.time() + TICK
            self._handle = loop.call_at(self._due, self._tick)

    def release(self) -> None:
        self.open -= 1  # the next tick stops the clock when none is left

    def lag_now(self, loop: asyncio.AbstractEventLoop) -> float:
        """The lateness recorded, plus that of a tick overdue now (a stall not yet ticked)."""
        if self._handle is None:
            return self.lag
        late = loop.time() - self._due
        return self.lag + late if late > SLACK else self.lag

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self._due
        if late > SLACK:
            self.lag += late
        if self.open > 0:
            self._due = now + TICK
            self._handle = loop.call_at(self._due, self._tick)
        else:
            self._handle = None


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock] = weakref.WeakKeyDictionary()


def _clock(loop: asyncio.AbstractEventLoop) -> _Clock:
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = _Clock()
    return clock


def free_time() -> float:
    """The running loop's clock less the lateness recorded: deadlines that skip stalls.

    Stalls count only while some budget is open (the clock ticks only then),
    which is when a deadline in this time is being waited for.
    """
    loop = asyncio.get_running_loop()
    return loop.time() - _clock(loop).lag_now(loop)


def timeout(seconds: float | None) -> Budget:
    """``async with timeout(seconds):`` as :func:`asyncio.timeout`, stalls of the loop left out.

    None: no limit. It raises :class:`TimeoutError` when the budget runs
    out, and lets every other exception (a cancel from outside included)
    through unchanged.
    """
    return Budget(seconds)


class Budget:
    """The context manager of :func:`timeout`."""

    __slots__ = ("_clock", "_deadline", "_handle", "_lag0", "_loop", "_seconds", "_stretched", "_t")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._t = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None
        self._stretched = 0.0

    async def __aenter__(self) -> Budget:
        await self._t.__aenter__()
        if self._seconds is not None:
            self._loop = loop = asyncio.get_running_loop()
            self._clock = clock = _clock(loop)
            clock.acquire(loop)
            self._lag0 = clock.lag_now(loop)
            self._deadline = loop.time() + self._seconds
            self._handle = loop.call_at(self._deadline, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._seconds is not None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._clock.release()
        await self._t.__aexit__(exc_type, exc, tb)

    def _expire(self) -> None:
        loop = self._loop
        now = loop.time()
        # The lateness since this budget began that it has not been given yet.
        # A stall long enough to matter (over TICK) shows on the clock even
        # when this timer runs first: the clock's tick is overdue by then.
        stalled = self._clock.lag_now(loop) - self._lag0 - self._stretched
        if stalled > SLACK and self._stretched < MAX_STRETCH:
            extra = min(stalled, MAX_STRETCH - self._stretched)
            self._stretched += extra
            self._deadline += extra
            self._handle = loop.call_at(max(self._deadline, now + _POLL), self._expire)
            return
        self._handle = None
        self._t.reschedule(now)
