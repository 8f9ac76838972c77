"""The awaiting path of a stream: read a source, normalise, emit to the Sink, paced.

Used for every source and Sink the splice (sidecar/stream/splice.py) does
not take: WebSocket gateways, and runs whose Sink numbers events (resume).
One lazily re-armed alarm (sidecar/alarm.py) per stream paces it; what is
due when it fires is sidecar/stream/pacing.py's decision.
"""

from __future__ import annotations

import asyncio

from sidecar.alarm import Alarm
from sidecar.normalize import Normalizer
from sidecar.stream.pacing import Pacing
from sidecar.stream.sink import Sink
from sidecar.stream.source import ItemSource
from sidecar.stream.state import StreamState


class Pacer:
    """A stream's deadline and what to do when it passes: end on a limit, or heartbeat."""

    __slots__ = ("_keepalive", "_loop", "_sink", "_state", "pacing")

    def __init__(self, pacing: Pacing, state: StreamState, sink: Sink, keepalive: bytes) -> None:
        self.pacing = pacing
        self._state = state
        self._sink = sink
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()

    def deadline(self) -> float:
        state = self._state
        return self.pacing.deadline(state.started, state.last_byte, state.last_write)

    async def tick(self) -> None:
        """A deadline passed: raise the limit reached, else write a heartbeat if due."""
        state = self._state
        now = self._loop.time()
        if (reached := self.pacing.limit_reached(now, state.started, state.last_byte)) is not None:
            raise reached
        if self.pacing.heartbeat_due(now, state.last_write):
            await self._sink.write(self._keepalive)
            state.heartbeat()


async def pump(
    source: ItemSource,
    sink: Sink,
    state: StreamState,
    pacer: Pacer,
    alarm: Alarm,
    normalizer: Normalizer,
) -> bool:
    """Forward until the source ends; True if the upstream's terminal event went out.

    False: it ended cleanly without one (the run writes ours). Errors that
    end the stream are raised for the run to turn into its terminal event.
    """
    loop = asyncio.get_running_loop()
    state.reading_from(loop.time())
    alarm.set(pacer.deadline())
    while True:
        try:
            items = await alarm.wait(source.read())
        except TimeoutError:
            await pacer.tick()
            alarm.set(pacer.deadline())
            continue
        state.read_at(loop.time())
        if items is None:
            return False
        if items:
            batch = normalizer.batch(items, sink.ids)
            state.counted(batch)
            await sink.emit(batch)
            if batch.terminal:
                return True
        alarm.set(pacer.deadline())
