"""The hot path of a normalised HTTP stream: each upstream read goes out in its own callback.

Strategy: once an HTTP stream is committed, the upstream connection's
protocol hands every read to :class:`Splice` (via
:meth:`sidecar.upstream.http.Upstream.attach`), which forwards it and writes
the result to its target within the same call, so a read costs no future, no
task wake-up and no ``StreamReader``. The stream's task sleeps until the
stream ends (or a client falls behind). What is forwarded is what the
awaiting path would forward: the complete events of a read that a bytes-only
check finds unchanged go out as the upstream sent them (on a resumable run,
with their ids added on the bytes), the rest through the decoder and the
normaliser. It is the HTTP Source and a Sink (sidecar/stream/sink.py) joined
in the socket's callbacks, chosen when the Sink allows it
(``Sink.splice_target``: the client, or a resumable run's log, which writes
its caught-up client itself); its contract is the awaiting pump's
(sidecar/stream/pump.py), held equal by tests/property/test_splice_properties.py
and, for the ids, tests/property/test_normalize_number.py.

There is still one write path at a time, so a heartbeat never lands inside an
event: every callback writes whole events or a whole heartbeat. When the
client's write buffer is over the high-water mark, the callbacks stop writing:
they hold their bytes, the upstream stops reading, and the task waits for the
client to drain (bounded by ``limits.write_timeout``) before it writes them
and lets the upstream go on. Heartbeats and the stream's limits come from one
callback on the process's timer wheel (sidecar/timers.py), re-armed lazily:
events do not touch it; what is due is sidecar/stream/pacing.py's decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.config import Limits
from sidecar.errors import ClientGone, SlowClient, UpstreamError
from sidecar.normalize import Normalizer, new_entry, steady_event
from sidecar.replay.base import Entry
from sidecar.sse import Decoder
from sidecar.stream.pacing import Pacing
from sidecar.stream.sink import SpliceTarget
from sidecar.stream.state import StreamState
from sidecar.timers import TimerWheel
from sidecar.upstream.http import Upstream
from sidecar.upstream.resumption import ResumeCursor

#: How the body ended, when not with an error.
COMPLETED = "completed"  # the upstream's own terminal event went out
CLOSED = "closed"  # the upstream body ended without one

#: A refused block longer than this is checked again without its last event.
_SPLIT_MIN = 4096


class Splice:
    """Upstream reads to client writes, in the upstream's callbacks."""

    __slots__ = (
        "_boundary",
        "_congested",
        "_cursor",
        "_decoder",
        "_end",
        "_ids",
        "_max_pending",
        "_normalizer",
        "_on_timer",
        "_pacing",
        "_pending",
        "_pending_size",
        "_raw_events",
        "_sink",
        "_slot",
        "_state",
        "_wake",
        "_wheel",
        "loop",
        "upstream",
    )

    def __init__(
        self,
        upstream: Upstream,
        sink: SpliceTarget,
        state: StreamState,
        pacing: Pacing,
        *,
        limits: Limits,
        normalizer: Normalizer,
        raw_events: Callable[[bytes], int],
        wheel: TimerWheel,
        cursor: ResumeCursor | None = None,
    ) -> None:
        sink.take_transport()
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self._sink = sink
        #: A resumable run's (its log Sink numbers and logs every event).
        self._ids = sink.ids
        self._state = state
        self._pacing = pacing
        self._normalizer = normalizer
        self._decoder = Decoder(limits.max_line_bytes, limits.max_event_bytes)
        self._raw_events = raw_events
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._max_pending = limits.max_pending_bytes
        self._congested = False
        #: The decoder holds nothing: a read may go out as it is.
        self._boundary = False  # until the decoder has seen (and dropped) any BOM
        #: With upstream_resume, every event's id must be seen: no read goes out
        #: as it is (``_boundary`` stays False), each passes the cursor.
        self._cursor = cursor
        #: COMPLETED, CLOSED, or what the task raises (None while running).
        self._end: str | Exception | None = None
        self._wake: asyncio.Future[None] | None = None
        self._wheel = wheel
        self._slot: int | None = None
        self._on_timer = self._tick  # one bound method, so the wheel can find it again

    async def forward(self) -> bool:
        """Forward until the body ends; True if the upstream's terminal event went out.

        False: the body ended cleanly without one (the run writes ours).
        Errors that end the stream are raised for the run to turn into its
        terminal error event (sidecar/stream/run.py).
        """
        self._state.reading_from(self.loop.time())
        self.upstream.attach(self)
        self._arm()
        try:
            while True:
                if self._congested and not isinstance(self._end, SlowClient):
                    await self._relieve()  # also after the end: held bytes go out first
                    continue
                if self._end is not None:
                    break
                self._wake = self.loop.create_future()
                await self._wake
        finally:
            self._wake = None
            self._disarm()
            self.upstream.detach()
        end = self._end
        if isinstance(end, BaseException):
            raise end
        if end == COMPLETED:
            return True
        self._decoder.close()  # raises TruncatedEvent if it ended inside an event
        return False

    # --- called by the upstream protocol -----------------------------------------

    def data(self, chunk: bytes) -> None:
        # Once per read of every stream: the calls a read would cost (the
        # state's read_at and passed, number_one) are inlined, each a frame
        # less on the path whose cost the benchmark's targets are about.
        if self._end is not None or not chunk:
            return
        state = self._state
        now = self.loop.time()
        if state.first_read:
            state.read_at(now)
        else:  # read_at without the first read's sample
            if (silence := now - state.last_byte) > state.max_silence:
                state.max_silence = silence
            state.last_byte = now
        state.counts.bytes_in += len(chunk)
        try:
            if not (self._boundary and chunk.endswith(b"\n\n")):
                if self._forward(chunk):
                    self._stop(COMPLETED)
            elif (events := self._raw_events(chunk)) >= 0:
                # The usual read: whole events that need no change (inlined
                # from _forward, which costs a call per read in the hot path).
                if (ids := self._ids) is None:
                    state.forwarded += events
                    state.counts.forwarded += events
                    self._send(chunk)
                elif events == 1:
                    # A resumable run's steady read: one event, numbered on
                    # its bytes (_numbered's first case, inlined likewise;
                    # number_one's steady case, inlined too).
                    if (own := steady_event(chunk)) is not None:
                        seq = ids.seq = ids.seq + 1
                        state.forwarded += 1
                        state.counts.forwarded += 1
                        own_id = own.group(1).decode()
                        self._sink.emit_entry(new_entry(Entry, (seq, own_id, chunk, False)))
                    elif (entry := self._normalizer.number_one(chunk, ids)) is not None:
                        state.passed(1)
                        self._sink.emit_entry(entry)
                    elif self._decoded(chunk):
                        self._stop(COMPLETED)
                elif not self._numbered(chunk) and self._decoded(chunk):
                    self._stop(COMPLETED)
            elif self._refused(chunk):
                self._stop(COMPLETED)
        except Exception as exc:  # raised in the task, not lost in a callback
            self._stop(exc)
            return

    def eof(self) -> None:
        self._stop(CLOSED)

    def failed(self, exc: UpstreamError) -> None:
        self._stop(exc)

    # --- forwarding ------------------------------------------------------------

    def _forward(self, chunk: bytes) -> bool:
        """Forward a read's complete, unchanged events as they are; decode the rest.

        Reads rarely end on an event boundary, so the decoder takes the read
        up to the first boundary (finishing the event it holds), the middle
        goes out byte for byte if :meth:`Normalizer.raw_events` passes it, and
        the decoder takes the tail. Order on the wire is kept. True once the
        upstream's terminal event went out.
        """
        if not self._boundary:
            first = chunk.find(b"\n\n") + 2
            if first < 2:
                return self._decoded(chunk)
            if self._decoded(chunk[:first]):
                return True
            chunk = chunk[first:]
            if not self._boundary:
                return self._decoded(chunk)
        cut = chunk.rfind(b"\n\n") + 2
        if cut < 2:
            return self._decoded(chunk)
        block = chunk[:cut]
        if (events := self._raw_events(block)) >= 0:
            if not self._as_is(block, events):
                return self._decoded(chunk)
        elif self._refused(block):
            return True
        return cut < len(chunk) and self._decoded(chunk[cut:])

    def _as_is(self, block: bytes, events: int) -> bool:
        """Emit a block the raw check passed, numbered on its bytes on a resumable run.

        False when the ids do not allow that (the decoder must take it).
        """
        if self._ids is not None:
            return self._numbered(block)
        self._state.passed(events)
        self._send(block)
        return True

    def _refused(self, block: bytes) -> bool:
        """Complete events the raw check refused; True once the upstream's terminal event went out.

        Comments alone are rewritten on the bytes. A long block (a burst
        read) is mostly refused for its last event, since the upstream's
        terminal event ends it, so the events before that one are checked
        again and may still go out as they are; the decoder takes the rest.
        """
        if self._rewritten(block):
            return False
        if len(block) > _SPLIT_MIN:
            last = block.rfind(b"\n\n", 0, len(block) - 2) + 2
            head = block[:last]
            if last > 2 and (events := self._raw_events(head)) >= 0 and self._as_is(head, events):
                return self._decoded(block[last:])
        return self._decoded(block)

    def _numbered(self, block: bytes) -> bool:
        """Number a block of unchanged events on its bytes and emit it, if ids allow that."""
        assert self._ids is not None
        if block.find(b"\n\n") == len(block) - 2:
            # One event, the steady read: an entry, no batch around it.
            entry = self._normalizer.number_one(block, self._ids)
            if entry is None:
                return False
            self._state.passed(1)
            self._sink.emit_entry(entry)
            return True
        batch = self._normalizer.number(block, self._ids)
        if batch is None:
            return False
        self._state.counted(batch)
        self._sink.emit_nowait(batch)
        return True

    def _rewritten(self, block: bytes) -> bool:
        """Send a block of complete events whose only change is comments, if it is that."""
        if self._ids is not None:
            return False  # a numbered stream's keepalives are log entries: the decoder's
        batch = self._normalizer.rewrite_comments(block)
        if batch is None or (batch.data and self._raw_events(batch.data) < 0):
            return False
        self._state.counted(batch)
        if batch.data:
            self._send(batch.data)
        return True

    def _decoded(self, data: bytes) -> bool:
        """Decode, normalise and send; True when the upstream's terminal event went out."""
        items = self._decoder.feed(data)
        self._boundary = self._decoder.at_boundary
        if self._cursor is not None:  # upstream_resume: every id seen, repeats dropped
            self._boundary = False  # so no read goes out undecoded
            items = self._cursor.take(items)
        if items:
            batch = self._normalizer.batch(items, self._ids)
            self._state.counted(batch)
            if self._ids is not None:
                self._sink.emit_nowait(batch)
            elif batch.data:
                self._send(batch.data)
            if batch.terminal:
                return True
        if self._decoder.error is not None:
            raise self._decoder.error
        return False

    def _send(self, data: bytes) -> None:
        """Write now, or hold the bytes for the task while the client is behind."""
        if self._congested or not self._sink.write_if_room(data):
            self._hold(data)

    def _hold(self, data: bytes) -> None:
        self._pending_size += len(data)
        if self._pending_size > self._max_pending:
            # The upstream is paused, but one read (decompressed: one piece)
            # may still come; past the cap the client is too far behind.
            self._stop(SlowClient("client fell over limits.max_pending_bytes behind"))
        elif self._congested:
            self._pending.append(data)
        elif self._sink.closing:
            self._stop(ClientGone("client connection closed"))
        else:
            self._pending.append(data)
            self._congested = True
            self.upstream.pause()
            self._signal()

    async def _relieve(self) -> None:
        """The client is behind: wait for it to drain, then write what was held."""
        await self._sink.drained()
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._congested = False
        self._sink.write_nowait(data)
        if self._end is None:
            # The silence while paused was ours, not the upstream's: the idle
            # limit counts from now (else a slow client ends as upstream_timeout).
            self._state.reading_from(self.loop.time())
            self.upstream.resume()
            self._disarm()
            self._arm()  # it was pacing itself for a congested client

    # --- the timer: heartbeats and limits --------------------------------------

    def _arm(self) -> None:
        state = self._state
        now = self.loop.time()
        if self._congested:
            # Waiting on the client, not the upstream: only the total limit runs.
            deadline = self._pacing.congested_deadline(now, state.started)
        else:
            deadline = self._pacing.deadline(state.started, state.last_byte, state.last_write)
        self._slot = self._wheel.add(max(deadline, now), self._on_timer)

    def _disarm(self) -> None:
        if self._slot is not None:
            self._wheel.remove(self._slot, self._on_timer)
            self._slot = None

    def _tick(self) -> None:
        self._slot = None
        if self._end is not None:
            return
        state = self._state
        pacing = self._pacing
        now = self.loop.time()
        # While the client is behind, the upstream is paused by us: no idle limit.
        reached = pacing.limit_reached(
            now, state.started, state.last_byte, idle=not self._congested
        )
        if reached is not None:
            self._stop(reached)
            return
        if not self._congested and pacing.heartbeat_due(now, state.last_write):
            self._send(self._normalizer.keepalive)
            state.heartbeat()
        self._arm()  # harmless if that write ended the stream: the task disarms it

    # --- ending ----------------------------------------------------------------

    def _stop(self, end: str | Exception) -> None:
        if self._end is None:
            self._end = end
            self.upstream.detach()  # no more reads, nor decoding of what is left
            self._signal()

    def _signal(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
