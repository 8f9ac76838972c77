"""How a stream reaches its client's side: the commit, then the one terminal event.

Once headers are out the stream can only end with an event, so every end of
a committed stream (the upstream's close, a stop, an error) comes here and is
written through the Sink, in the route's dialect. Functions, not an object:
the run (sidecar/stream/run.py) passes what it holds, and a stream carries
nothing more for them.
"""

from __future__ import annotations

from sidecar.dialects import Dialect
from sidecar.headers import Headers
from sidecar.stream.sink import Sink
from sidecar.stream.state import StreamState

#: What the client is told when a stream is stopped from outside, by stop code.
_STOP_MESSAGES = {
    "shutdown": "the server is shutting down; reconnect",
    "replaced": "a newer stream for this session replaced this one",
}


async def commit(state: StreamState, sink: Sink, headers: Headers | None = None) -> None:
    """Headers out (the upstream's, if it answered): from now on the stream can only end
    with an event."""
    state.committed = True
    await sink.commit(headers)


async def end(state: StreamState, sink: Sink, data: bytes, outcome: str) -> None:
    """Write the terminal event ``data``; the stream's outcome is ``outcome``."""
    state.outcome = outcome
    if await sink.end(data):
        state.metrics.event("terminal_synthesized")


async def ended(state: StreamState, sink: Sink, dialect: Dialect, completed: bool) -> None:
    """The body ended: by the upstream's terminal event, or cleanly without one (ours)."""
    if completed:
        state.outcome = "completed"
        return
    # A clean close said all it had: partial false (README, "partial").
    event = dialect.end("upstream_closed", partial=False, event_id=sink.next_id())
    await end(state, sink, event, "upstream_closed")


async def end_stopped(state: StreamState, sink: Sink, dialect: Dialect) -> None:
    """A stop request ended the stream: a clean end, not an error."""
    if not state.committed:
        await commit(state, sink)
    event = dialect.end("stopped", partial=state.partial, event_id=sink.next_id())
    await end(state, sink, event, "stopped")


async def end_with_error(
    state: StreamState,
    sink: Sink,
    dialect: Dialect,
    code: str,
    message: str,
    *,
    retry_ms: int | None = None,
    status: int | None = None,
) -> None:
    """The terminal error event; ``status``: the upstream's, told for ``upstream_status``."""
    if not state.committed:
        await commit(state, sink)
    extra: dict[str, object] = {}
    if status is not None and code == "upstream_status":
        extra["status"] = status
    data = dialect.error(
        code, message, partial=state.partial, retry_ms=retry_ms, event_id=sink.next_id(), **extra
    )
    await end(state, sink, data, code)


async def end_by_stop(
    state: StreamState, sink: Sink, dialect: Dialect, code: str, *, retry_ms: int | None = None
) -> None:
    """Stopped from outside with ``code``: a stop request (sidecar/stop.py) is not an
    error; a shutdown or a newer stream for the session is."""
    if code == "stopped":
        await end_stopped(state, sink, dialect)
    else:
        await end_with_error(state, sink, dialect, code, _STOP_MESSAGES[code], retry_ms=retry_ms)
