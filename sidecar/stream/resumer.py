"""Asking a broken upstream again for the rest of its stream (a route's ``upstream_resume``).

Strategy: when a stream's upstream connection breaks or falls silent before
its terminal event, the run (sidecar/stream/run.py) hands the error here;
:meth:`UpstreamResumer.reopen` waits a backoff, sends the kept request in
resume form (sidecar/upstream/resumption.py) and returns the new
connection once it answers with an event stream, or raises the error back
when there is nothing to resume from or the attempts ran out. Every wait
goes through the run's paced wait, so the client keeps getting heartbeats
and the stream's limits keep running while the upstream is away.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol, TypeVar

import structlog

from sidecar.config import Route
from sidecar.errors import UpstreamError
from sidecar.metrics import RouteMetrics
from sidecar.stream import source as sources
from sidecar.stream.pacing import Pacing
from sidecar.stream.state import StreamState
from sidecar.upstream import connect as upstream_connect
from sidecar.upstream.http import Upstream
from sidecar.upstream.resumption import (
    KeptRequest,
    ResumeCursor,
    backoff_delay,
    may_resume,
    resume_request,
)

T = TypeVar("T")

log = structlog.get_logger("sse_sidecar")


class PacedWait(Protocol):
    """Await a future while the stream heartbeats and its limits run (the run's own wait)."""

    async def __call__(self, future: asyncio.Future[T], /) -> T: ...


class UpstreamResumer:
    """One stream's resumes: how many attempts this break has left, and each attempt."""

    __slots__ = ("_metrics", "_pacing", "_progress", "_route", "_state", "_used", "_wait",
                 "cursor", "kept", "resumes")  # fmt: skip

    def __init__(
        self,
        route: Route,
        kept: KeptRequest,
        cursor: ResumeCursor | None,
        state: StreamState,
        pacing: Pacing,
        metrics: RouteMetrics,
        wait: PacedWait,
    ) -> None:
        self._route = route
        #: The run's upstream request as sent (its body within limits.max_body_bytes).
        self.kept = kept
        #: Where the forwarded stream stands (a run taken over: where it stood).
        self.cursor = cursor or ResumeCursor.for_config(route.upstream_resume)
        self._state = state
        self._pacing = pacing
        self._metrics = metrics
        self._wait = wait
        #: Attempts spent on the current break.
        self._used = 0
        #: Events forwarded when the last resume succeeded (more since: progress).
        self._progress = -1
        #: Resume requests that gave a stream, over the run.
        self.resumes = 0

    async def reopen(self, error: UpstreamError) -> Upstream:
        """A new upstream connection that goes on after the cursor; else raises ``error``."""
        config = self._route.upstream_resume
        loop = asyncio.get_running_loop()
        state = self._state
        total = self._pacing.limit_reached(loop.time(), state.started, loop.time(), idle=False)
        if not may_resume(error, total is not None):
            raise error
        request = resume_request(self.kept, config, self.cursor)
        if request is None:
            self._metrics.upstream_resume("no_id")
            log.info("upstream_resume_impossible", route=self._route.name, reason=str(error),
                     stream_id=state.stream_id)  # fmt: skip
            raise error
        if state.forwarded > self._progress:
            self._used = 0  # the last resume brought new events: a new break
        # The silence of the break is not the resumed upstream's: the idle limit
        # (which bounds every attempt's wait, too) counts from here.
        state.reading_from(loop.time())
        while self._used < config.attempts:
            self._used += 1
            pause = asyncio.ensure_future(
                asyncio.sleep(backoff_delay(config, self._used, random.random()))
            )
            try:
                await self._wait(pause)
            finally:
                pause.cancel()
            upstream = await self._attempt(request, error)
            if upstream is not None:
                self._metrics.upstream_resume("resumed")
                self.resumes += 1
                self._progress = state.forwarded
                self.cursor.resuming()
                state.reading_from(loop.time())
                return upstream
        self._metrics.upstream_resume("exhausted")
        log.info("upstream_resume_exhausted", route=self._route.name, stream_id=state.stream_id,
                 attempts=self._used, reason=str(error))  # fmt: skip
        raise type(error)(f"{error} (and {self._used} resume attempts failed)")

    async def _attempt(self, request: KeptRequest, error: UpstreamError) -> Upstream | None:
        """One resume request: its connection if it answered with a stream, else None."""
        opener = asyncio.ensure_future(sources.open_kept(request, self._route))
        try:
            upstream = await self._wait(opener)
        except BaseException as exc:
            if opener.done() and isinstance(exc, UpstreamError) and exc is _error_of(opener):
                self._failed(str(exc))  # the attempt failed, not the stream (a limit)
                return None
            upstream_connect.cancel_pending(opener)
            raise
        if not sources.is_stream(upstream):
            upstream.close()
            self._failed(f"answered {upstream.status} {upstream.content_type}")
            return None
        log.info("upstream_resumed", route=self._route.name, stream_id=self._state.stream_id,
                 attempt=self._used, after=str(error))  # fmt: skip
        return upstream

    def _failed(self, why: str) -> None:
        self._metrics.upstream_resume("failed")
        log.info("upstream_resume_failed", route=self._route.name,
                 stream_id=self._state.stream_id, attempt=self._used, reason=why)  # fmt: skip


def _error_of(future: asyncio.Future[Upstream]) -> BaseException | None:
    return None if future.cancelled() else future.exception()
