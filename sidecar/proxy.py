"""The aiohttp handler of a route: refuse, read the session key and body, start a stream.

Everything about a stream once it starts lives in sidecar/stream/ (and
sidecar/resume/ for routes with resume on); what the streams of a route
share is its :class:`RouteServices`.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from aiohttp import web
from yarl import URL

from sidecar import stop
from sidecar.client import json_error
from sidecar.config import Route
from sidecar.context import Context, StreamHandle
from sidecar.errors import BackendUnavailable, BadSessionKey
from sidecar.paths import BadPath
from sidecar.query import query_param
from sidecar.resume.entry import Joined, ResumeEntry
from sidecar.services import RouteServices
from sidecar.sessions.keys import SessionKeySource
from sidecar.stream.run import StreamRun

log = structlog.get_logger("sse_sidecar")


class RouteHandler:
    """The aiohttp handler of one configured route."""

    def __init__(self, route: Route, ctx: Context) -> None:
        self.route = route
        self.ctx = ctx
        self.services = RouteServices(route, ctx)
        self.metrics = self.services.metrics
        self.base = URL(route.upstream)
        self.prefix = route.path.rstrip("/")
        self.keys = SessionKeySource(route.session)
        self.resume = ResumeEntry(self.services) if route.resume.enabled else None

    def pattern(self) -> str:
        """The aiohttp route pattern: the prefix and anything below it, not ``/v1/chatter``."""
        return self.prefix + "{tail:(?s:/.*)?}" if self.prefix else "/{tail:(?s:.*)}"

    def upstream_url(self, request: web.Request) -> URL:
        """The upstream URL for this request; BadPath if its path tries to climb out."""
        return self.services.admission.upstream_url(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        admission = self.services.admission
        refusal = admission.check_origin(request)
        if refusal is not None:
            return refusal
        if request.method == "DELETE":
            return await stop.handle(self.services, self.keys, self.resume, request)
        refusal = await self._refuse(request)
        if refusal is not None:
            return refusal
        try:
            url = self.upstream_url(request)
        except BadPath as exc:
            return admission.bad_path(exc)
        try:
            key = self.keys.of_request(request)
        except BadSessionKey as exc:
            self.metrics.rejected("bad_session_key")
            return json_error(400, exc.code, str(exc))
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        if self.resume is not None:
            joined = await self._join(self.resume, request, url, body, key)
            if joined is not None:
                # The follower's stream is awaited here, not inside _join, so
                # _join's frame is not held for the stream's life (as Joined says).
                return joined if isinstance(joined, web.StreamResponse) else await joined
            key = None  # served without resume: it had no key, or the backend is out
        task = asyncio.current_task()
        assert task is not None  # a handler always runs in a task
        handle = StreamHandle(secrets.token_hex(8), self.route.name, task)
        run = StreamRun(self.services, request, handle, url, body, key)
        response = await run.serve()
        assert response is not None  # a client stream always commits or refuses
        return response

    async def _join(
        self,
        resume: ResumeEntry,
        request: web.Request,
        url: URL,
        body: bytes | None,
        key: str | None,
    ) -> Joined | None:
        """A resume route's answer: a reconnect's or a new run's; None: serve it without resume."""
        last_id = request.headers.get("Last-Event-ID") or query_param(
            request.rel_url.raw_query_string, self.route.resume.query_param
        )
        if last_id:
            # A reconnect follows the run it lost; a POST body is not sent again.
            return await resume.reattach(request, key, last_id)
        if key is None:
            return None
        try:
            return await resume.start(request, url, body, key)
        except BackendUnavailable as exc:
            if self.ctx.config.backend.on_outage != "allow":
                self.metrics.rejected("backend_unavailable")
                return json_error(503, exc.code, str(exc), **{"Retry-After": "1"})
            # allow: serve it, without resume, rather than not at all; and
            # unguarded at once: the session claim would wait on the same
            # backend for another whole budget.
            self.metrics.rejected("backend_unavailable_allowed")
            log.warning("session_unguarded", route=self.route.name, reason=str(exc))
            return None

    async def _refuse(self, request: web.Request) -> web.Response | None:
        if self.ctx.draining:
            self.metrics.rejected("draining")
            return json_error(
                503, "draining", "the server is shutting down; retry", **{"Retry-After": "1"}
            )
        if request.method not in self.route.methods:
            self.metrics.rejected("method")
            return json_error(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here",
                # DELETE with the session key stops the session's run (sidecar/stop.py).
                Allow=", ".join([*self.route.methods, "DELETE"]),
            )
        if len(self.ctx.streams) >= self.ctx.config.max_streams:
            self.metrics.rejected("max_streams")
            return json_error(
                503, "overloaded", "too many open streams; retry", **{"Retry-After": "1"}
            )
        return None

    async def _read_body(self, request: web.Request) -> bytes | web.Response | None:
        if request.method != "POST" and not request.body_exists:
            return None
        limit = self.route.limits.max_body_bytes
        too_large = json_error(
            413, "body_too_large", f"request body over limits.max_body_bytes ({limit} bytes)"
        )
        if request.content_length is not None and request.content_length > limit:
            self.metrics.rejected("body_too_large")
            return too_large
        parts: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                self.metrics.rejected("body_too_large")
                return too_large
            parts.append(chunk)
        return b"".join(parts)
