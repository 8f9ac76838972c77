"""The Sink of a resumable run: numbered events into the replay log, and to its caught-up client.

Strategy: every event the run emits is appended to the log with its id; the
run's local client, while it has every entry so far and keeps up, gets each
event written here too, in the same call as the append (on the splice, the
socket's callback): no second task, no log read, no wait on the log's
backend on the live path. The client is let go the moment it falls behind,
and reads the log from its place as every other follower does
(sidecar/resume/follower.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web

from sidecar.errors import BackendUnavailable
from sidecar.headers import Headers, stream_kept
from sidecar.normalize import Batch, IdSource
from sidecar.replay.base import Entry, ReplayLog
from sidecar.stream.state import StreamState

if TYPE_CHECKING:
    from sidecar.stream.sink import ClientSink

log = structlog.get_logger("sse_sidecar")


class DirectClient(Protocol):
    """A follower the run writes to itself while it is caught up (sidecar/resume/follower.py)."""

    #: The seq of the last entry its client has.
    after_seq: int
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
        "_direct", "_direct_write", "_route", "_terminal", "headers", "ids", "last_seq", "log",
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
        #: Set once the run committed (None) or answered otherwise (that answer).
        self.ready: asyncio.Future[web.StreamResponse | None] = (
            asyncio.get_running_loop().create_future()
        )
        #: What every follower's response keeps of the upstream's headers.
        self.headers: Headers | None = None
        self._terminal: tuple[int, str] | None = None
        #: The seq of the newest entry appended.
        self.last_seq = 0
        self._direct: DirectClient | None = None
        #: Its sink's write_if_room, bound once: the steady event's write.
        self._direct_write: Callable[[bytes], bool] | None = None

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
            # The batch's bytes are its entries' unless a comment was passed
            # on (no entry: never a place to resume from): then join them.
            self._logged(batch.entries, None if batch.comments_passed else batch.data)

    def emit_entry(self, entry: Entry) -> None:
        """One numbered event (the splice's steady read): ``emit_nowait`` without a batch.

        ``_logged`` and ``_deliver`` for one entry, inlined: this is once per
        event of every resumable stream.
        """
        seq, _, data, terminal = entry  # one unpacking, not three field lookups
        size = len(data)
        if self.state is not None:
            self.state.bytes_out += size
        self.log.append_one(entry, seq, size)
        self.last_seq = seq
        client = self._direct
        if client is not None:
            assert self._direct_write is not None
            if client.after_seq == seq - 1 and self._direct_write(data):
                client.after_seq = seq
                if terminal:
                    client.ended = True
                    self.release()
            else:
                self.release()  # behind (or gone): it catches up from the log

    def _logged(self, entries: Sequence[Entry], data: bytes | None) -> None:
        """Entries into the log, and to the caught-up client, if any (``data``: their bytes)."""
        self.log.append_nowait(entries)
        self.last_seq = entries[-1].seq
        if self._direct is not None:
            self._deliver(entries, data)

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
        self._direct_write = client.sink.write_if_room
        return True

    def release(self, client: object = None) -> None:
        """Stop writing to ``client`` (None: to whichever client it writes to)."""
        direct = self._direct
        if direct is not None and (client is None or client is direct):
            self._direct = self._direct_write = None
            direct.released()

    def _deliver(self, entries: Sequence[Entry], data: bytes | None = None) -> None:
        client = self._direct
        assert client is not None
        if data is None:
            data = entries[0].data if len(entries) == 1 else b"".join([e.data for e in entries])
        sink = client.sink
        if client.after_seq != entries[0].seq - 1 or not sink.write_if_room(data):
            self.release()  # behind (or gone): it catches up from the log
            return
        client.after_seq = entries[-1].seq
        if entries[-1].terminal:
            client.ended = True
            self.release()
