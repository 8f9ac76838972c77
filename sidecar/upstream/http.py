"""HTTP upstreams: one pooled aiohttp client, errors translated at this boundary.

Strategy: the proxy asks :func:`open_stream` for a response and then reads it
with :func:`read_chunk`; both raise only our own errors (:mod:`sidecar.errors`),
so the proxy never sees an aiohttp client exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from sidecar.errors import UpstreamDisconnected, UpstreamError, UpstreamUnreachable


def client_session() -> aiohttp.ClientSession:
    """The process-wide upstream client.

    ``limit=0``: aiohttp's default pool of 100 connections would queue the
    101st concurrent stream until another ends; the sidecar caps streams
    itself (``max_streams``). Responses are not decompressed by us because
    we ask for ``identity``; if an upstream compresses anyway, aiohttp decodes.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """The one place where aiohttp's client errors become ours."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamUnreachable("timed out connecting to upstream") from None
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamDisconnected(f"upstream connection broke {what}: {exc}") from None
    except aiohttp.ServerDisconnectedError:
        raise UpstreamDisconnected(f"upstream closed the connection {what}") from None
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
        raise UpstreamUnreachable(f"cannot connect to upstream: {exc}") from None
    except aiohttp.ClientResponseError as exc:
        raise UpstreamDisconnected(f"upstream sent an invalid response {what}: {exc}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamDisconnected(f"upstream failed {what}: {exc!r}") from None


async def open_stream(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    body: bytes | None,
    connect_timeout: float,
) -> aiohttp.ClientResponse:
    """Send the request and return once the upstream's status line and headers are in."""
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=None)
    try:
        with _translated("before responding"):
            return await session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout,
            )
    except UpstreamDisconnected as exc:
        # Nothing of a response arrived: for the client that is "unreachable".
        raise UpstreamUnreachable(str(exc)) from None


async def read_chunk(response: aiohttp.ClientResponse) -> bytes:
    """The next bytes the upstream sent (b"" at a clean end of the body)."""
    with _translated("mid-stream"):
        return await response.content.readany()


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a non-stream response, or UpstreamError past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    with _translated("while sending its response"):
        while chunk := await response.content.readany():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response body over {limit} bytes")
            parts.append(chunk)
    return b"".join(parts)


def close(response: aiohttp.ClientResponse | None) -> None:
    """Drop the upstream connection now (not back to the pool: the body is unread)."""
    if response is not None:
        response.close()


def cancel_pending(task: asyncio.Task[aiohttp.ClientResponse] | None) -> None:
    """Abandon an upstream request whose response has not arrived yet."""
    if task is None:
        return
    if task.done():
        if not task.cancelled() and task.exception() is None:
            task.result().close()
    else:
        task.cancel()
