"""The hot path of a normalised HTTP stream: each upstream read goes out in its own callback.

Strategy: once a (non-resumable) stream is committed, the upstream
connection's protocol hands every read to :class:`Splice` (via
:meth:`sidecar.upstream.http.Upstream.attach`), which forwards it and writes
the result to the client's transport within the same call, so a read costs no
future, no task wake-up and no ``StreamReader``. The stream's task sleeps
until the stream ends (or a client falls behind). What is forwarded is what
the awaiting path would forward: the complete events of a read that a
bytes-only check finds unchanged go out as the upstream sent them, the rest
through the decoder and the normaliser.

There is still one write path at a time, so a heartbeat never lands inside an
event: every callback writes whole events or a whole heartbeat. When the
client's write buffer is over the high-water mark, the callbacks stop writing:
they hold their bytes, the upstream stops reading, and the task waits for the
client to drain (bounded by ``limits.write_timeout``) before it writes them
and lets the upstream go on. Heartbeats and the stream's limits come from one
callback on the process's timer wheel (sidecar/timers.py), re-armed lazily:
events do not touch it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.client import wait_drained
from sidecar.errors import ClientGone, UpstreamError
from sidecar.normalize import heartbeat_due
from sidecar.sse import Decoder
from sidecar.upstream.http import Upstream

if TYPE_CHECKING:
    from sidecar.stream import StreamRun

#: asyncio's default write high-water mark: at or under it a write never waits.
_HIGH_WATER = 64 * 1024

#: How the body ended, when not with an error.
COMPLETED = "completed"  # the upstream's own terminal event went out
CLOSED = "closed"  # the upstream body ended without one


class Splice:
    """Upstream reads to client writes, in the upstream's callbacks."""

    __slots__ = (
        "_boundary",
        "_chunked",
        "_congested",
        "_decoder",
        "_end",
        "_first",
        "_on_timer",
        "_pending",
        "_raw_events",
        "_slot",
        "_transport",
        "_wake",
        "_wheel",
        "loop",
        "run",
        "upstream",
    )

    def __init__(self, run: StreamRun, upstream: Upstream, raw_events: Callable[[bytes], int]):
        assert run.response is not None
        transport = run.request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("client connection closed")
        limits = run.route.limits
        self.run = run
        self.upstream = upstream
        self.loop = run.loop
        self._transport: asyncio.Transport = transport
        # aiohttp chose the framing when it sent the head (chunked for HTTP/1.1);
        # its writer is bypassed here, and its final write_eof() closes the framing.
        self._chunked = run.response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._decoder = Decoder(limits.max_line_bytes, limits.max_event_bytes)
        self._raw_events = raw_events
        self._pending: list[bytes] = []
        self._congested = False
        self._first = True
        #: The decoder holds nothing: a read may go out as it is.
        self._boundary = False  # until the decoder has seen (and dropped) any BOM
        #: COMPLETED, CLOSED, or what the task raises (None while running).
        self._end: str | Exception | None = None
        self._wake: asyncio.Future[None] | None = None
        self._wheel = run.proxy.ctx.timers
        self._slot: int | None = None
        self._on_timer = self._tick  # one bound method, so the wheel can find it again

    async def forward(self) -> None:
        """Forward until the stream ends, and end it: the upstream's terminal event or ours.

        Errors that end the stream are raised for the stream to turn into
        its terminal error event (sidecar/stream.py).
        """
        run = self.run
        run.last_byte = self.loop.time()
        self.upstream.attach(self)
        self._arm()
        try:
            while True:
                if self._congested:
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
            run.outcome = "completed"
            return
        self._decoder.close()  # raises TruncatedEvent if it ended inside an event
        await run.end_closed()

    # --- Sink: called by the upstream protocol ---------------------------------

    def data(self, chunk: bytes) -> None:
        if self._end is not None or not chunk:
            return
        run = self.run
        now = self.loop.time()
        silence = now - run.last_byte
        run.max_silence = max(run.max_silence, silence)
        run.last_byte = now
        if self._first:
            run.metrics.ttfb.observe(now - run.started)
            self._first = False
        counts = run.counts
        counts.bytes_in += len(chunk)
        try:
            if not (self._boundary and chunk.endswith(b"\n\n")):
                if self._forward(chunk):
                    self._stop(COMPLETED)
            elif (events := self._raw_events(chunk)) >= 0:
                # The usual read: whole events that need no change (inlined
                # from _forward, which costs a call per read in the hot path).
                run.forwarded += events
                counts.forwarded += events
                self._send(chunk)
            elif not self._rewritten(chunk) and self._decoded(chunk):
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
            self.run.forwarded += events
            self.run.counts.forwarded += events
            self._send(block)
        elif not self._rewritten(block):
            return self._decoded(chunk)
        return cut < len(chunk) and self._decoded(chunk[cut:])

    def _rewritten(self, block: bytes) -> bool:
        """Send a block of complete events whose only change is comments, if it is that."""
        batch = self.run.proxy.normalizer.rewrite_comments(block)
        if batch is None or (batch.data and self._raw_events(batch.data) < 0):
            return False
        self.run.count_batch(batch)
        if batch.data:
            self._send(batch.data)
        return True

    def _decoded(self, data: bytes) -> bool:
        """Decode, normalise and send; True when the upstream's terminal event went out."""
        run = self.run
        items = self._decoder.feed(data)
        self._boundary = self._decoder.at_boundary
        if items:
            batch = run.proxy.normalizer.batch(items, None)
            run.count_batch(batch)
            if batch.data:
                self._send(batch.data)
            if batch.terminal:
                return True
        if self._decoder.error is not None:
            raise self._decoder.error
        return False

    def _send(self, data: bytes) -> None:
        """Write now, or hold the bytes for the task while the client is behind."""
        transport = self._transport
        size = len(data)
        if (
            self._congested
            or transport.get_write_buffer_size() + size > _HIGH_WATER
            or transport.is_closing()
        ):
            self._hold(data)
        else:
            self._write_now(data)

    def _hold(self, data: bytes) -> None:
        if self._congested:
            self._pending.append(data)
        elif self._transport.is_closing():
            self._stop(ClientGone("client connection closed"))
        else:
            self._pending.append(data)
            self._congested = True
            self.upstream.pause()
            self._signal()

    def _write_now(self, data: bytes) -> None:
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        run = self.run
        run.last_write = self.loop.time()
        run.bytes_out += len(data)
        run.counts.bytes_out += len(data)

    async def _relieve(self) -> None:
        """The client is behind: wait for it to drain, then write what was held."""
        run = self.run
        await wait_drained(run.request, run.route.limits.write_timeout)
        if self._transport.is_closing():
            raise ClientGone("client connection closed")
        data = b"".join(self._pending)
        self._pending.clear()
        self._congested = False
        self._write_now(data)
        if self._end is None:
            self.upstream.resume()
            self._disarm()
            self._arm()  # it was pacing itself for a congested client

    # --- the timer: heartbeats and limits --------------------------------------

    def _arm(self) -> None:
        run = self.run
        now = self.loop.time()
        if self._congested:
            # Waiting on the client, not the upstream: only the total limit runs.
            deadline = min(now + 1.0, run.started + run.route.limits.max_duration)
        else:
            deadline = run.next_deadline()
        self._slot = self._wheel.add(max(deadline, now), self._on_timer)

    def _disarm(self) -> None:
        if self._slot is not None:
            self._wheel.remove(self._slot, self._on_timer)
            self._slot = None

    def _tick(self) -> None:
        self._slot = None
        if self._end is not None:
            return
        run = self.run
        now = self.loop.time()
        # While the client is behind, the upstream is paused by us: no idle limit.
        if (reached := run.limit_reached(now, idle=not self._congested)) is not None:
            self._stop(reached)
            return
        if not self._congested and heartbeat_due(now, run.last_write, run.heartbeat_interval):
            self._send(run.proxy.normalizer.keepalive)
            run.heartbeats += 1
            run.counts.heartbeats += 1
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
