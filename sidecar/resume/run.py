"""A resumable run: a stream (sidecar/stream/run.py) whose Sink is the session's replay log.

Strategy: the run is composed, not derived: a :class:`StreamRun` with a
:class:`LogSink` (sidecar/resume/sink.py), so every event it emits is
appended to the log with an id, and clients follow the log
(sidecar/resume/follower.py); a client that has caught up is written by the
run itself, beside the append. This module adds
who is listening: the run keeps going for ``resume.grace`` once no client
follows it here (nor, with Redis, from another process), then ends quietly.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog
from aiohttp import web
from yarl import URL

from sidecar.context import StreamHandle
from sidecar.errors import BackendUnavailable
from sidecar.headers import Headers
from sidecar.replay.base import Entry, ReplayLog
from sidecar.resume.sink import DirectClient, LogSink
from sidecar.services import RouteServices
from sidecar.stream.run import StreamRun
from sidecar.upstream.resumption import KeptRequest, ResumeCursor

log = structlog.get_logger("sse_sidecar")

#: Why a run taken over whose session claim was refused ends in its log.
UNCLAIMED = "the replica running this stream is gone, and its session is taken: it cannot go on"


async def end_log(services: RouteServices, replay_log: ReplayLog, last_seq: int, why: str) -> None:
    """End a log whose run cannot go on with ``upstream_disconnected`` after ``last_seq``.

    The end a follower of a gone run writes, in the log itself, so every
    follower on every replica reads the same terminal event.
    """
    seq = last_seq + 1
    event_id = f"{replay_log.run_id}-{seq}"
    data = services.normalizer.dialect.error(
        "upstream_disconnected", why, partial=True, event_id=event_id
    )
    await replay_log.append([Entry(seq, event_id, data, terminal=True)])
    await replay_log.finish(services.route.resume.retention)


class Stoppable(Protocol):
    """A client following a run (sidecar/resume/follower.py)."""

    def stop(self) -> None: ...


class ResumableRun:
    """A run whose events go to the session's replay log; followers write them out."""

    __slots__ = (
        "_detached_at", "_grace", "_registry", "_unsure", "done", "followers", "handle", "log",
        "loop", "request_id", "route", "services", "session_key", "sink", "stream", "taken_over",
        "waiting",
    )  # fmt: skip

    def __init__(
        self,
        services: RouteServices,
        request: web.Request,
        handle: StreamHandle,
        url: URL,
        body: bytes | None,
        session_key: str,
        replay_log: ReplayLog,
        registry: dict[str, ResumableRun],
        *,
        kept: KeptRequest | None = None,
        resume_from: ResumeCursor | None = None,
    ) -> None:
        """``kept``, ``resume_from``: as :class:`StreamRun` (sidecar/resume/takeover.py)."""
        self.services = services
        self.route = services.route
        self.session_key = session_key
        self.handle = handle
        self.log = replay_log
        self.sink = LogSink(replay_log, self.route.name)
        self.stream = StreamRun(
            services, request, handle, url, body, session_key, self.sink,
            kept=kept, resume_from=resume_from,
        )  # fmt: skip
        self.sink.state = self.stream.state
        self.request_id = self.stream.request_id
        self.loop = self.stream.loop
        #: Taken over from a gone replica: its log is the old run's, followed elsewhere too.
        self.taken_over = resume_from is not None
        self._registry = registry
        #: Clients following the run here: one, but for a moment two when a
        #: reconnect arrives before the old connection is known to be gone.
        self.followers: list[Stoppable] = []
        #: The first request waits for the run to answer (not yet a follower).
        self.waiting = 0
        self.done = False
        self._grace: asyncio.TimerHandle | None = None
        self._detached_at: float | None = None
        self._unsure = False

    def continues(self, last_seq: int) -> None:
        """A run taken over: its events go on in its log after ``last_seq``."""
        assert self.sink.ids is not None
        self.sink.ids.seq = self.sink.last_seq = last_seq

    @property
    def ready(self) -> asyncio.Future[web.StreamResponse | None]:
        return self.sink.ready

    @property
    def stream_headers(self) -> Headers | None:
        return self.sink.headers

    async def serve(self) -> None:
        response: web.StreamResponse | None = None
        ended = False
        try:
            response = await self.stream.serve()
            ended = await self._end_if_unclaimed()
        finally:
            self.done = True
            self.sink.release()  # a client it wrote to sees the end (without a terminal)
            if not self.ready.done():
                self.ready.set_result(response)  # refused or passed through
            self._cancel_grace()
            if self._registry.get(self.session_key) is self:
                del self._registry[self.session_key]
            state = self.stream.state
            try:
                if ended:
                    pass
                elif state.committed and state.outcome != "abandoned":
                    await self.log.finish(self.route.resume.retention)
                else:
                    await self.services.ctx.replay.drop(self.log)
            except BackendUnavailable as exc:
                log.warning("replay_log_unavailable", route=self.route.name, error=str(exc))

    async def _end_if_unclaimed(self) -> bool:
        """A run taken over whose session claim was refused: end its log (whether it did).

        The takeover freed the session, and another stream claimed it before
        this run did (or Redis failed the claim): nothing was asked of the
        upstream, so the session has one run, the other one. The log is the
        old run's, read by its followers on any replica: it gets their
        terminal event (before ``done``, so a follower here reads it too)
        rather than vanishing under them.
        """
        state = self.stream.state
        if not self.taken_over or state.committed or state.outcome != "rejected":
            return False
        log.info("takeover_unclaimed", route=self.route.name, run=self.log.run_id)
        try:
            await end_log(self.services, self.log, self.sink.last_seq, UNCLAIMED)
        except BackendUnavailable as exc:
            log.warning("replay_log_unavailable", route=self.route.name, error=str(exc))
            return False
        return True

    # --- who is listening ------------------------------------------------------

    def attach(self, follower: Stoppable | None = None) -> None:
        """A client follows the run; a reconnect takes over from older followers."""
        if follower is None:
            self.waiting += 1
        else:
            for older in list(self.followers):
                older.stop()
            self.followers.append(follower)
        self._cancel_grace()
        self._detached_at = None

    def direct(self, client: DirectClient) -> bool:
        """Have the run write ``client``'s events itself while it keeps up (LogSink)."""
        return not self.done and self.sink.direct(client)

    def release(self, client: DirectClient) -> None:
        self.sink.release(client)

    @property
    def followed_here(self) -> bool:
        return bool(self.followers) or self.waiting > 0

    def detach(self, follower: Stoppable | None = None) -> None:
        if follower is None:
            self.waiting -= 1
        else:
            if follower in self.followers:
                self.followers.remove(follower)
            self.sink.release(follower)
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
            self.services.ctx.spawn(self._abandon_unless_followed())

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
                self.services.metrics.after_client.observe(self.loop.time() - self._detached_at)
            self.handle.stop("abandoned")
