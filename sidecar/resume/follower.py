"""One client following a run's replay log: what it holds, then what arrives.

Strategy: the follower reads the log after the client's last event and
writes it through the client's Sink (sidecar/stream/sink.py), the one write
path of that client, with heartbeats when the log is quiet (paced by
sidecar/stream/pacing.py). Once it has caught up with a run of this process,
the run writes its events to that Sink itself (sidecar/resume/run.py) while
the client keeps up; the follower then only heartbeats, and reads the log
again when the run lets it go. A follower of a run on another process
(Redis) marks the log followed, so that process keeps the run going.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from sidecar.dialects import Dialect
from sidecar.errors import BackendUnavailable, ClientGone, SlowClient
from sidecar.headers import Headers
from sidecar.replay.base import Entry, NotTaken, ReplayLog
from sidecar.services import RouteServices
from sidecar.stream.sink import ClientSink
from sidecar.stream.state import StreamState

log = structlog.get_logger("sse_sidecar")

#: How often a follower of a quiet run on another process asks whether that
#: process is still alive (the run's liveness key, renewed every lease/3).
OWNER_CHECK = 1.0


class FollowedRun(Protocol):
    """The local run a follower follows (sidecar/resume/run.py)."""

    @property
    def done(self) -> bool: ...

    @property
    def log(self) -> ReplayLog: ...

    def attach(self, follower: Follower) -> None: ...

    def detach(self, follower: Follower | None = None) -> None:
        """``follower`` stops following (None: a request waiting for the run's answer)."""
        ...

    def direct(self, client: Follower) -> bool:
        """Whether the run now writes ``client``'s events itself (it has them all so far)."""
        ...

    def release(self, client: Follower) -> None: ...


#: Takes over the run of a log whose owner is gone (sidecar/resume/takeover.py).
TakeOver = Callable[[ReplayLog], Awaitable[FollowedRun | NotTaken]]


def unavailable(message: str, dialect: Dialect) -> bytes:
    """The resume state cannot be reached now; a short retry: brings EventSource back."""
    return dialect.error("backend_unavailable", message, partial=True, retry_ms=1000)


class Follower:
    """One client's view of a run's log."""

    __slots__ = (
        "_direct", "_slot", "after_seq", "ended", "last_entry", "log", "loop", "outcome", "pacing",
        "replaced", "replay_until", "replayed", "request", "request_id", "route", "run", "services",
        "sink", "state", "take_over", "task",
    )  # fmt: skip

    def __init__(
        self,
        services: RouteServices,
        request: web.Request,
        replay_log: ReplayLog,
        after_seq: int,
        run: FollowedRun | None,
        request_id: str,
        replay_until: int = 0,
        take_over: TakeOver | None = None,
    ) -> None:
        self.services = services
        self.route = services.route
        self.request = request
        self.log = replay_log
        self.after_seq = after_seq
        self.run = run
        self.request_id = request_id
        #: Entries up to this seq were in the log before this client came: "replayed".
        self.replay_until = replay_until
        #: For a run on another process: taking it over if that process is gone.
        self.take_over = take_over
        self.loop = asyncio.get_running_loop()
        self.state = StreamState(
            services.metrics,
            self.loop.time(),
            stream_id=replay_log.run_id,
            request_id=request_id,
            session_key=None,
        )
        self.sink = ClientSink(
            request, self.route, self.state, services.metrics, services.normalizer.keepalive
        )
        self.pacing = services.pacing()
        self.task: asyncio.Task[Any] | None = None
        #: When the client last got an entry (its idle limit counts from there;
        #: while the run writes here, when that stopped).
        self.last_entry = self.loop.time()
        #: The client got the run's terminal event (written by the run itself).
        self.ended = False
        #: Set while the run writes to this client itself; done when it stops.
        self._direct: asyncio.Future[None] | None = None
        #: The timer wheel's slot of that wait's end.
        self._slot = 0
        self.replaced = False
        self.outcome = "client_disconnected"
        self.replayed = 0

    def stop(self) -> None:
        """A newer connection took over this run: end this one with ``replaced``."""
        if self.task is not None and not self.replaced:
            self.replaced = True
            if self.run is not None:
                self.run.release(self)  # not one more event: this client is told it was replaced
            self.task.cancel()

    def released(self) -> None:
        """The run stopped writing to this client: it reads the log again (or ends)."""
        direct = self._direct
        if direct is not None and not direct.done():
            direct.set_result(None)

    async def serve(
        self, headers: Headers | None = None, *, waited: bool = False
    ) -> web.StreamResponse:
        """Follow the log until its end or the client's; the client's response.

        ``waited``: the run counts this request among those waiting for its
        answer (sidecar/resume/entry.py); the count is let go once this
        follower follows the run itself (or cannot), never before, so the
        run's grace does not start in between.
        """
        try:
            await self.sink.start(headers)
            response = self.sink.response
            assert response is not None
            self.task = asyncio.current_task()
            if self.run is not None:
                self.run.attach(self)
        finally:
            if waited and self.run is not None:
                self.run.detach()
        # Then the log is written out until its end, in this frame: each
        # coroutine a stream's handler awaits is held for the stream's life,
        # and so is each local of this one. So every await is here, and what
        # is decided between two of them is a plain method that has returned
        # before anything waits.
        try:
            await self.sink.open()
            self.last_entry = self.loop.time()
            followed_at = -math.inf
            while True:
                now = self.loop.time()
                if self.run is None and now - followed_at > self.route.resume.grace / 3:
                    # Keeps a run on another process going.
                    await self.log.follow(self.route.resume.grace)
                    followed_at = now
                if self.run is not None and self.run.direct(self):
                    since = self.after_seq
                    try:
                        await self._direct_wait(self._block(now))
                    finally:
                        self._direct_over(since)
                    if self.ended:
                        self.outcome = "completed"
                        return response
                    entries = await self.log.read(self.after_seq, 0)
                else:
                    entries = await self.log.read(self.after_seq, self._block(now))
                now = self.loop.time()
                if entries:
                    ending = self._lost(entries)
                    if ending is not None:
                        await self.sink.write(ending)
                        self.outcome = "completed"
                        return response
                    await self.sink.write(b"".join(e.data for e in entries))
                    if self._forwarded(entries, now):
                        self.outcome = "completed"
                        return response
                    continue
                if self.run is not None and self.run.done:
                    if await self.log.read(self.after_seq, 0):
                        continue  # it ended while we looked: write the rest first
                    await self.sink.write(self._unfinished())
                    self.outcome = "upstream_disconnected"
                    return response
                if self.run is None and await self.log.abandoned():
                    if await self.log.read(self.after_seq, 0):
                        continue  # what it wrote before it died comes first
                    if await self._taken_over():
                        continue
                    self.outcome = await self._gone()
                    return response
                ending = self._timed_out(now)
                if ending is not None:
                    await self.sink.write(ending)
                    self.outcome = "completed"
                    return response
                if self.pacing.heartbeat_due(now, self.state.last_write):
                    await self.sink.write(self.services.normalizer.keepalive)
                    self.state.heartbeat()
        except asyncio.CancelledError:
            if not self.replaced:
                raise  # the client went away
            with contextlib.suppress(ClientGone, SlowClient):
                await self.sink.write(self._replaced())
        except BackendUnavailable as exc:
            self.outcome = "backend_unavailable"
            with contextlib.suppress(ClientGone, SlowClient):
                await self.sink.write(unavailable(str(exc), self.dialect))
        except (ClientGone, SlowClient) as exc:
            if isinstance(exc, SlowClient):
                self.outcome = "slow_client"
                self.services.ctx.metrics.slow_clients.labels(self.route.name).inc()
        finally:
            self._ended()
        return response

    # --- what serve decides between its awaits (none of these awaits) ---------

    def _block(self, now: float) -> float:
        """How long the next wait may last: to the idle limit, a heartbeat, a follow, a check."""
        grace = self.route.resume.grace
        block = min(self.last_entry + self.route.limits.idle_timeout, now + grace / 3) - now
        interval = self.pacing.heartbeat
        if interval > 0:
            block = min(block, self.state.last_write + interval - now)
        if self.run is None:
            # A quiet run elsewhere is asked after once a second, so the
            # death of its process ends this stream within its lease + 1 s.
            block = min(block, OWNER_CHECK)
        return max(block, 0.0)

    def _lost(self, entries: list[Entry]) -> bytes | None:
        """The stream's last write if this client fell further behind than the buffer holds."""
        if entries[0].seq <= self.after_seq + 1:
            return None
        self.services.ctx.metrics.resume.labels(self.route.name, "gap").inc()
        message = "events were lost: the client fell behind the resume buffer"
        return self.dialect.error("resume_gap", message, partial=True)

    def _forwarded(self, entries: list[Entry], now: float) -> bool:
        """Count the entries the client was just sent; whether the last one ends the stream."""
        self.last_entry = now
        replayed = sum(1 for e in entries if e.seq <= self.replay_until)
        if replayed:
            self.replayed += replayed
            self.services.metrics.event("replayed", replayed)
        self.after_seq = entries[-1].seq
        return entries[-1].terminal

    def _unfinished(self) -> bytes:
        """The end of a run of this process that ended without a terminal entry.

        It was abandoned as this client came, or it was taken over, its session
        claim was refused and its log could not be given its end: the client
        still gets an end.
        """
        message = "the stream ended before its terminal event"
        return self.dialect.error("upstream_disconnected", message, partial=True)

    def _timed_out(self, now: float) -> bytes | None:
        """The stream's last write once a run elsewhere was silent for the idle limit.

        A run of this process has the same limit on its upstream and always
        ends with a terminal entry (or resumes its upstream): only a follower
        of a run elsewhere needs its own idle limit.
        """
        idle = self.route.limits.idle_timeout
        if self.run is not None or now - self.last_entry < idle:
            return None
        message = f"no event for limits.idle_timeout ({idle:g}s) while following the stream"
        return self.dialect.error("upstream_timeout", message, partial=True)

    def _replaced(self) -> bytes:
        """A newer connection took over (:meth:`stop`): the cancel is ours, the last write this."""
        assert self.task is not None
        self.task.uncancel()
        self.outcome = "replaced"
        message = "a newer connection resumed this stream"
        return self.dialect.error("replaced", message, partial=True)

    def _ended(self) -> None:
        if self.run is not None:
            self.run.detach(self)
        # The run logs its own start and end; this is the client's side.
        log.info(
            "follow_end",
            route=self.route.name,
            request_id=self.request_id,
            run=self.log.run_id,
            outcome=self.outcome,
            duration_s=round(self.loop.time() - self.state.started, 3),
            replayed=self.replayed,
            heartbeats=self.state.heartbeats,
            bytes_out=self.state.bytes_out,
        )

    @property
    def dialect(self) -> Dialect:
        return self.services.normalizer.dialect

    async def _gone(self) -> str:
        """End the stream of a run that ended without a terminal event on another process."""
        if await self.log.last() is None:
            # Dropped, not lost: its process abandoned it (nobody followed it
            # within resume.grace) just before this reconnect found it; the
            # answer is the one a reconnect a moment later gets.
            message = "cannot resume: the stream was abandoned"
            await self.sink.write(self.dialect.error("resume_gap", message, partial=True))
            return "resume_gap"
        message = "the replica running this stream is gone; the stream cannot go on"
        await self.sink.write(self.dialect.error("upstream_disconnected", message, partial=True))
        return "upstream_disconnected"

    async def _taken_over(self) -> bool:
        """Whether the run of a gone process goes on: taken over here, or by another replica."""
        if self.take_over is None:
            return False
        got = await self.take_over(self.log)
        if got == "impossible":
            return False
        if not isinstance(got, str):  # taken over here: follow the run's own log
            self.run, self.log = got, got.log
            got.attach(self)
        return True

    # The run writes this client's events itself: the follower waits until it
    # stops or the block passes. The wait is a bare future woken by the run
    # (:meth:`released`) or by the process's timer wheel, not asyncio.wait,
    # which holds a waiter, a set, a timer handle and callbacks for the whole
    # of an idle stream's silence; nor a coroutine of its own (awaited in
    # serve). The wheel wakes at most its resolution late, never early, and
    # a heartbeat is only written once due.

    def _direct_wait(self, block: float) -> asyncio.Future[None]:
        """The future to await while the run writes here, woken after ``block`` at the latest."""
        self._direct = direct = self.loop.create_future()
        self._slot = self.services.ctx.timers.add(self.loop.time() + block, self.released)
        return direct

    def _direct_over(self, since: int) -> None:
        """The run stopped writing here; ``since``: the client's last seq when it started."""
        self.services.ctx.timers.remove(self._slot, self.released)
        self._direct = None
        if self.after_seq != since:
            # The run writes entries without the time (a clock read per
            # event): the wait's end stands for the last one's.
            self.last_entry = self.loop.time()
        # Whatever comes next reads the log from after_seq, which only
        # stays still once the run no longer writes here.
        assert self.run is not None
        self.run.release(self)
