"""One stream, from the upstream request to the terminal event.

The only code with the clock and the client socket. One coroutine per
stream reads the upstream, writes forwarded events, heartbeats and the
terminal event, so there is exactly one write path and a heartbeat can never
land inside an event (STYLE.md habit 3). Stopping a stream from outside
(shutdown, replace) cancels that coroutine with a reason; it then writes the
terminal event itself. Resumable streams (sidecar/resume.py) reuse this class
with the log of the run instead of the client as the place events go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import structlog
from aiohttp import web
from yarl import URL

from sidecar import headers as hdrs
from sidecar.alarm import Alarm
from sidecar.client import client_write, json_error, ms, opening_of, start_response
from sidecar.context import StreamHandle
from sidecar.errors import (
    BackendUnavailable,
    ClientGone,
    ProtocolError,
    SessionConflict,
    SlowClient,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from sidecar.logs import session_hash
from sidecar.normalize import (
    Batch,
    IdSource,
    end_event,
    error_event,
    heartbeat_due,
)
from sidecar.sessions.base import Claim
from sidecar.splice import Splice
from sidecar.sse import Decoder
from sidecar.upstream import http as upstream_http
from sidecar.upstream.http import Upstream
from sidecar.upstream.websocket import WebSocketProfile, WebSocketSource

if TYPE_CHECKING:
    from sidecar.proxy import RouteProxy

T = TypeVar("T")

log = structlog.get_logger("sse_sidecar")

_STOP_MESSAGES = {
    "shutdown": "the server is shutting down; reconnect",
    "replaced": "a newer stream for this session replaced this one",
}


class StreamRun:
    """One stream, from the upstream request to the terminal event."""

    def __init__(
        self,
        proxy: RouteProxy,
        request: web.Request,
        handle: StreamHandle,
        url: URL,
        body: bytes | None,
        session_key: str | None,
    ) -> None:
        self.proxy = proxy
        self.route = proxy.route
        self.metrics = proxy.metrics
        self.request = request
        self.handle = handle
        self.url = url
        self.body = body
        self.session_key = session_key
        self.claim: Claim | None = None
        self.opener: asyncio.Task[Upstream] | None = None
        self.source: WebSocketSource | None = None
        self.request_id = request.headers.get("X-Request-ID") or handle.id
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.response: web.StreamResponse | None = None
        #: Numbers events for resume (None: the route does not resume).
        self.ids: IdSource | None = None
        #: Headers are out: from now on the stream can only end with an event.
        self.committed = False
        #: Write a heartbeat after this long without a write (0: never).
        self.heartbeat_interval = self.route.heartbeat.interval
        self.upstream: Upstream | None = None
        self.outcome = "client_disconnected"
        self.last_write = self.started
        self.last_byte = self.started
        self.max_silence = 0.0
        self.forwarded = 0
        self.heartbeats = 0
        self.bytes_out = 0
        self.client_gone_at: float | None = None
        self.alarm: Alarm | None = None
        #: The route's tally, shared by its streams (sidecar/metrics.py Tally).
        self.counts = self.metrics.counts

    @property
    def partial(self) -> bool:
        """Whether the client already has part of the answer."""
        return self.forwarded > 0

    # --- lifecycle -------------------------------------------------------------

    async def serve(self) -> web.StreamResponse | None:
        """Run the stream; the response to return (None only for a resumable run)."""
        ctx = self.proxy.ctx
        ctx.streams.add(self.handle)
        self.metrics.active.inc()
        log.info(
            "stream_start",
            route=self.route.name,
            stream_id=self.handle.id,
            request_id=self.request_id,
            session=session_hash(self.session_key),
            method=self.request.method,
        )
        try:
            return await self._run()
        except asyncio.CancelledError:
            self.client_gone_at = self.loop.time()
            raise
        finally:
            upstream_http.cancel_pending(self.opener)
            if self.upstream is not None:
                self.upstream.close()
            if self.source is not None:
                self.source.abort()  # client gone or stream over: the socket goes now
            ctx.streams.discard(self.handle)
            # Counted before the release: a release that waits on the network
            # may be cancelled, and the stream must be accounted all the same.
            self._account()
            if self.claim is not None:
                await ctx.sessions.release(self.claim)

    async def _claim(self, key: str) -> web.Response | None:
        """Own the session, or the answer that refuses this request."""
        ctx = self.proxy.ctx
        policy = self.route.session.policy
        try:
            self.claim = await ctx.sessions.claim(self.route.name, key, policy, self.handle)
        except SessionConflict as exc:
            self.outcome = "rejected"
            ctx.metrics.session_conflicts.labels(self.route.name, "reject").inc()
            return json_error(409, exc.code, str(exc))
        except BackendUnavailable as exc:
            if ctx.config.backend.on_outage == "allow":
                log.warning("session_unguarded", route=self.route.name, reason=str(exc))
                self.metrics.rejected("backend_unavailable_allowed")
                return None
            self.outcome = "rejected"
            self.metrics.rejected("backend_unavailable")
            return json_error(503, exc.code, str(exc), **{"Retry-After": "1"})
        if self.claim.replaced:
            ctx.metrics.session_conflicts.labels(self.route.name, "replace").inc()
        return None

    async def _run(self) -> web.StreamResponse | None:
        try:
            try:
                if self.session_key is not None:
                    refusal = await self._claim(self.session_key)
                    if refusal is not None:
                        return refusal
                if self.route.is_websocket:
                    await self._run_websocket()
                    return self.response
                self.opener = asyncio.ensure_future(self._open())
                self.upstream = await self._await_upstream(self.opener)
                self.opener = None  # done: no need to hold the task for the stream's life
                if not self.committed:
                    if not _is_stream(self.upstream):
                        return await self._passthrough(self.upstream)
                    await self._commit(self.upstream)
                else:
                    _check_late(self.upstream)
                await self._body(self.upstream)
            except asyncio.CancelledError:
                code = self.handle.stop_code
                if code is None:
                    raise  # the client went away (aiohttp cancels the handler)
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()
                if self.upstream is not None:
                    self.upstream.close()
                if code == "abandoned":
                    self.outcome = "abandoned"  # nobody came back within resume.grace
                    return None
                retry = ms(self.proxy.ctx.config.shutdown_retry) if code == "shutdown" else None
                await self._end_with_error(code, _STOP_MESSAGES[code], retry_ms=retry)
            except (UpstreamError, ProtocolError) as exc:
                if self.upstream is not None:
                    self.upstream.close()
                if isinstance(exc, ProtocolError):
                    self.proxy.ctx.metrics.protocol_errors.labels(self.route.name, exc.kind).inc()
                await self._end_with_error(exc.code, str(exc))
        except SlowClient:
            # Cut it off: returning alone would leave aiohttp waiting, without a
            # limit, to end the body cleanly, as if the stream were whole.
            if self.request.transport is not None:
                self.request.transport.abort()
            self.outcome = "slow_client"
            self.client_gone_at = self.loop.time()
            self.proxy.ctx.metrics.slow_clients.labels(self.route.name).inc()
        except ClientGone:
            self.outcome = "client_disconnected"
            self.client_gone_at = self.loop.time()
        return self.response

    def _account(self) -> None:
        now = self.loop.time()
        m = self.metrics
        if self.alarm is not None:
            self.alarm.close()
        m.active.dec()
        m.outcome(self.outcome)
        m.duration.observe(now - self.started)
        if self.upstream is not None and self.committed:
            m.max_silence.observe(max(self.max_silence, now - self.last_byte))
        if self.client_gone_at is not None:
            # The upstream was closed in serve()'s finally, right before this.
            m.after_client.observe(now - self.client_gone_at)
        log.info(
            "stream_end",
            route=self.route.name,
            stream_id=self.handle.id,
            request_id=self.request_id,
            session=session_hash(self.session_key),
            outcome=self.outcome,
            duration_s=round(now - self.started, 3),
            events_forwarded=self.forwarded,
            heartbeats=self.heartbeats,
            bytes_out=self.bytes_out,
            max_silence_s=round(self.max_silence, 3),
        )

    # --- upstream --------------------------------------------------------------

    async def _open(self) -> Upstream:
        req = self.request
        headers = hdrs.upstream_request(
            req.headers,
            peer=req.remote,
            scheme=req.scheme,
            host=req.host,
            request_id=self.request_id,
        )
        return await upstream_http.open_stream(
            req.method,
            self.url,
            headers,
            self.body,
            self.route.limits.connect_timeout,
        )

    async def _await_upstream(self, opener: asyncio.Future[T]) -> T:
        """Wait for the upstream's headers; commit to a stream if they take too long.

        Within ``stream.commit_after`` an error status can still be passed
        through; past it the client gets headers, heartbeats, and later either
        the stream or a terminal error.
        """
        commit_at = self.started + self.route.stream.commit_after
        while True:
            if not self.committed and self.loop.time() >= commit_at:
                await self._commit(None)
            deadline = commit_at if not self.committed else self.next_deadline()
            done, _ = await asyncio.wait({opener}, timeout=max(deadline - self.loop.time(), 0))
            if done:
                return opener.result()
            if self.committed:
                await self._tick()

    def _body(self, upstream: Upstream) -> Awaitable[None]:
        """How the body is read: by callbacks (sidecar/splice.py) unless events are numbered.

        A plain function returning the awaitable, so a long-lived stream
        holds one coroutine frame fewer.
        """
        upstream.decode_content()
        if self.ids is None:
            upstream.forget_head()  # the client has its headers: free them for the stream's life
            return Splice(self, upstream, self.proxy.raw_events).forward()
        return self._pump(upstream)

    async def end_closed(self) -> None:
        """The upstream body ended cleanly without a terminal event: ours ends the stream."""
        await self._end(
            end_event(partial=self.partial, event_id=self._next_id()), "upstream_closed"
        )

    async def _pump(self, upstream: Upstream) -> None:
        """Read the body by awaiting it (a resumable run's events go to its log)."""
        limits = self.route.limits
        decoder = Decoder(limits.max_line_bytes, limits.max_event_bytes)
        m = self.metrics
        loop = self.loop
        self.last_byte = loop.time()
        first = True
        alarm = self._alarm()
        while True:
            try:
                chunk = await alarm.wait(upstream.read_chunk())
            except TimeoutError:
                await self._tick()
                alarm.set(self.next_deadline())
                continue
            now = loop.time()
            silence = now - self.last_byte
            self.max_silence = max(self.max_silence, silence)
            self.last_byte = now
            if first:
                m.ttfb.observe(now - self.started)
                first = False
            if not chunk:
                decoder.close()  # raises TruncatedEvent if it ended inside an event
                await self.end_closed()
                return
            self.counts.bytes_in += len(chunk)
            if await self._decoded(decoder, chunk):
                self.outcome = "completed"
                return
            alarm.set(self.next_deadline())

    async def _decoded(self, decoder: Decoder, data: bytes) -> bool:
        """Decode, normalise and emit; True when the upstream's terminal event went out."""
        items = decoder.feed(data)
        if items:
            batch = self.proxy.normalizer.batch(items, self.ids)
            self.count_batch(batch)
            await self._emit(batch)
            if batch.terminal:
                return True
        if decoder.error is not None:
            raise decoder.error
        return False

    def count_batch(self, batch: Batch) -> None:
        """Account a batch's events and comments (the metrics say what each became)."""
        if batch.forwarded:
            self.forwarded += batch.forwarded
            self.counts.forwarded += batch.forwarded
        m = self.metrics
        if batch.comments_converted:
            m.converted.inc(batch.comments_converted)
        if batch.comments_passed:
            m.event("comment_passed", batch.comments_passed)
        if batch.comments_dropped:
            m.event("comment_dropped", batch.comments_dropped)

    def _alarm(self) -> Alarm:
        task = asyncio.current_task()
        assert task is not None
        self.alarm = Alarm(task)
        self.alarm.set(self.next_deadline())
        return self.alarm

    async def _run_websocket(self) -> None:
        """A WebSocket gateway's run: its events instead of an HTTP body's."""
        profile = self.route.websocket or WebSocketProfile()
        body: object = self.body if self.body else dict(self.request.query)
        source = WebSocketSource(
            self.route.upstream,
            profile,
            body=body,
            session_key=self.session_key,
            request_id=self.request_id,
            terminal_event=self.route.terminal.events[0] if self.route.terminal.events else "done",
        )
        self.source = source
        opener = asyncio.ensure_future(source.open())
        try:
            await self._await_upstream(opener)
        finally:
            if not opener.done():
                opener.cancel()
        if not self.committed:
            await self._commit(None)
        try:
            await self._pump_items(source)
        finally:
            for kind, count in source.malformed.items():
                self.proxy.ctx.metrics.protocol_errors.labels(self.route.name, kind).inc(count)

    async def _pump_items(self, source: WebSocketSource) -> None:
        """Like _pump, for a source that yields items rather than bytes."""
        normalizer = self.proxy.normalizer
        m = self.metrics
        self.last_byte = self.loop.time()
        first = True
        alarm = self._alarm()
        while True:
            try:
                items = await alarm.wait(source.read())
            except TimeoutError:
                await self._tick()
                alarm.set(self.next_deadline())
                continue
            now = self.loop.time()
            self.max_silence = max(self.max_silence, now - self.last_byte)
            self.last_byte = now
            if first:
                m.ttfb.observe(now - self.started)
                first = False
            if not items:  # the tracker ended without a terminal event
                await self.end_closed()
                return
            batch = normalizer.batch(list(items), self.ids)
            self.forwarded += batch.forwarded
            self.counts.forwarded += batch.forwarded
            await self._emit(batch)
            if batch.terminal:
                self.outcome = "completed"
                return
            alarm.set(self.next_deadline())

    def next_deadline(self) -> float:
        limits = self.route.limits
        deadline = min(self.last_byte + limits.idle_timeout, self.started + limits.max_duration)
        interval = self.heartbeat_interval
        if interval > 0:
            deadline = min(deadline, self.last_write + interval)
        return deadline

    def limit_reached(self, now: float, *, idle: bool = True) -> UpstreamTimeout | None:
        """The limit the stream has reached by ``now``, if any (``idle``: check that one too)."""
        limits = self.route.limits
        if now >= self.started + limits.max_duration:
            return UpstreamTimeout(f"stream reached limits.max_duration ({limits.max_duration:g}s)")
        if idle and now - self.last_byte >= limits.idle_timeout:
            return UpstreamTimeout(
                f"no bytes from upstream for limits.idle_timeout ({limits.idle_timeout:g}s)"
            )
        return None

    async def _tick(self) -> None:
        """A deadline passed: end the stream on a limit, else write a heartbeat if due."""
        now = self.loop.time()
        if (reached := self.limit_reached(now)) is not None:
            raise reached
        if heartbeat_due(now, self.last_write, self.heartbeat_interval):
            await self._write(self.proxy.normalizer.keepalive)
            self.heartbeats += 1
            self.counts.heartbeats += 1

    async def _passthrough(self, upstream: Upstream) -> web.StreamResponse:
        """Hand a non-stream (or error) response to the client as it is."""
        limit = self.route.limits.max_passthrough_bytes
        try:
            body = await upstream.read_body(limit)
        except UpstreamError as exc:
            self.outcome = "upstream_disconnected"
            return json_error(502, "bad_upstream_response", str(exc))
        self.outcome = "passthrough"
        self.proxy.ctx.metrics.passthrough.labels(
            self.route.name, f"{upstream.status // 100}xx"
        ).inc()
        resp = web.Response(
            status=upstream.status,
            reason=upstream.reason,
            body=body,
            headers=hdrs.passthrough_response(upstream.headers),
        )
        resp.headers["X-Request-ID"] = self.request_id
        return resp

    # --- client ----------------------------------------------------------------

    async def _commit(self, upstream: Upstream | None) -> None:
        """Send the stream's headers (and opening) now, before any upstream event."""
        self.committed = True
        upstream_headers = upstream.headers if upstream is not None else None
        self.response = await start_response(self.request, upstream_headers, self.request_id)
        self.last_write = self.loop.time()
        first = opening_of(self.route)
        if first:
            await self._write(first)
            if self.route.stream.open_event:
                self.metrics.event("opening")

    async def _write(self, data: bytes) -> None:
        """The one write path of the stream."""
        assert self.response is not None
        await client_write(self.request, self.response, data, self.route.limits.write_timeout)
        self.last_write = self.loop.time()
        self.bytes_out += len(data)
        self.counts.bytes_out += len(data)

    async def _emit(self, batch: Batch) -> None:
        """Where a chunk's events go: to the client (a resumable run: to its log)."""
        if batch.data:
            await self._write(batch.data)

    def _next_id(self) -> str | None:
        """The id of an event the sidecar writes itself (resumable runs number them)."""
        return None

    async def _end(self, data: bytes, outcome: str) -> None:
        self.outcome = outcome
        await self._write(data)
        self.metrics.event("terminal_synthesized")

    async def _end_with_error(self, code: str, message: str, retry_ms: int | None = None) -> None:
        if not self.committed:
            await self._commit(None)
        extra: dict[str, object] = {}
        if self.upstream is not None and code == "upstream_status":
            extra["status"] = self.upstream.status
        data = error_event(
            code,
            message,
            partial=self.partial,
            retry_ms=retry_ms,
            event_id=self._next_id(),
            **extra,
        )
        await self._end(data, code)


def _is_stream(upstream: Upstream) -> bool:
    return 200 <= upstream.status < 300 and upstream.content_type == "text/event-stream"


def _check_late(upstream: Upstream) -> None:
    """After commit, an upstream that is not a stream can only end it with an error."""
    if not 200 <= upstream.status < 300:
        raise UpstreamStatus(upstream.status, f"upstream answered {upstream.status}")
    if upstream.content_type != "text/event-stream":
        raise UpstreamStatus(
            upstream.status, f"upstream answered {upstream.content_type}, not an event stream"
        )
