"""What a stream uses of a gateway: its run on a shared connection, and the process's pool.

A :class:`GatewayRunSource` has the open/read/close/abort shape of
:class:`~sidecar.upstream.websocket.WebSocketSource`: it starts its run on
the (URL, profile)'s :class:`~sidecar.upstream.gateway.GatewayConnection`,
turns the run's frames into SSE events with a
:class:`~sidecar.upstream.ws_tracker.RunTracker`, and leaves the run with
``chat.abort`` if the stream ends first.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from sidecar.errors import SidecarError, UpstreamUnreachable
from sidecar.sse import Event
from sidecar.upstream.gateway import GatewayConnection, GatewayRun
from sidecar.upstream.websocket import json_body
from sidecar.upstream.ws_profile import WebSocketProfile, lookup, render_request
from sidecar.upstream.ws_tracker import RunTracker


class GatewayRunSource:
    """One stream's run on a shared :class:`GatewayConnection`."""

    def __init__(
        self,
        connection: GatewayConnection,
        *,
        body: object,
        session_key: str | None,
        request_id: str,
        idempotency_key: str,
        terminal_event: str = "done",
    ) -> None:
        self.connection = connection
        profile = connection.profile
        # Request ids must be unique on the shared socket; the client's own
        # X-Request-ID may repeat across clients.
        self.request_id = connection.next_id(f"agent-{request_id}")
        self.frame = render_request(
            profile.request,
            body=json_body(body),
            session_key=session_key,
            request_id=self.request_id,
            idempotency_key=idempotency_key,
        )
        self.tracker = RunTracker.for_request(profile, self.frame, terminal_event)
        self._run: GatewayRun | None = None
        self._closed = False

    @property
    def done(self) -> bool:
        return self.tracker.done

    @property
    def malformed(self) -> Counter[str]:
        return self.tracker.malformed

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self) -> None:
        if self._run is not None or self._closed:
            raise RuntimeError("a GatewayRunSource is opened once")
        profile = self.connection.profile
        request_id = lookup(self.frame, profile.request_id)
        try:
            async with asyncio.timeout(profile.connect_timeout):
                self._run = await self.connection.start(self.frame, str(request_id))
        except TimeoutError:
            raise UpstreamUnreachable(
                f"no gateway connection within connect_timeout ({profile.connect_timeout:g}s)"
            ) from None
        if self.closed:  # abort() ran while connecting: leave the run now
            self.abort()
            raise UpstreamUnreachable("closed while connecting")

    async def read(self) -> list[Event]:
        run = self._run
        if run is None:
            raise RuntimeError("read() before open()")
        tracker = self.tracker
        while not tracker.done:
            item = await run.queue.get()
            if isinstance(item, SidecarError):
                tracker.done = True
                raise item
            events = tracker.feed_frame(item)
            if events:
                return events
        return []

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Leave the run: ``chat.abort`` when it has not ended, else just forget it."""
        self._closed = True
        run, self._run = self._run, None
        if run is None:
            return
        if self.tracker.done:
            self.connection.forget(run)
        else:
            self.connection.abort(run)


class GatewayPool:
    """The process's gateway connections, one per (URL, profile)."""

    def __init__(self) -> None:
        # Keyed by the profile's identity: a route's profile lives as long as
        # the app, and profiles hold dicts, so they are not hashable.
        self._connections: dict[tuple[str, int], GatewayConnection] = {}

    def connection(
        self,
        url: str,
        profile: WebSocketProfile,
        on_malformed: Callable[[str], None] | None = None,
    ) -> GatewayConnection:
        key = (url, id(profile))
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = GatewayConnection(url, profile, on_malformed)
        return conn

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
