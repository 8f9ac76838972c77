"""The client side of a stream: its headers, its opening, and the body of every write.

Shared by the client Sink of a stream (sidecar/stream/sink.py), which the
followers of a resumable run (sidecar/resume/follower.py) write through too,
and the probe (sidecar/probe.py), so that each writes to its client the same way.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from sidecar import headers as hdrs
from sidecar.config import Route
from sidecar.errors import ClientGone, SlowClient
from sidecar.normalize import opening


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


async def start_response(
    request: web.Request, upstream_headers: hdrs.Headers | None, request_id: str
) -> web.StreamResponse:
    """Send a normalised stream's headers to the client now."""
    headers = hdrs.stream_response(upstream_headers)
    headers[hdrs.X_REQUEST_ID] = request_id
    if request.version >= (1, 1) and request.keep_alive:
        # Implied by HTTP/1.1, but some intermediaries only trust it spelled out.
        headers[hdrs.CONNECTION] = "keep-alive"
    response = web.StreamResponse(status=200, headers=headers)
    try:
        await response.prepare(request)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise ClientGone("client closed before the stream began") from None
    return response


def opening_of(route: Route, keepalive: bytes | None = None) -> bytes:
    """The opening of a stream; ``keepalive`` (the route's) may carry its ``retry:``."""
    stream = route.stream
    retry = ms(stream.retry) if stream.retry is not None else None
    return opening(retry, stream.open_event, keepalive)


#: asyncio's default write high-water mark: a write that leaves the buffer at
#: or under it returns without waiting for the client.
_NEVER_BLOCKS = 64 * 1024


async def client_write(
    request: web.Request, response: web.StreamResponse, data: bytes, write_timeout: float
) -> None:
    """Write to a client, or raise ClientGone / SlowClient; the body of every write path."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone("client connection closed")
    try:
        if transport.get_write_buffer_size() + len(data) <= _NEVER_BLOCKS:
            await response.write(data)  # stays under the high-water mark: cannot block
        else:
            # The client is behind; bound how long it may hold the stream.
            try:
                async with asyncio.timeout(write_timeout):
                    await response.write(data)
            except TimeoutError:
                raise SlowClient(f"client took over {write_timeout:g}s to accept a write") from None
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise ClientGone("client connection closed") from None


async def wait_drained(request: web.Request, write_timeout: float) -> None:
    """Wait until the client's write buffer is under its low-water mark, or SlowClient."""
    try:
        async with asyncio.timeout(write_timeout):
            await request.writer.drain()
    except TimeoutError:
        raise SlowClient(f"client took over {write_timeout:g}s to accept a write") from None
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise ClientGone("client connection closed") from None


def ms(seconds: float) -> int:
    return round(seconds * 1000)
