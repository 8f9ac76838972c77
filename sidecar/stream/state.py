"""A stream's numbers (times, counts, outcome) and its end: metrics and the ``stream_end`` line.

Every path of a stream records what happened here (a read, a write, a batch,
a heartbeat), so its accounting is done once whatever path moved the bytes.
"""

from __future__ import annotations

import structlog

from sidecar.logs import session_hash
from sidecar.metrics import RouteMetrics
from sidecar.normalize import Batch

log = structlog.get_logger("sse_sidecar")


class StreamState:
    """What one stream has done so far; :meth:`finish` accounts it once."""

    __slots__ = (
        "bytes_out",
        "client_gone_at",
        "committed",
        "counts",
        "first_read",
        "forwarded",
        "heartbeats",
        "last_byte",
        "last_write",
        "max_silence",
        "metrics",
        "outcome",
        "request_id",
        "session_key",
        "started",
        "stream_id",
        "upstream_seen",
    )

    def __init__(
        self,
        metrics: RouteMetrics,
        started: float,
        *,
        stream_id: str,
        request_id: str,
        session_key: str | None,
    ) -> None:
        self.metrics = metrics
        #: The route's tally, shared by its streams (sidecar/metrics.py Tally).
        self.counts = metrics.counts
        self.started = started
        self.stream_id = stream_id
        self.request_id = request_id
        self.session_key = session_key
        self.outcome = "client_disconnected"
        #: Headers are out: from now on the stream can only end with an event.
        self.committed = False
        #: An upstream answered (its silence is worth a sample).
        self.upstream_seen = False
        self.last_write = started
        self.last_byte = started
        self.max_silence = 0.0
        self.forwarded = 0
        self.heartbeats = 0
        self.bytes_out = 0
        self.client_gone_at: float | None = None
        #: No upstream read yet (the first one samples the time to first byte).
        self.first_read = True

    @property
    def partial(self) -> bool:
        """Whether the client already has part of the answer."""
        return self.forwarded > 0

    def read_at(self, now: float) -> None:
        """Bytes (or items) came from the upstream at ``now``."""
        silence = now - self.last_byte
        if silence > self.max_silence:  # noqa: PLR1730 (max() costs a call, once per read)
            self.max_silence = silence
        self.last_byte = now
        if self.first_read:
            self.first_read = False
            self.metrics.ttfb.observe(now - self.started)

    def reading_from(self, now: float) -> None:
        """The body starts: silence counts from here, not from the request."""
        self.last_byte = now

    def wrote(self, size: int, now: float) -> None:
        self.last_write = now
        self.bytes_out += size
        self.counts.bytes_out += size

    def passed(self, events: int) -> None:
        """Events forwarded as the upstream sent them (the raw path)."""
        self.forwarded += events
        self.counts.forwarded += events

    def heartbeat(self) -> None:
        self.heartbeats += 1
        self.counts.heartbeats += 1

    def counted(self, batch: Batch) -> None:
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

    def client_gone(self, now: float) -> None:
        self.client_gone_at = now

    def finish(self, now: float) -> None:
        """The stream is over: its metrics and its ``stream_end`` line."""
        m = self.metrics
        m.active.dec()
        m.outcome(self.outcome)
        m.duration.observe(now - self.started)
        if self.upstream_seen and self.committed:
            m.max_silence.observe(max(self.max_silence, now - self.last_byte))
        if self.client_gone_at is not None:
            # The upstream was closed right before this (StreamRun.serve).
            m.after_client.observe(now - self.client_gone_at)
        log.info(
            "stream_end",
            route=m.route,
            stream_id=self.stream_id,
            request_id=self.request_id,
            session=session_hash(self.session_key),
            outcome=self.outcome,
            duration_s=round(now - self.started, 3),
            events_forwarded=self.forwarded,
            heartbeats=self.heartbeats,
            bytes_out=self.bytes_out,
            max_silence_s=round(self.max_silence, 3),
        )
