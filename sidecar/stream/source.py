"""The upstream side of a stream: opening it, reading it as items, or passing it through.

An HTTP upstream is read as bytes through the decoder; a WebSocket gateway
already yields events. Both look the same to the pump (sidecar/stream/pump.py):
``read()`` gives the next items, or None once the source ended cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar import headers as hdrs
from sidecar.client import json_error
from sidecar.config import Route
from sidecar.errors import UpstreamError, UpstreamStatus
from sidecar.metrics import Metrics, Tally
from sidecar.sse import Decoder, Item
from sidecar.stream.state import StreamState
from sidecar.upstream import connect as upstream_connect
from sidecar.upstream import ws_sources
from sidecar.upstream.gateway_runs import GatewayPool, GatewayRunSource
from sidecar.upstream.head import HeadLimits
from sidecar.upstream.http import Upstream
from sidecar.upstream.resumption import KeptRequest, ResumeCursor
from sidecar.upstream.websocket import WebSocketProfile, WebSocketSource


class ItemSource(Protocol):
    async def read(self) -> Sequence[Item] | None:
        """The next items (maybe none yet), or None at a clean end."""
        ...


class HttpItems:
    """An HTTP body as items: bytes in, decoded events and comments out."""

    __slots__ = ("_counts", "_cursor", "_decoder", "_error", "_upstream")

    def __init__(
        self, upstream: Upstream, route: Route, counts: Tally, cursor: ResumeCursor | None = None
    ) -> None:
        limits = route.limits
        self._upstream = upstream
        self._decoder = Decoder(limits.max_line_bytes, limits.max_event_bytes)
        self._counts = counts
        #: With upstream_resume: every event passes the cursor (its id, its repeats).
        self._cursor = cursor
        self._error: Exception | None = None

    async def read(self) -> Sequence[Item] | None:
        if self._error is not None:
            # The items decoded before the bad bytes went out first.
            raise self._error
        chunk = await self._upstream.read_chunk()
        if not chunk:
            self._decoder.close()  # raises TruncatedEvent if it ended inside an event
            return None
        self._counts.bytes_in += len(chunk)
        decoder = self._decoder
        items = decoder.feed(chunk)
        if self._cursor is not None:
            items = self._cursor.take(items)
        if decoder.error is not None:
            if not items:
                raise decoder.error
            self._error = decoder.error
        return items


class WebSocketItems:
    """A gateway's run as items (its tracker already made them events)."""

    __slots__ = ("_source",)

    def __init__(self, source: WebSocketSource | GatewayRunSource) -> None:
        self._source = source

    async def read(self) -> Sequence[Item] | None:
        items = await self._source.read()
        return items or None  # the tracker ended without a terminal event


async def open_http(
    request: web.Request,
    url: URL,
    body: bytes | None,
    headers: CIMultiDict[str],
    route: Route,
) -> Upstream:
    """Send the request upstream with ``headers``; the connection once its headers are in."""
    limits = route.limits
    head = HeadLimits(
        limits.max_upstream_head_bytes, limits.max_upstream_headers, limits.max_upstream_interim
    )
    return await upstream_connect.open_stream(
        request.method, url, headers, body, limits.connect_timeout, head
    )


async def open_kept(request: KeptRequest, route: Route) -> Upstream:
    """Send a kept request (an upstream resume) as it is; the connection once its head is in."""
    limits = route.limits
    head = HeadLimits(
        limits.max_upstream_head_bytes, limits.max_upstream_headers, limits.max_upstream_interim
    )
    return await upstream_connect.open_stream(
        request.method,
        URL(request.url, encoded=True),
        CIMultiDict(request.headers),
        request.body,
        limits.connect_timeout,
        head,
    )


def websocket_source(
    route: Route,
    request: web.Request,
    body: bytes | None,
    session_key: str | None,
    request_id: str,
    *,
    gateways: GatewayPool,
    on_malformed: Callable[[str], None] | None = None,
) -> WebSocketSource | GatewayRunSource:
    """A gateway's source for this request (its body, or its query as the body).

    ``profile: openclaw`` runs on the process's shared gateway connection
    (``gateways``), whose skipped frames ``on_malformed`` counts.
    """
    payload: object = body if body else dict(request.query)
    return ws_sources.websocket_source(
        gateways,
        route.upstream,
        route.websocket or WebSocketProfile(),
        body=payload,
        session_key=session_key,
        request_id=request_id,
        terminal_event=route.terminal.events[0] if route.terminal.events else "done",
        on_malformed=on_malformed,
    )


def is_stream(upstream: Upstream) -> bool:
    return 200 <= upstream.status < 300 and upstream.content_type == "text/event-stream"


def check_late(upstream: Upstream) -> None:
    """After commit, an upstream that is not a stream can only end it with an error."""
    if not 200 <= upstream.status < 300:
        raise UpstreamStatus(upstream.status, f"upstream answered {upstream.status}")
    if upstream.content_type != "text/event-stream":
        raise UpstreamStatus(
            upstream.status, f"upstream answered {upstream.content_type}, not an event stream"
        )


async def passthrough(
    upstream: Upstream, route: Route, state: StreamState, metrics: Metrics
) -> web.StreamResponse:
    """Hand a non-stream (or error) response to the client as it is."""
    try:
        body = await upstream.read_body(route.limits.max_passthrough_bytes)
    except UpstreamError as exc:
        state.outcome = "upstream_disconnected"
        return json_error(502, "bad_upstream_response", str(exc))
    state.outcome = "passthrough"
    metrics.passthrough.labels(route.name, f"{upstream.status // 100}xx").inc()
    resp = web.Response(
        status=upstream.status,
        reason=upstream.reason,
        body=body,
        headers=hdrs.passthrough_response(upstream.headers),
    )
    resp.headers["X-Request-ID"] = state.request_id
    return resp
