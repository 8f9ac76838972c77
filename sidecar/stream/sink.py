"""Where a stream's output goes: the Sink contract, and the client's one write path.

A run hands its Sink the headers (commit), each normalised batch (emit), its
heartbeats and its terminal event; the Sink says whether the run numbers
events (``ids``), heartbeats itself, and whether the splice may write for it
(``splice_target``: the capability the fast path is chosen by). The client
Sink is the only code that writes to a client's socket, awaiting
(:meth:`ClientSink.write`) or from the splice's callbacks
(:meth:`ClientSink.write_nowait`), and it accounts every byte once.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from sidecar.client import client_write, opening_of, start_response, wait_drained
from sidecar.config import Route
from sidecar.errors import ClientGone
from sidecar.headers import Headers
from sidecar.metrics import RouteMetrics
from sidecar.normalize import Batch, IdSource
from sidecar.replay.base import Entry
from sidecar.stream.state import StreamState

#: asyncio's default write high-water mark: at or under it a write never waits.
HIGH_WATER = 64 * 1024


class SpliceTarget(Protocol):
    """What the splice writes to from the socket's callbacks (sidecar/stream/splice.py).

    The client Sink, or a resumable run's log Sink, which numbers the events
    (``ids``), logs them and writes its caught-up local client itself.
    """

    #: Numbers the events (None: they go out as they came, by write_nowait).
    ids: IdSource | None

    def take_transport(self) -> None: ...

    @property
    def closing(self) -> bool: ...

    def write_nowait(self, data: bytes) -> None: ...

    def write_if_room(self, data: bytes) -> bool:
        """Write now if the client keeps up (its write buffer stays at or under
        HIGH_WATER); False, writing nothing, if not.

        One call for the check and the write: it is the hot path's.
        """
        ...

    def emit_nowait(self, batch: Batch) -> None:
        """A numbered batch (``ids`` set): its entries, then its client's bytes."""
        ...

    def emit_entry(self, entry: Entry) -> None:
        """One numbered event (``ids`` set): ``emit_nowait`` of a batch of it alone."""
        ...

    async def drained(self) -> None: ...


class Sink(Protocol):
    #: Numbers the run's events (None: events keep the upstream's ids).
    ids: IdSource | None
    #: The run writes heartbeats here (False: whoever reads the Sink does).
    heartbeats: bool

    async def commit(self, upstream_headers: Headers | None) -> None: ...

    async def emit(self, batch: Batch) -> None: ...

    async def write(self, data: bytes) -> None: ...

    #: The client's response once committed (None: the Sink is not a client).
    response: web.StreamResponse | None

    def next_id(self) -> str | None: ...

    async def end(self, data: bytes) -> bool:
        """Write the terminal event; whether it was written."""
        ...

    def splice_target(self) -> SpliceTarget | None:
        """What the splice may write to for this Sink, if it allows the splice."""
        ...


class ClientSink:
    """The one write path of a client's stream (STYLE.md habit 3)."""

    __slots__ = (
        "_chunked",
        "_loop",
        "_metrics",
        "_open_event",
        "_opening",
        "_request",
        "_state",
        "_transport",
        "_write_timeout",
        "response",
    )

    ids: IdSource | None = None
    heartbeats = True

    def __init__(
        self,
        request: web.Request,
        route: Route,
        state: StreamState,
        metrics: RouteMetrics,
        keepalive: bytes | None = None,
    ) -> None:
        self._request = request
        self._state = state
        self._metrics = metrics
        self._write_timeout = route.limits.write_timeout
        self._opening = opening_of(route, keepalive)  # the keepalive may carry retry:
        self._open_event = bool(route.stream.open_event)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._chunked = False
        self.response: web.StreamResponse | None = None

    async def commit(self, upstream_headers: Headers | None) -> None:
        """Send the stream's headers (and opening) now, before any upstream event."""
        await self.start(upstream_headers)
        await self.open()

    async def start(self, upstream_headers: Headers | None) -> None:
        """Send the stream's headers."""
        self.response = await start_response(
            self._request, upstream_headers, self._state.request_id
        )
        self._state.last_write = self._loop.time()

    async def open(self) -> None:
        """Write the route's opening (``retry:``, open event), if it has one."""
        if self._opening:
            await self.write(self._opening)
            if self._open_event:
                self._metrics.event("opening")

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await client_write(self._request, self.response, data, self._write_timeout)
        self._state.wrote(len(data), self._loop.time())

    async def emit(self, batch: Batch) -> None:
        if batch.data:
            await self.write(batch.data)

    def next_id(self) -> str | None:
        return None

    async def end(self, data: bytes) -> bool:
        await self.write(data)
        return True

    def splice_target(self) -> SpliceTarget | None:
        return self

    # --- the splice's side: writes from callbacks --------------------------------

    def take_transport(self) -> None:
        """Write straight to the socket from now on (aiohttp's writer is bypassed)."""
        assert self.response is not None
        transport = self._request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("client connection closed")
        self._transport = transport
        # aiohttp chose the framing when it sent the head (chunked for HTTP/1.1);
        # its final write_eof() closes the framing.
        self._chunked = self.response.headers.get("Transfer-Encoding", "").lower() == "chunked"

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def write_nowait(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self._state.wrote(len(data), self._loop.time())

    def write_if_room(self, data: bytes) -> bool:
        transport = self._transport
        assert transport is not None
        size = len(data)
        if transport.get_write_buffer_size() + size > HIGH_WATER or transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (size, data) if self._chunked else data)
        state = self._state  # its wrote(), inlined: once per event
        state.last_write = self._loop.time()
        state.bytes_out += size
        state.counts.bytes_out += size
        return True

    def emit_nowait(self, batch: Batch) -> None:
        if batch.data:
            self.write_nowait(batch.data)

    def emit_entry(self, entry: Entry) -> None:
        self.write_nowait(entry.data)

    async def drained(self) -> None:
        """Wait for the client to take what it was sent (bounded by limits.write_timeout)."""
        await wait_drained(self._request, self._write_timeout)
        if self.closing:
            raise ClientGone("client connection closed")
