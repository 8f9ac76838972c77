"""Resume: a run that outlives its client, and the clients that follow it.

Strategy: on a route with resume on, a request with a session key starts a
:class:`ResumableRun` in a task of its own. The run is a :class:`StreamRun`
whose events go into the session's replay log instead of to a socket; the
request's handler is a :class:`Follower` of that log, writing what it holds
and then what arrives, with heartbeats, over the one write path of its
client. When the client leaves, the run keeps going for ``resume.grace``; a
reconnect with the session key and ``Last-Event-ID`` follows the same log
from after that id, without a second upstream request. Finished logs are
kept for ``resume.retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from yarl import URL

from sidecar.client import client_write, json_error, opening_of, start_response
from sidecar.context import StreamHandle
from sidecar.errors import (
    BackendUnavailable,
    ClientGone,
    SessionForbidden,
    SlowClient,
    UpstreamAbandoned,
)
from sidecar.headers import Headers
from sidecar.normalize import Batch, IdSource, error_event
from sidecar.replay.base import FORBIDDEN, Entry, ReplayLog
from sidecar.sessions.binding import same_credentials
from sidecar.stream import StreamRun

if TYPE_CHECKING:
    from sidecar.proxy import RouteProxy

log = structlog.get_logger("sse_sidecar")


class ResumableRun(StreamRun):
    """A stream whose events go to the session's replay log; followers write them out."""

    def __init__(self, *args: Any, replay_log: ReplayLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = replay_log
        self.ids = IdSource(replay_log.run_id)
        self.heartbeat_interval = 0.0  # each follower heartbeats its own client
        self.ready: asyncio.Future[web.StreamResponse | None] = self.loop.create_future()
        self.stream_headers: Headers | None = None
        #: Clients following the run here: one, but for a moment two when a
        #: reconnect arrives before the old connection is known to be gone.
        self.followers: set[Follower] = set()
        #: The first request waits for the run to answer (not yet a Follower).
        self.waiting = 0
        self.done = False
        self._grace: asyncio.TimerHandle | None = None
        self._terminal: tuple[int, str] | None = None
        self._detached_at: float | None = None
        self._unsure = False

    @property
    def slot(self) -> tuple[str, str]:
        assert self.session_key is not None
        return (self.route.name, self.session_key)

    async def serve(self) -> web.StreamResponse | None:
        response: web.StreamResponse | None = None
        try:
            response = await super().serve()
        finally:
            self.done = True
            if not self.ready.done():
                self.ready.set_result(response)  # refused or passed through
            self._cancel_grace()
            ctx = self.proxy.ctx
            if ctx.runs.get(self.slot) is self:
                del ctx.runs[self.slot]
            try:
                if self.committed and self.outcome != "abandoned":
                    await self.log.finish(self.route.resume.retention)
                else:
                    await ctx.replay.drop(self.log)
            except BackendUnavailable as exc:
                log.warning("replay_log_unavailable", route=self.route.name, error=str(exc))
        return response

    async def _commit(self, upstream: Any) -> None:
        self.committed = True
        self.stream_headers = upstream.headers if upstream is not None else None
        if not self.ready.done():
            self.ready.set_result(None)

    async def _emit(self, batch: Batch) -> None:
        if batch.entries:
            try:
                await self.log.append(batch.entries)
            except BackendUnavailable as exc:
                # Without its log the run reaches no one: end it. Local
                # followers see the run done; remote ones time out.
                raise UpstreamAbandoned(f"resume buffer unavailable: {exc}") from None

    def _next_id(self) -> str | None:
        assert self.ids is not None
        self._terminal = self.ids.next()
        return self._terminal[1]

    async def _end(self, data: bytes, outcome: str) -> None:
        assert self._terminal is not None
        self.outcome = outcome
        seq, event_id = self._terminal
        try:
            await self.log.append([Entry(seq, event_id, data, terminal=True)])
        except BackendUnavailable as exc:
            log.warning("replay_log_unavailable", route=self.route.name, error=str(exc))
            return
        self.metrics.event("terminal_synthesized")

    # --- who is listening ------------------------------------------------------

    def attach(self, follower: Follower | None = None) -> None:
        """A client follows the run; a reconnect takes over from older followers."""
        if follower is None:
            self.waiting += 1
        else:
            for older in list(self.followers):
                older.stop()
            self.followers.add(follower)
        self._cancel_grace()
        if self._detached_at is not None:
            self._detached_at = None

    @property
    def followed_here(self) -> bool:
        return bool(self.followers) or self.waiting > 0

    def detach(self, follower: Follower | None = None) -> None:
        if follower is None:
            self.waiting -= 1
        else:
            self.followers.discard(follower)
        if not self.followed_here and not self.done:
            self._detached_at = self.loop.time()
            self._grace = self.loop.call_later(self.route.resume.grace, self._grace_over)

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _grace_over(self) -> None:
        self._grace = None
        if not self.followed_here and not self.done:
            self.proxy.ctx.spawn(self._abandon_unless_followed())

    async def _abandon_unless_followed(self) -> None:
        # A client may follow this log from another process (Redis backend).
        try:
            followed = await self.log.followed()
        except BackendUnavailable:
            # Unknown: give it one more grace period, not two.
            followed, self._unsure = not self._unsure, True
        if followed:
            self._grace = self.loop.call_later(self.route.resume.grace, self._grace_over)
            return
        if not self.followed_here and not self.done:
            if self._detached_at is not None:
                self.metrics.after_client.observe(self.loop.time() - self._detached_at)
            self.handle.stop("abandoned")


class Follower:
    """One client's view of a run's log: the single write path of that client."""

    def __init__(
        self,
        proxy: RouteProxy,
        request: web.Request,
        replay_log: ReplayLog,
        after_seq: int,
        run: ResumableRun | None,
        request_id: str,
        replay_until: int = 0,
    ) -> None:
        self.proxy = proxy
        self.route = proxy.route
        self.request = request
        self.log = replay_log
        self.after_seq = after_seq
        self.run = run
        self.request_id = request_id
        #: Entries up to this seq were in the log before this client came: "replayed".
        self.replay_until = replay_until
        self.loop = asyncio.get_running_loop()
        self.response: web.StreamResponse | None = None
        self.last_write = self.loop.time()
        self.started = self.last_write
        self.task: asyncio.Task[Any] | None = None
        self.replaced = False
        self.outcome = "client_disconnected"
        self.bytes_out = 0
        self.heartbeats = 0
        self.replayed = 0

    def stop(self) -> None:
        """A newer connection took over this run: end this one with ``replaced``."""
        if self.task is not None and not self.replaced:
            self.replaced = True
            self.task.cancel()

    async def serve(self, headers: Headers | None = None) -> web.StreamResponse:
        self.response = await start_response(self.request, headers, self.request_id)
        self.task = asyncio.current_task()
        if self.run is not None:
            self.run.attach(self)
        try:
            first = opening_of(self.route)
            if first:
                await self._write(first)
            await self._follow()
            self.outcome = "completed"
        except asyncio.CancelledError:
            if not self.replaced:
                raise  # the client went away
            assert self.task is not None
            self.task.uncancel()
            self.outcome = "replaced"
            message = "a newer connection resumed this stream"
            with contextlib.suppress(ClientGone, SlowClient):
                await self._write(error_event("replaced", message, partial=True))
        except BackendUnavailable as exc:
            self.outcome = "backend_unavailable"
            with contextlib.suppress(ClientGone, SlowClient):
                await self._write(unavailable(str(exc)))
        except (ClientGone, SlowClient) as exc:
            if isinstance(exc, SlowClient):
                self.outcome = "slow_client"
                self.proxy.ctx.metrics.slow_clients.labels(self.route.name).inc()
        finally:
            if self.run is not None:
                self.run.detach(self)
            # The run logs its own start and end; this is the client's side.
            log.info(
                "follow_end",
                route=self.route.name,
                request_id=self.request_id,
                run=self.log.run_id,
                outcome=self.outcome,
                duration_s=round(self.loop.time() - self.started, 3),
                replayed=self.replayed,
                heartbeats=self.heartbeats,
                bytes_out=self.bytes_out,
            )
        return self.response

    async def _follow(self) -> None:
        m = self.proxy.metrics
        interval = self.route.heartbeat.interval
        idle = self.route.limits.idle_timeout
        grace = self.route.resume.grace
        last_entry = self.loop.time()
        followed_at = -grace
        while True:
            now = self.loop.time()
            if self.run is None and now - followed_at > grace / 3:
                await self.log.follow(grace)  # keeps a run on another process going
                followed_at = now
            block = min(last_entry + idle, now + grace / 3) - now
            if interval > 0:
                block = min(block, self.last_write + interval - now)
            entries = await self.log.read(self.after_seq, max(block, 0.0))
            now = self.loop.time()
            if entries and entries[0].seq > self.after_seq + 1:
                # This client fell further behind than the buffer holds.
                self.proxy.ctx.metrics.resume.labels(self.route.name, "gap").inc()
                await self._write(
                    error_event("resume_gap", "events were lost: the client fell behind the "
                                "resume buffer", partial=True)
                )  # fmt: skip
                return
            if entries:
                last_entry = now
                await self._write(b"".join(e.data for e in entries))
                replayed = sum(1 for e in entries if e.seq <= self.replay_until)
                if replayed:
                    self.replayed += replayed
                    m.event("replayed", replayed)
                self.after_seq = entries[-1].seq
                if entries[-1].terminal:
                    return
                continue
            if self.run is not None and self.run.done:
                if await self.log.read(self.after_seq, 0):
                    continue  # it ended while we looked: write the rest first
                return  # it ended without a terminal entry (abandoned)
            if now - last_entry >= idle:
                data = error_event(
                    "upstream_timeout",
                    f"no event for limits.idle_timeout ({idle:g}s) while following the stream",
                    partial=True,
                )
                await self._write(data)
                return
            if interval > 0 and now - self.last_write >= interval:
                await self._write(self.proxy.normalizer.keepalive)
                self.heartbeats += 1
                m.counts.heartbeats += 1

    async def _write(self, data: bytes) -> None:
        assert self.response is not None
        await client_write(self.request, self.response, data, self.route.limits.write_timeout)
        self.last_write = self.loop.time()
        self.bytes_out += len(data)
        self.proxy.metrics.bytes_out.inc(len(data))


async def start(
    proxy: RouteProxy,
    request: web.Request,
    url: URL,
    body: bytes | None,
    key: str,
) -> web.StreamResponse:
    """A new run for the session, followed by this request's client."""
    ctx = proxy.ctx
    resume = proxy.route.resume
    try:
        replay_log = await ctx.replay.open(
            proxy.route.name,
            key,
            secrets.token_hex(6),
            resume.buffer_events,
            resume.buffer_bytes,
            credentials_of(proxy, request, key),
        )
    except SessionForbidden:
        return forbidden(proxy)
    handle = StreamHandle(secrets.token_hex(8), proxy.route.name)
    run = ResumableRun(proxy, request, handle, url, body, key, replay_log=replay_log)
    handle.task = ctx.spawn(run.serve())
    ctx.runs[run.slot] = run
    run.attach()
    try:
        # Shielded: a client that leaves now must not cancel the run's answer.
        ready = await asyncio.shield(run.ready)
        if ready is not None:
            return ready
        follower = Follower(proxy, request, replay_log, 0, run, run.request_id)
        return await follower.serve(run.stream_headers)
    finally:
        run.detach()


async def reattach(
    proxy: RouteProxy, request: web.Request, key: str | None, last_id: str
) -> web.StreamResponse:
    """A reconnect with Last-Event-ID: what the client missed, then the live rest."""
    ctx = proxy.ctx
    route = proxy.route.name
    request_id = request.headers.get("X-Request-ID") or secrets.token_hex(8)
    run = ctx.runs.get((route, key)) if key is not None else None
    replay_log = run.log if run is not None else None
    try:
        if replay_log is None and key is not None:
            replay_log = await ctx.replay.find(route, key)
        if replay_log is not None:
            assert key is not None  # logs are found by session key only
            presented = credentials_of(proxy, request, key)
            if not same_credentials(replay_log.binding, presented):
                return forbidden(proxy)
            if run is None:
                # Before anything else: the run's process must not abandon it
                # while this follower gets going.
                await replay_log.follow(proxy.route.resume.grace)
        entries = await replay_log.after(last_id) if replay_log is not None else None
        last = await replay_log.last() if replay_log is not None and not entries else None
    except BackendUnavailable as exc:
        proxy.metrics.rejected("backend_unavailable")
        response = await start_response(request, None, request_id)
        with contextlib.suppress(ConnectionResetError):
            await response.write(unavailable(str(exc)))
        return response
    if replay_log is None or entries is None:
        result = "miss" if replay_log is None else "gap"
        ctx.metrics.resume.labels(route, result).inc()
        proxy.metrics.outcome("resume_gap")
        why = "no resumable stream for this session" if key is not None else "no session key"
        return await _gap(request, request_id, f"cannot resume after this id: {why}")
    if not entries:
        if last is not None and last.terminal and last.event_id == last_id:
            # The client has the whole stream. 204 tells EventSource to stop
            # reconnecting (WHATWG §9.2.3).
            ctx.metrics.resume.labels(route, "hit").inc()
            return web.Response(status=204)
        after_seq = last.seq if last is not None else 0
    else:
        after_seq = entries[0].seq - 1
    ctx.metrics.resume.labels(route, "hit").inc()
    log.info("stream_resumed", route=route, request_id=request_id, replayed=len(entries))
    until = entries[-1].seq if entries else after_seq
    follower = Follower(proxy, request, replay_log, after_seq, run, request_id, until)
    return await follower.serve(run.stream_headers if run is not None else None)


def credentials_of(proxy: RouteProxy, request: web.Request, key: str) -> str:
    """The fingerprint of this request's credentials, as the route's ``resume.bind`` says."""
    return proxy.binding.fingerprint(proxy.route.name, key, request.headers, request.cookies)


def forbidden(proxy: RouteProxy) -> web.Response:
    """Other credentials than the run's: refused, never the replay."""
    proxy.ctx.metrics.resume.labels(proxy.route.name, "forbidden").inc()
    proxy.metrics.rejected(SessionForbidden.code)
    return json_error(403, SessionForbidden.code, FORBIDDEN)


def unavailable(message: str) -> bytes:
    """The resume state cannot be reached now; a short retry: brings EventSource back."""
    return error_event("backend_unavailable", message, partial=True, retry_ms=1000)


async def _gap(request: web.Request, request_id: str, message: str) -> web.StreamResponse:
    response = await start_response(request, None, request_id)
    data = error_event("resume_gap", message, partial=True)
    with contextlib.suppress(ConnectionResetError):
        await response.write(data)
    return response
