"""Which WebSocket Source a route's stream reads, and how a refused handshake is answered.

``profile: generic`` opens one socket per stream (:class:`WebSocketSource`);
``profile: openclaw`` runs on the process's shared, authenticated gateway
connection (:class:`GatewayRunSource`). Both have the same open/read/close/
abort shape, so the stream pumps either without knowing which.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

from aiohttp import web
from prometheus_client import Counter

from sidecar.errors import GatewayRefused, SidecarError
from sidecar.upstream.gateway_runs import GatewayPool, GatewayRunSource
from sidecar.upstream.websocket import WebSocketSource
from sidecar.upstream.ws_profile import WebSocketProfile


def websocket_source(
    pool: GatewayPool,
    url: str,
    profile: WebSocketProfile,
    *,
    body: object,
    session_key: str | None,
    request_id: str,
    terminal_event: str,
    on_malformed: Callable[[str], None] | None = None,
) -> WebSocketSource | GatewayRunSource:
    """``on_malformed``: told the kind of each frame the shared connection skips."""
    if profile.profile == "openclaw":
        return GatewayRunSource(
            pool.connection(url, profile, on_malformed),
            body=body,
            session_key=session_key,
            request_id=request_id,
            idempotency_key=str(uuid4()),
            terminal_event=terminal_event,
        )
    return WebSocketSource(
        url,
        profile,
        body=body,
        session_key=session_key,
        request_id=request_id,
        terminal_event=terminal_event,
    )


def refusal_response(exc: SidecarError) -> web.Response | None:
    """A refused gateway handshake before the commit: 502 with a JSON error naming its code."""
    if not isinstance(exc, GatewayRefused):
        return None
    body = {"error": {"code": exc.code, "message": str(exc), "gateway_code": exc.gateway_code}}
    return web.json_response(body, status=502)


def malformed_counter(protocol_errors: Counter, route: str) -> Callable[[str], None]:
    """Counts a shared connection's skipped frames for the route that opened it.

    Holds the metric and the route name only: the connection outlives the stream.
    """

    def count(kind: str) -> None:
        protocol_errors.labels(route, kind).inc()

    return count
