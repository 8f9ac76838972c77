"""Taking over a run whose replica is gone: it goes on here, in the same log.

Strategy: on a route with ``upstream_resume`` on and the Redis backend, a run
keeps its upstream request in its log's index from the start, and each
append round stores the resume cursor beside the entries
(sidecar/replay/redis.py). A client that follows such a run from another
replica (a reconnect, or a live follower) and finds its owner gone (its
liveness key lapsed) asks to take it over; of all who ask, one wins
(sidecar/replay/redis_takeover.py) and starts a run here whose first
upstream request is the resume request (sidecar/upstream/resumption.py),
appending to the same log with its seq continued, so every follower reads on
without a gap or a repeat. The others see the run alive again and follow it.
A run with nothing to resume it from ends as before: the buffered events,
then ``error/upstream_disconnected``. An old owner that comes back is fenced:
its log refuses its writes, and its run ends its own client with
``replaced``.

The run's own client gets each event about one round trip before Redis has
it, so after a crash its ``Last-Event-ID`` may be newer than the log's last
entry. A reconnect whose id is not in the log but orders after its newest
(the upstream's ids end in a number) waits, within the lease and a second,
for the id to reach the log, or for the owner to be missed: then it takes the
run over and resumes the upstream from the client's id. Otherwise the answer
is ``resume_gap``, as before.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from aiohttp import web
from yarl import URL

from sidecar.context import StreamHandle
from sidecar.errors import InvalidResumeState
from sidecar.forwarding import request_id
from sidecar.replay.base import Entry, NotTaken, ReplayLog, Taken
from sidecar.resume.follower import OWNER_CHECK
from sidecar.resume.run import ResumableRun, end_log
from sidecar.services import RouteServices
from sidecar.upstream.resumption import KeptRequest, ResumeCursor, id_position, resume_request

log = structlog.get_logger("sse_sidecar")

GONE = "the replica running this stream is gone; the stream cannot go on"
#: How often a reconnect ahead of the log looks again (the id reaches Redis within a round).
_WAIT_STEP = 0.1


def ordered_after(known: str, client_id: str) -> bool:
    """Whether ``client_id`` orders after ``known``: both end in a number after the same text."""
    mine, theirs = id_position(known), id_position(client_id)
    return mine is not None and theirs is not None and mine[0] == theirs[0] and theirs[1] > mine[1]


def client_cursor(cursor: ResumeCursor, client_id: str) -> ResumeCursor | None:
    """The cursor to resume from the client's id, if it is after the log's last (pure).

    Only ids that order (they end in a number, with the same text before it)
    say "after"; the fields of earlier events stay as the log has them.
    """
    if cursor.order != "id" or cursor.last_id is None:
        return None
    if not ordered_after(cursor.last_id, client_id):
        return None
    wants = (f"data.{w}" for w in cursor.wants)
    return ResumeCursor(wants, cursor.order, last_id=client_id, fields=cursor.fields)


#: A run taken over for a reconnect, and the seq its client has.
Resumed = tuple[ResumableRun, int]


class Takeover:
    """A route's takeover of runs whose replica is gone (Redis backend, upstream_resume on)."""

    def __init__(self, services: RouteServices, runs: dict[str, ResumableRun]) -> None:
        self.services = services
        self.runs = runs
        self.config = services.route.upstream_resume
        self.enabled = self.config.enabled and services.ctx.replay.kind == "redis"

    def kept(
        self, request: web.Request, url: URL, body: bytes | None, stream_id: str
    ) -> KeptRequest | None:
        """A new run's upstream request, as it will go out, kept in its log (None: not kept)."""
        if not self.enabled:
            return None
        # The pure form: the run reuses this, and counts a dropped request id itself.
        rid = request_id(request.headers.get("X-Request-ID"), stream_id)
        headers = self.services.admission.upstream_headers(request, rid)
        return KeptRequest(request.method, str(url), tuple(headers.items()), body)

    def watch(self, run: ResumableRun) -> None:
        """The run's log keeps its cursor for a takeover, and a takeover elsewhere ends it here."""
        if not self.enabled:
            return

        def cursor() -> bytes:
            # Nothing to resume from yet (no upstream id): no takeover either.
            now = run.stream.cursor
            return now.to_bytes() if now is not None and now.last_id is not None else b""

        run.log.keep_cursor(cursor)
        run.log.when_fenced(lambda: run.handle.stop("replaced"))

    async def take(
        self, request: web.Request, key: str, replay_log: ReplayLog
    ) -> ResumableRun | NotTaken:
        """Take the log's run over if its owner is gone: the run, now here, or why not."""
        run, _ = await self._take(request, key, replay_log, None)
        return run

    async def take_for(
        self, request: web.Request, key: str, replay_log: ReplayLog, client_id: str
    ) -> Resumed | list[Entry] | None:
        """For a reconnect whose id is not in the log: the run taken over from that id, if it can.

        Only an id after the log's newest (an event the run's own client got
        before Redis did) is waited for: until it reaches the log (its entries
        after it, then), or the run's owner is missed (the run taken over from
        it, with the seq the client has), within the lease and a second. None:
        the answer is resume_gap (the run may still have been taken over,
        from the log's own cursor, for others).
        """
        if not self.enabled:
            return None
        newest = await replay_log.last()
        if newest is None or newest.terminal or not ordered_after(newest.event_id, client_id):
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.services.ctx.config.backend.lease + OWNER_CHECK
        while not await replay_log.abandoned():
            entries = await replay_log.after(client_id)
            if entries is not None:
                return entries  # its owner lives: it was on its way to Redis
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(_WAIT_STEP)
        run, after_seq = await self._take(request, key, replay_log, client_id)
        return (run, after_seq) if isinstance(run, ResumableRun) and after_seq >= 0 else None

    async def _take(
        self, request: web.Request, key: str, replay_log: ReplayLog, client_id: str | None
    ) -> tuple[ResumableRun | NotTaken, int]:
        """The run taken over, and the log's last seq if it resumes from the client (else -1)."""
        services = self.services
        route = services.route.name
        counter = services.ctx.metrics.run_takeovers
        taken = await services.ctx.replay.take_over(replay_log)
        if isinstance(taken, str):
            counter.labels(route, "followed" if taken == "owned" else "impossible").inc()
            return taken, -1
        try:
            kept = KeptRequest.from_bytes(taken.kept)
            cursor = ResumeCursor.from_bytes(taken.cursor)
        except InvalidResumeState as exc:
            log.warning("takeover_state_invalid", route=route, run=taken.log.run_id, error=str(exc))
            return await self._end(taken), -1
        newer = client_cursor(cursor, client_id) if client_id is not None else None
        from_client = newer is not None
        cursor = newer or cursor
        if resume_request(kept, self.config, cursor) is None:
            return await self._end(taken), -1
        handle = StreamHandle(secrets.token_hex(8), route)
        run = ResumableRun(
            services, request, handle, URL(kept.url, encoded=True), kept.body, key, taken.log,
            self.runs, kept=kept, resume_from=cursor,
        )  # fmt: skip
        run.continues(taken.last_seq)
        self.watch(run)
        handle.task = services.ctx.spawn(run.serve())
        self.runs[key] = run
        counter.labels(route, "taken").inc()
        log.info(
            "run_taken_over",
            route=route,
            run=taken.log.run_id,
            stream_id=handle.id,
            after_seq=taken.last_seq,
            from_client=from_client,
        )
        return run, taken.last_seq if from_client else -1

    async def _end(self, taken: Taken) -> NotTaken:
        """A run taken over that cannot go on: its log gets the end a follower would write."""
        services = self.services
        services.ctx.metrics.run_takeovers.labels(services.route.name, "impossible").inc()
        await end_log(services, taken.log, taken.last_seq, GONE)
        return "owned"  # its followers read that end
