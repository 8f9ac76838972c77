"""A resumable run: a stream (sidecar/stream/run.py) whose Sink is the session's replay log.

Strategy: the run is composed, not derived: a :class:`StreamRun` with a
:class:`LogSink`, so every event it emits is appended to the log with an id,
and clients follow the log (sidecar/resume/follower.py); a client that has
caught up is written by the run itself, beside the append. This module adds
who is listening: the run keeps going for ``resume.grace`` once no client
follows it here (nor, with Redis, from another process), then ends quietly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web
from yarl import URL

from sidecar.context import StreamHandle
from sidecar.errors import BackendUnavailable
from sidecar.headers import Headers, stream_kept
from sidecar.normalize import Batch, IdSource
from sidecar.replay.base import Entry, ReplayLog
from sidecar.services import RouteServices
from sidecar.stream.run import StreamRun
from sidecar.stream.state import StreamState
from sidecar.upstream.resumption import KeptRequest, ResumeCursor

if TYPE_CHECKING:
    from sidecar.stream.sink import ClientSink

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


class DirectClient(Protocol):
    """A follower the run writes to itself while it is caught up (sidecar/resume/follower.py)."""

    #: The seq of the last entry its client has.
    after_seq: int
    #: When it last got an entry (its idle limit counts from there).
    last_entry: float
    #: Its client got the run's terminal event.
    ended: bool

    @property
    def sink(self) -> ClientSink: ...

    def released(self) -> None:
        """The run stopped writing to it: it reads the log again (or ends)."""
        ...


class LogSink:
    """The Sink of a resumable run: numbered events into the replay log.

    Its caught-up local client, if any, gets each event written by the run
    itself, beside the log append and in the same call (on the splice, the
    socket's callback), so the live path costs no second task, no log read
    and no wait on the log's backend. A client the write would queue behind
    (or a replaced one) is let go: it reads the log from its place, as every
    other follower does.
    """

    __slots__ = (
        "_direct", "_loop", "_route", "_terminal", "headers", "ids", "last_seq", "log",
        "ready", "state",
    )  # fmt: skip

    heartbeats = False  # each follower heartbeats its own client
    response: web.StreamResponse | None = None
    closing = False  # the log never closes under the splice

    def __init__(self, replay_log: ReplayLog, route: str) -> None:
        self.log = replay_log
        self._route = route
        self.ids: IdSource | None = IdSource(replay_log.run_id)
        #: The run's state, for its stream_end log (set by ResumableRun).
        self.state: StreamState | None = None
        self._loop = asyncio.get_running_loop()
        #: Set once the run committed (None) or answered otherwise (that answer).
        self.ready: asyncio.Future[web.StreamResponse | None] = self._loop.create_future()
        #: What every follower's response keeps of the upstream's headers.
        self.headers: Headers | None = None
        self._terminal: tuple[int, str] | None = None
        #: The seq of the newest entry appended.
        self.last_seq = 0
        self._direct: DirectClient | None = None

    async def commit(self, upstream_headers: Headers | None) -> None:
        self.headers = stream_kept(upstream_headers)
        if not self.ready.done():
            self.ready.set_result(None)

    async def emit(self, batch: Batch) -> None:
        self.emit_nowait(batch)

    def emit_nowait(self, batch: Batch) -> None:
        if self.state is not None:
            # What the run produced for its clients (each follower logs what it wrote);
            # not state.wrote(): the route's client bytes are the followers' to count.
            self.state.bytes_out += len(batch.data)
        if batch.entries:
            self._logged(batch.entries)

    def emit_entry(self, entry: Entry) -> None:
        """One numbered event (the splice's steady read): ``emit_nowait`` without a batch.

        ``_logged`` and ``_deliver`` for one entry, inlined: this is once per
        event of every resumable stream.
        """
        data = entry.data
        if self.state is not None:
            self.state.bytes_out += len(data)
        self.log.append_nowait((entry,))
        seq = self.last_seq = entry.seq
        client = self._direct
        if client is not None:
            if client.after_seq == seq - 1 and client.sink.write_if_room(data):
                client.after_seq = seq
                client.last_entry = self._loop.time()
                if entry.terminal:
                    client.ended = True
                    self.release()
            else:
                self.release()  # behind (or gone): it catches up from the log

    def _logged(self, entries: Sequence[Entry]) -> None:
        """Entries into the log, and to the caught-up client, if any."""
        self.log.append_nowait(entries)
        self.last_seq = entries[-1].seq
        if self._direct is not None:
            self._deliver(entries)

    async def write(self, data: bytes) -> None:
        """Bytes of the run's own without an id (never a place to resume from)."""
        self.write_nowait(data)

    def write_nowait(self, data: bytes) -> None:
        assert self.ids is not None
        self.emit_nowait(Batch(data=data, entries=[Entry(self.ids.next()[0], "", data)]))

    def next_id(self) -> str | None:
        assert self.ids is not None
        self._terminal = self.ids.next()
        return self._terminal[1]

    async def end(self, data: bytes) -> bool:
        assert self._terminal is not None
        seq, event_id = self._terminal
        if self.state is not None:
            self.state.bytes_out += len(data)
        entry = Entry(seq, event_id, data, terminal=True)
        try:
            await self.log.append([entry])
        except BackendUnavailable as exc:
            log.warning("replay_log_unavailable", route=self._route, error=str(exc))
            return False
        self.last_seq = seq
        if self._direct is not None:
            self._deliver([entry])
        return True

    def splice_target(self) -> LogSink:
        return self  # the splice numbers what it forwards, and emits it here

    # --- the splice's side (sidecar/stream/sink.py, SpliceTarget) -------------

    def take_transport(self) -> None:
        return None  # the direct client's transport is its own Sink's

    def write_if_room(self, data: bytes) -> bool:
        self.write_nowait(data)
        return True  # a run never waits for a client: the one behind reads the log

    async def drained(self) -> None:
        return None

    # --- the caught-up local client ---------------------------------------------

    def direct(self, client: DirectClient) -> bool:
        """Write ``client``'s events from the run from now on, if it has them all so far."""
        if self._direct is client:
            return True
        if self._direct is not None or client.after_seq != self.last_seq:
            return False
        client.sink.take_transport()
        self._direct = client
        return True

    def release(self, client: object = None) -> None:
        """Stop writing to ``client`` (None: to whichever client it writes to)."""
        direct = self._direct
        if direct is not None and (client is None or client is direct):
            self._direct = None
            direct.released()

    def _deliver(self, entries: Sequence[Entry]) -> None:
        client = self._direct
        assert client is not None
        data = entries[0].data if len(entries) == 1 else b"".join(e.data for e in entries)
        sink = client.sink
        if client.after_seq != entries[0].seq - 1 or not sink.write_if_room(data):
            self.release()  # behind (or gone): it catches up from the log
            return
        client.after_seq = entries[-1].seq
        client.last_entry = self._loop.time()
        if entries[-1].terminal:
            client.ended = True
            self.release()


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
