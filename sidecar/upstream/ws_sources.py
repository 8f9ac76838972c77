"""Which WebSocket Source a route's stream reads, and how a refused handshake is answered.

``profile: generic`` opens one socket per stream (:class:`WebSocketSource`);
``profile: openclaw`` runs on the process's shared, authenticated gateway
connection (:class:`GatewayRunSource`). Both have the same open/read/close/
abort shape, so the stream pumps either without knowing which.
"""

from __future__ import annotations

from uuid import uuid4

from aiohttp import web

from sidecar.errors import GatewayRefused, SidecarError
from sidecar.upstream.gateway import GatewayPool, GatewayRunSource
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
) -> WebSocketSource | GatewayRunSource:
    if profile.profile == "openclaw":
        return GatewayRunSource(
            pool.connection(url, profile),
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
