"""The stream port's connections: a cap on how many, a deadline for each request head.

Strategy: aiohttp's server gives a connection that sends nothing (or trickles
a head) its whole keep-alive timeout, takes heads of any total size, and logs
a multi-line traceback for every malformed request. :class:`GuardedRunner`
serves the same application with a :class:`GuardedHandler` per connection
that, past ``limits.max_connections``, closes the oldest idle connection to
make room (503 at once when every connection is busy), closes a connection
whose request head is not complete within ``limits.request_head_timeout``
(408), answers malformed requests and heads
over ``limits.max_request_head_bytes`` with a JSON error (400/431), and logs
them as one JSON line each, at most ``limits.bad_request_logs_per_s`` a second.

aiohttp offers no hook for these, so this subclasses its ``RequestHandler``
and ``Server``, reads two of its private fields (``_request_count``,
``_waiter``), drops its keep-alive timer while a request runs
(``_keepalive_handle``) and queues request heads in a list of its own
(``_messages``); pinned by aiohttp < 4 and by tests/adversarial.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from sidecar.config import ServerLimits
from sidecar.errors import ListenError
from sidecar.metrics import Metrics

log = structlog.get_logger("sse_sidecar")

#: A request handler, as aiohttp's Server calls it.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: File descriptors kept back from the cap: listening sockets, Redis, logs.
_FD_RESERVE = 64


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # some platforms cap the hard limit lower than they report
    return soft, hard


def connection_cap(configured: int) -> int:
    """``max_connections``, lowered so that every connection can also hold its upstream."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, (soft - _FD_RESERVE) // 2))


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Guard:
    """What the connections of one stream port share: limits, counts, the log budget."""

    def __init__(self, limits: ServerLimits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.max_connections = connection_cap(limits.max_connections)
        self.open = 0
        #: Open connections, oldest first (a dict keeps insertion order).
        self.handlers: dict[GuardedHandler, None] = {}
        self._log_second = 0
        self._logged = 0
        self._suppressed = 0

    def refused(self, reason: str) -> None:
        self.metrics.refused_connections.labels(reason).inc()

    def make_room(self) -> bool:
        """At the cap: close the oldest connection that has no request in progress.

        Idle connections (none sent yet, or kept alive between requests) are
        what a flood of empty connections consists of; a new client is worth
        more than any of them. False if every connection is serving a request.
        """
        for handler in self.handlers:
            if handler.waiting_for_request():
                self.refused("evicted")
                handler.evict()
                return True
        return False

    def bad_request(self, reason: str, message: str, peer: str | None) -> None:
        """Count a malformed request; log it as one line, within the per-second budget."""
        self.metrics.bad_requests.labels(reason).inc()
        now = int(asyncio.get_running_loop().time())
        if now != self._log_second:
            if self._suppressed:
                log.warning("bad_requests_suppressed", count=self._suppressed)
            self._log_second, self._logged, self._suppressed = now, 0, 0
        if self._logged >= self.limits.bad_request_logs_per_s:
            self._suppressed += 1
            return
        self._logged += 1
        log.warning("bad_request", reason=reason, error=message[:200], peer=peer)


def _classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """(status, reason label, message) for a request aiohttp could not parse."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower()
    ):
        return 431, "head_too_large", "request head too large"
    if isinstance(exc, BadHttpMessage):
        return 400, "malformed", f"malformed request: {exc.message}"
    return status, "malformed" if status < 500 else "internal", "request failed"


class HeadQueue(list[Any]):
    """The request heads a connection has read ahead of its handler: a list, not a deque.

    aiohttp queues them in a deque, whose first block (~0.7 KiB) every
    connection holds for its whole life, though a stream's connection has
    at most a pipelined head or two in it (aiohttp caps it at 32, so the
    list's O(n) popleft costs nothing).
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the guard's limits."""

    # A dict per connection otherwise (aiohttp's RequestHandler has slots).
    __slots__ = ("_head_timer", "_heads_seen", "_refused", "guard")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._messages = HeadQueue()  # type: ignore[assignment]
        self.guard = guard
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        if guard.open >= guard.max_connections and not guard.make_room():
            self._refused = True
            guard.refused("max_connections")
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(
                _raw_response(
                    503,
                    "Service Unavailable",
                    "too_many_connections",
                    "too many open connections; retry",
                )
            )
            transport.close()
            return
        guard.open += 1
        guard.handlers[self] = None
        guard.metrics.open_connections.set(guard.open)
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._disarm_head_timer()
        self.guard.open -= 1
        self.guard.handlers.pop(self, None)
        self.guard.metrics.open_connections.set(self.guard.open)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self._waiter is not None and not self._waiter.done()
        if idle and self._head_timer is None and data:
            self._arm_head_timer()  # the next request's head starts now
        super().data_received(data)
        if self._request_count != self._heads_seen:
            self._heads_seen = self._request_count
            self._disarm_head_timer()
            self._drop_keepalive_timer()

    def _drop_keepalive_timer(self) -> None:
        """A request is in: aiohttp's keep-alive timer has nothing to do until it ends.

        aiohttp arms it when the connection opens and again when a request
        ends (if none is armed); it only ever closes an idle connection. Left
        armed, each stream would hold a loop timer handle for its first
        keepalive_timeout seconds.
        """
        handle = self._keepalive_handle
        if handle is not None:
            handle.cancel()
            self._keepalive_handle = None

    def waiting_for_request(self) -> bool:
        """No request in progress: idle, or its head still coming."""
        return self._waiter is not None and not self._waiter.done() and self.transport is not None

    def evict(self) -> None:
        """Close to make room for a new connection (counted by the guard)."""
        self.guard.handlers.pop(self, None)
        self.force_close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(
            self.guard.limits.request_head_timeout, self._head_timed_out
        )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.guard.refused("head_timeout")
        transport.write(
            _raw_response(
                408,
                "Request Timeout",
                "request_head_timeout",
                "no complete request head in time (limits.request_head_timeout)",
            )
        )
        self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse (or a handler's crash) in JSON; log one line."""
        status, reason, text = _classify(exc, status)
        if status >= 500:
            # Our own failure, not the client's: keep the traceback (in one JSON line).
            log.error("handler_error", error=repr(exc), exc_info=exc)
        else:
            self.guard.bad_request(reason, str(exc) if exc is not None else text, request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error response")
        code = {431: "request_head_too_large", 400: "bad_request"}.get(status, "internal")
        resp = web.json_response({"error": {"code": code, "message": text}}, status=status)
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    def __init__(self, guard: Guard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are :class:`GuardedHandler` s."""

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        limits = guard.limits
        super().__init__(app, max_headers=limits.max_request_headers, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        # AppRunner._make_server, with our Server class (aiohttp has no parameter for it).
        loop = asyncio.get_running_loop()
        app = self.app
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        handler = guard_heads(self.guard.limits, self.guard, app._handle)
        return GuardedServer(
            self.guard, handler, request_factory=app._make_request, loop=loop, **self._kwargs
        )


def head_size(request: web.BaseRequest) -> int:
    """Bytes of the request line and headers, as sent (give or take whitespace)."""
    line = len(request.method) + len(request.raw_path) + 11
    return line + sum(len(k) + len(v) + 4 for k, v in request.raw_headers) + 2


def guard_heads(limits: ServerLimits, guard: Guard, handler: Handler) -> Handler:
    """``handler``, refusing a request head over ``max_request_head_bytes`` with 431.

    Not a middleware: an application with one holds two more coroutine frames
    (the middleware's and aiohttp's current-app fix-up) for the whole of every
    stream. A plain function returning the handler's coroutine holds none.
    """
    limit = limits.max_request_head_bytes

    def guarded(request: web.Request) -> Awaitable[web.StreamResponse]:
        if head_size(request) > limit:
            guard.bad_request("head_too_large", f"request head over {limit} bytes", request.remote)
            message = f"request head over {limit} bytes (limits.max_request_head_bytes)"
            resp = web.json_response(
                {"error": {"code": "request_head_too_large", "message": message}}, status=431
            )
            resp.force_close()
            return _answered(resp)
        return handler(request)

    return guarded


async def _answered(response: web.StreamResponse) -> web.StreamResponse:
    return response


async def start_site(site: web.TCPSite, key: str) -> int:
    """Listen on ``site``'s address, the setting ``key``'s; the port bound.

    A port taken by another process (or not ours to bind) is the
    configuration's problem: ListenError names the setting and the address,
    so the operator reads one line, not a traceback.
    """
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(
            f"{key}: cannot listen on {site.name.removeprefix('http://')}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from exc
    server = site._server  # aiohttp exposes the bound socket nowhere else
    sockets = getattr(server, "sockets", None)
    if not sockets:
        raise RuntimeError("site is not listening")
    port: int = sockets[0].getsockname()[1]
    return port
