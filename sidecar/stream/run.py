"""One stream, from the upstream request to the terminal event.

Strategy: claim the session (sidecar/stream/claim.py), open the Source,
commit to a stream (or pass a non-stream answer through), then move items to
the Sink until the terminal event: by the splice (sidecar/stream/splice.py)
when the Sink allows it, or by the awaiting pump (sidecar/stream/pump.py).
Every error that ends a committed stream becomes its terminal event here,
written through the Sink (sidecar/stream/terminal.py).
Stopping a stream from outside (shutdown, replace) cancels its task with a
reason; it then writes the terminal event itself. A resumable run is this
class with the run's log as its Sink (sidecar/resume/run.py). With a route's
``upstream_resume``, a broken upstream is asked again after the last event
forwarded (sidecar/stream/resumer.py); a run taken over starts from a cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from aiohttp import web
from yarl import URL

from sidecar.alarm import Alarm
from sidecar.client import json_error, ms
from sidecar.context import StreamHandle
from sidecar.errors import (
    ClientGone,
    ProtocolError,
    SlowClient,
    UpstreamBadHead,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sidecar.logs import session_hash
from sidecar.services import RouteServices
from sidecar.sessions.base import Claim
from sidecar.stream import source as sources
from sidecar.stream import terminal
from sidecar.stream.claim import claim_session
from sidecar.stream.pump import Pacer, pump
from sidecar.stream.resumer import UpstreamResumer
from sidecar.stream.sink import ClientSink, Sink
from sidecar.stream.splice import Splice
from sidecar.stream.state import StreamState
from sidecar.upstream import connect as upstream_connect
from sidecar.upstream import ws_sources
from sidecar.upstream.gateway_runs import GatewayRunSource
from sidecar.upstream.http import Upstream
from sidecar.upstream.resumption import KeptRequest, ResumeCursor
from sidecar.upstream.websocket import WebSocketSource

T = TypeVar("T")

log = structlog.get_logger("sse_sidecar")


class StreamRun:
    """One stream, from the upstream request to the terminal event."""

    __slots__ = (
        "_resumer", "_resuming", "alarm", "body", "claim", "cursor", "handle", "kept", "loop",
        "metrics", "opener", "pacer", "pacing", "request", "request_id", "route", "services",
        "session_key", "sink", "source", "state", "upstream", "url",
    )  # fmt: skip

    def __init__(
        self,
        services: RouteServices,
        request: web.Request,
        handle: StreamHandle,
        url: URL,
        body: bytes | None,
        session_key: str | None,
        sink: Sink | None = None,
        *,
        resume_from: ResumeCursor | None = None,
        kept: KeptRequest | None = None,
    ) -> None:
        """``resume_from``: the first upstream request is already a resume after this
        cursor (with ``kept``, the request to resume; else this one's)."""
        self.services = services
        self.route = services.route
        self.metrics = services.metrics
        self.request = request
        self.handle = handle
        self.url = url
        self.body = body
        self.session_key = session_key
        self.claim: Claim | None = None
        self.opener: asyncio.Task[Upstream] | None = None
        self.source: WebSocketSource | GatewayRunSource | None = None
        self.upstream: Upstream | None = None
        self.request_id = services.admission.request_id(request, handle.id)
        self.loop = asyncio.get_running_loop()
        self.state = StreamState(
            self.metrics,
            self.loop.time(),
            stream_id=handle.id,
            request_id=self.request_id,
            session_key=session_key,
        )
        self.sink: Sink = sink or ClientSink(
            request, self.route, self.state, self.metrics, services.normalizer.keepalive
        )
        self.pacing = services.pacing(self.sink.heartbeats)
        self.pacer = Pacer(self.pacing, self.state, self.sink, services.normalizer.keepalive)
        self.alarm: Alarm | None = None
        #: With upstream_resume: the request as sent, and where the stream stands.
        self._resumer: UpstreamResumer | None = None
        self._resuming = resume_from is not None
        if self.route.upstream_resume.enabled and not self.route.is_websocket:
            if kept is None:
                headers = services.admission.upstream_headers(request, self.request_id)
                kept = KeptRequest(request.method, str(url), tuple(headers.items()), body)
            self._resumer = UpstreamResumer(
                self.route, kept, resume_from, self.state, self.pacing, self.metrics,
                self._await_upstream,
            )  # fmt: skip
        elif resume_from is not None:
            raise ValueError(f"route {self.route.name!r} has no upstream_resume to resume with")
        self.kept = self._resumer.kept if self._resumer is not None else None
        self.cursor = self._resumer.cursor if self._resumer is not None else None

    # --- lifecycle -------------------------------------------------------------

    async def serve(self) -> web.StreamResponse | None:
        """Run the stream; the response to return (None when the Sink is not a client)."""
        ctx = self.services.ctx
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
            self.state.client_gone(self.loop.time())
            raise
        finally:
            upstream_connect.cancel_pending(self.opener)
            if self.upstream is not None:
                self.upstream.close()
            if self.source is not None:
                self.source.abort()  # client gone or stream over: the socket goes now
            ctx.streams.discard(self.handle)
            # Counted before the release: a release that waits on the network
            # may be cancelled, and the stream must be accounted all the same.
            if self.alarm is not None:
                self.alarm.close()
            self.state.finish(self.loop.time())
            if self.claim is not None:
                await ctx.sessions.release(self.claim)

    async def _run(self) -> web.StreamResponse | None:
        state, sink, dialect = self.state, self.sink, self.services.normalizer.dialect
        try:
            try:
                if self.session_key is not None:
                    claimed = await claim_session(
                        self.services, state, self.handle, self.session_key, self.request,
                        taken_over=self._resuming,
                    )  # fmt: skip
                    if isinstance(claimed, web.Response):
                        return claimed  # refused
                    self.claim = claimed
                if self.route.is_websocket:
                    refused = await self._run_websocket()
                    return refused if refused is not None else self.sink.response
                if self._resuming:  # a run taken over: its first request resumes
                    return await self._taken_over()
                self.opener = asyncio.ensure_future(self._open())
                self.upstream = await self._await_upstream(self.opener)
                self.opener = None  # done: no need to hold the task for the stream's life
                self.state.upstream_seen = True
                if not state.committed:
                    if not sources.is_stream(self.upstream):
                        return await sources.passthrough(
                            self.upstream, self.route, self.state, self.services.ctx.metrics
                        )
                    await terminal.commit(state, sink, self.upstream.headers)
                else:
                    sources.check_late(self.upstream)
                await terminal.ended(state, sink, dialect, await self._body(self.upstream))
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
                    state.outcome = "abandoned"  # nobody came back within resume.grace
                    return None
                retry = ms(self.services.ctx.config.shutdown_retry) if code == "shutdown" else None
                await terminal.end_by_stop(state, sink, dialect, code, retry_ms=retry)
            except (UpstreamError, ProtocolError) as exc:
                if self.upstream is not None:
                    self.upstream.close()
                if isinstance(exc, UpstreamUnreachable) and not state.committed:
                    # Known before commit: an HTTP error, so resp.ok is false and
                    # EventSource stops instead of reconnecting forever.
                    state.outcome = exc.code
                    return json_error(exc.status, exc.code, str(exc))
                if isinstance(exc, ProtocolError):
                    self.services.ctx.metrics.protocol_errors.labels(
                        self.route.name, exc.kind
                    ).inc()
                if isinstance(exc, UpstreamBadHead) and not state.committed:
                    state.outcome = exc.code  # as nginx: 502 while the client can still get one
                    return json_error(502, exc.code, str(exc))
                status = self.upstream.status if self.upstream is not None else None
                await terminal.end_with_error(
                    state, sink, dialect, exc.code, str(exc), status=status
                )
        except SlowClient:
            # Cut it off: returning alone would leave aiohttp waiting, without a
            # limit, to end the body cleanly, as if the stream were whole.
            if self.request.transport is not None:
                self.request.transport.abort()
            state.outcome = "slow_client"
            state.client_gone(self.loop.time())
            self.services.ctx.metrics.slow_clients.labels(self.route.name).inc()
        except ClientGone:
            state.outcome = "client_disconnected"
            state.client_gone(self.loop.time())
        return self.sink.response

    # --- upstream --------------------------------------------------------------

    def _open(self) -> Awaitable[Upstream]:
        if self.kept is not None:
            return sources.open_kept(self.kept, self.route)
        headers = self.services.admission.upstream_headers(self.request, self.request_id)
        return sources.open_http(self.request, self.url, self.body, headers, self.route)

    async def _await_upstream(self, opener: asyncio.Future[T]) -> T:
        """Wait for the upstream's headers; commit to a stream if they take too long.

        Within ``stream.commit_after`` an error status can still be passed
        through; past it the client gets headers, heartbeats, and later either
        the stream or a terminal error.
        """
        commit_at = self.state.started + self.route.stream.commit_after
        while True:
            if not self.state.committed and self.loop.time() >= commit_at:
                await terminal.commit(self.state, self.sink)
            deadline = commit_at if not self.state.committed else self.pacer.deadline()
            done, _ = await asyncio.wait({opener}, timeout=max(deadline - self.loop.time(), 0))
            if done:
                return opener.result()
            if self.state.committed:
                await self.pacer.tick()

    async def _taken_over(self) -> web.StreamResponse | None:
        if not self.state.committed:
            await terminal.commit(self.state, self.sink)
        lost = UpstreamDisconnected("the run's upstream was lost with its replica")
        completed = await self._resumed(lost)
        await terminal.ended(self.state, self.sink, self.services.normalizer.dialect, completed)
        return self.sink.response

    async def _resumed(self, error: UpstreamError | None) -> bool:
        """The body; after each break that upstream_resume heals, the resumed connection's.

        ``error``: the first request is already a resume (a run taken over).
        """
        assert self._resumer is not None
        while True:
            if error is not None:
                if self.upstream is not None:
                    self.upstream.close()
                self.upstream = await self._resumer.reopen(error)
                self.state.upstream_seen = True
            assert self.upstream is not None
            try:
                return await self._read(self.upstream)
            except (UpstreamDisconnected, UpstreamTimeout) as exc:
                error = exc

    def _body(self, upstream: Upstream) -> Awaitable[bool]:
        """The body, resumed after breaks where the route says (upstream_resume)."""
        return self._read(upstream) if self._resumer is None else self._resumed(None)

    def _read(self, upstream: Upstream) -> Awaitable[bool]:
        """How the body is read: by the splice if the Sink allows it, else by the pump.

        A plain function returning the awaitable, so a long-lived stream
        holds one coroutine frame fewer.
        """
        upstream.decode_content()
        target = self.sink.splice_target()
        if target is not None:
            upstream.forget_head()  # the client has its headers: free them for the stream's life
            services = self.services
            return Splice(
                upstream,
                target,
                self.state,
                self.pacing,
                limits=self.route.limits,
                normalizer=services.normalizer,
                raw_events=services.raw_events,
                wheel=services.ctx.timers,
                cursor=self.cursor,
            ).forward()
        items = sources.HttpItems(upstream, self.route, self.metrics.counts, self.cursor)
        return self._pump(items)

    def _pump(self, source: sources.ItemSource) -> Awaitable[bool]:
        task = asyncio.current_task()
        assert task is not None
        if self.alarm is not None:
            self.alarm.close()  # the last connection's (upstream_resume)
        self.alarm = Alarm(task)
        normalizer = self.services.normalizer
        return pump(source, self.sink, self.state, self.pacer, self.alarm, normalizer)

    async def _run_websocket(self) -> web.Response | None:
        """A WebSocket gateway's run: its events instead of an HTTP body's.

        Returns the JSON error for a handshake the gateway refused before the
        commit (None: the stream ran).
        """
        metrics = self.services.ctx.metrics
        source = sources.websocket_source(
            self.route,
            self.request,
            self.body,
            self.session_key,
            self.request_id,
            gateways=self.services.ctx.gateways,
            on_malformed=ws_sources.malformed_counter(metrics.protocol_errors, self.route.name),
        )
        self.source = source
        opener = asyncio.ensure_future(source.open())
        try:
            await self._await_upstream(opener)
        except UpstreamError as exc:
            if self.state.committed or (refused := ws_sources.refusal_response(exc)) is None:
                raise
            self.state.outcome = exc.code
            return refused
        finally:
            if not opener.done():
                opener.cancel()
        if not self.state.committed:
            await terminal.commit(self.state, self.sink)
        try:
            completed = await self._pump(sources.WebSocketItems(source))
            await terminal.ended(self.state, self.sink, self.services.normalizer.dialect, completed)
        finally:
            for kind, count in source.malformed.items():
                self.services.ctx.metrics.protocol_errors.labels(self.route.name, kind).inc(count)
        return None
