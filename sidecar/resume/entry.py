"""Where a request meets resume: a new run for a session, or a reconnect that follows one.

Strategy: on a route with resume on, a request with a session key starts a
:class:`ResumableRun` in a task of its own; the request's handler is a
:class:`Follower` of the run's log. When the client leaves, the run keeps
going for ``resume.grace``; a reconnect with the session key and
``Last-Event-ID`` follows the same log from after that id, without a second
upstream request. Finished logs are kept for ``resume.retention``. One
:class:`ResumeEntry` per route holds the route's live runs of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from sidecar.client import start_response
from sidecar.context import StreamHandle
from sidecar.dialects import Dialect
from sidecar.errors import BackendUnavailable, SessionForbidden
from sidecar.replay.base import Entry, ReplayLog
from sidecar.resume.follower import Follower, unavailable
from sidecar.resume.run import ResumableRun
from sidecar.resume.takeover import Resumed, Takeover
from sidecar.services import RouteServices
from sidecar.sessions.binding import same_credentials
from sidecar.stream.claim import forbidden

log = structlog.get_logger("sse_sidecar")

#: What a request that joins a run gets: the answer, or the follower's stream
#: to await. The follower is awaited by the caller, not in here, so a stream's
#: handler does not hold this module's frame (set-up's locals and all) for
#: the stream's whole life.
Joined = web.StreamResponse | Coroutine[Any, Any, web.StreamResponse]


class ResumeEntry:
    """A route's resume: its runs on this process by session key, and how requests join them."""

    def __init__(self, services: RouteServices) -> None:
        self.services = services
        self.runs: dict[str, ResumableRun] = {}
        self.binding = services.binding
        self.takeover = Takeover(services, self.runs)

    async def start(self, request: web.Request, url: URL, body: bytes | None, key: str) -> Joined:
        """A new run for the session, followed by this request's client."""
        services = self.services
        ctx = services.ctx
        route = services.route
        resume = route.resume
        handle = StreamHandle(secrets.token_hex(8), route.name)
        kept = self.takeover.kept(request, url, body, handle.id)
        try:
            replay_log = await ctx.replay.open(
                route.name,
                key,
                secrets.token_hex(6),
                resume.buffer_events,
                resume.buffer_bytes,
                self.credentials_of(request, key),
                kept.to_bytes() if kept is not None else b"",
            )
        except SessionForbidden:
            return self.forbidden()
        run = ResumableRun(
            services, request, handle, url, body, key, replay_log, self.runs, kept=kept
        )
        self.takeover.watch(run)
        handle.task = ctx.spawn(run.serve())
        self.runs[key] = run
        run.attach()
        try:
            # Shielded: a client that leaves now must not cancel the run's answer.
            ready = await asyncio.shield(run.ready)
        except BaseException:
            run.detach()
            raise
        if ready is not None:
            run.detach()
            return ready
        follower = Follower(services, request, replay_log, 0, run, run.request_id)
        # The follower lets go of this request's place among the run's waiting
        # ones once it follows the run itself.
        return follower.serve(run.stream_headers, waited=True)

    async def reattach(self, request: web.Request, key: str | None, last_id: str) -> Joined:
        """A reconnect with Last-Event-ID: what the client missed, then the live rest."""
        services = self.services
        ctx = services.ctx
        route = services.route.name
        request_id = services.admission.request_id(request)
        run = self.runs.get(key) if key is not None else None
        replay_log = run.log if run is not None else None
        try:
            if replay_log is None and key is not None:
                replay_log = await ctx.replay.find(route, key)
            if replay_log is not None:
                assert key is not None  # logs are found by session key only
                presented = self.credentials_of(request, key)
                if not same_credentials(replay_log.binding, presented):
                    return self.forbidden()
                if run is None:
                    # Before anything else: the run's process must not abandon it
                    # while this follower gets going.
                    await replay_log.follow(services.route.resume.grace)
            entries = None
            resumed: Resumed | list[Entry] | None = None
            if replay_log is not None:
                entries = await replay_log.after(last_id)
                if entries is None and run is None:
                    entries = await _arriving(replay_log, last_id)
                if entries is None and run is None:
                    # Not come yet: its replica may have died with it (takeover).
                    assert key is not None
                    resumed = await self.takeover.take_for(request, key, replay_log, last_id)
                    if isinstance(resumed, list):  # it was on its way to Redis after all
                        entries, resumed = resumed, None
            last = None
            if replay_log is not None and entries == []:
                entries, last = await _caught_up(replay_log, last_id)
        except BackendUnavailable as exc:
            services.metrics.rejected("backend_unavailable")
            response = await start_response(request, None, request_id)
            with contextlib.suppress(ConnectionResetError):
                await response.write(unavailable(str(exc), services.normalizer.dialect))
            return response
        if isinstance(resumed, tuple):
            # Its replica died before Redis had the client's last events: the
            # upstream resumes from the client's id, in the same log.
            ctx.metrics.resume.labels(route, "hit").inc()
            taken, after_seq = resumed
            follower = Follower(services, request, taken.log, after_seq, taken, request_id)
            return follower.serve(None)
        if replay_log is None or entries is None:
            result = "miss" if replay_log is None else "gap"
            ctx.metrics.resume.labels(route, result).inc()
            services.metrics.outcome("resume_gap")
            why = "no resumable stream for this session" if key is not None else "no session key"
            message = f"cannot resume after this id: {why}"
            return await _gap(request, request_id, message, services.normalizer.dialect)
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
        take_over = None
        if run is None and self.takeover.enabled:
            assert key is not None
            take_over = functools.partial(self.takeover.take, request, key)
        follower = Follower(
            services, request, replay_log, after_seq, run, request_id, until, take_over
        )
        return follower.serve(run.stream_headers if run is not None else None)

    def credentials_of(self, request: web.Request, key: str) -> str:
        """The fingerprint of this request's credentials, as the route's ``session.bind`` says."""
        return self.services.credentials_of(request, key)

    def forbidden(self) -> web.Response:
        """Other credentials than the run's: refused, never the replay."""
        services = self.services
        services.ctx.metrics.resume.labels(services.route.name, "forbidden").inc()
        return forbidden(services)


