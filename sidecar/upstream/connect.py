"""Opening an HTTP upstream: the request head, the connection, and giving up on one.

The request is a few header lines written by hand (aiohttp's client would
keep ~9 KB per stream); the response is read by :class:`Upstream`
(sidecar/upstream/http.py). Only our own errors leave this module.
"""

from __future__ import annotations

import asyncio
import functools
import ssl

from multidict import CIMultiDict
from yarl import URL

from sidecar.errors import UpstreamConnectTimeout, UpstreamUnreachable
from sidecar.upstream.head import HeadLimits
from sidecar.upstream.http import Upstream

#: Methods whose empty body is still announced (what browsers and aiohttp send).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@functools.cache
def _tls() -> ssl.SSLContext:
    """One context for every https upstream (building one loads the CA store)."""
    return ssl.create_default_context()


def request_head(method: str, url: URL, headers: CIMultiDict[str], body: bytes | None) -> bytes:
    """The request line and headers, HTTP/1.1 (pure)."""
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise UpstreamUnreachable(f"header {name!r} cannot be sent upstream")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method in _BODY_METHODS:
        lines.append("Content-Length: 0")
    lines += ["", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


async def open_stream(
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    body: bytes | None,
    connect_timeout: float,
    limits: HeadLimits | None = None,
) -> Upstream:
    """Send the request and return once the upstream's status line and headers are in."""
    loop = asyncio.get_running_loop()
    head = request_head(method, url, headers, body)
    host, port = url.raw_host, url.port
    if host is None or port is None or url.scheme not in ("http", "https"):
        raise UpstreamUnreachable(f"cannot connect to upstream: {url} is not an http(s) URL")
    tls = _tls() if url.scheme == "https" else None
    try:
        async with asyncio.timeout(connect_timeout):
            transport, upstream = await loop.create_connection(
                lambda: Upstream(loop, limits), host, port, ssl=tls
            )
    except TimeoutError:
        raise UpstreamConnectTimeout("timed out connecting to upstream") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"cannot connect to upstream: {exc}") from None
    transport.write(head + body if body else head)
    try:
        await upstream.head
    except BaseException:
        upstream.close()
        raise
    return upstream


def cancel_pending(task: asyncio.Task[Upstream] | None) -> None:
    """Abandon an upstream request whose response has not arrived yet."""
    if task is None:
        return
    if task.done():
        if not task.cancelled() and task.exception() is None:
            task.result().close()
    else:
        task.cancel()