async def _caught_up(
    replay_log: ReplayLog, last_id: str
) -> tuple[list[Entry] | None, Entry | None]:
    """Nothing after ``last_id`` was logged: the log's newest entry, which should be it.

    The run may append between the two reads; then what came after the id is
    read again, so the client starts right after its id, never after a
    newer entry it does not have (nor before one it has).
    """
    for _ in range(3):
        last = await replay_log.last()
        if last is None or last.event_id == last_id:
            return [], last
        entries = await replay_log.after(last_id)
        if entries != []:
            return entries, None  # what came after it (or None: evicted meanwhile)
    return None, None  # a log moving too fast to place the client: a gap, never a guess


#: How long a reconnect to another process waits for its Last-Event-ID to reach Redis.
ARRIVAL_WAIT = 0.5


async def _arriving(replay_log: ReplayLog, last_id: str) -> list[Entry] | None:
    """The entries after ``last_id`` once Redis has it, or None if it does not come.

    The run's process writes each event to its client an append round before
    Redis has it, so a client that reconnects to another process at once may
    name an id that is still on its way: it is waited for, briefly, rather
    than answered with resume_gap.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ARRIVAL_WAIT
    pause = 0.01
    while loop.time() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)
        entries = await replay_log.after(last_id)
        if entries is not None:
            return entries
    return None


async def _gap(
    request: web.Request, request_id: str, message: str, dialect: Dialect
) -> web.StreamResponse:
    response = await start_response(request, None, request_id)
    data = dialect.error("resume_gap", message, partial=True)
    with contextlib.suppress(ConnectionResetError):
        await response.write(data)
    return response
