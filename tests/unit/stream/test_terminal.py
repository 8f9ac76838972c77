"""A stream's commit and terminal event (sidecar/stream/terminal.py), through a Sink."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from sidecar.dialects import dialect
from sidecar.headers import Headers
from sidecar.metrics import Metrics, RouteMetrics
from sidecar.sse import Decoder, Event, encode_event
from sidecar.stream import terminal
from sidecar.stream.state import StreamState

GENERIC = dialect("generic", encode_event("", "keepalive"))


class RecordingSink:
    """A Sink that keeps what it was handed; ``writes``: whether ``end`` writes."""

    ids = None
    heartbeats = True
    response = None

    def __init__(self, writes: bool = True) -> None:
        self.writes = writes
        self.commits: list[Headers | None] = []
        self.ends: list[bytes] = []

    async def commit(self, upstream_headers: Headers | None) -> None:
        self.commits.append(upstream_headers)

    async def emit(self, batch: Any) -> None:
        raise AssertionError("a terminal event is not emitted as a batch")

    async def write(self, data: bytes) -> None:
        raise AssertionError("a terminal event goes through end")

    def next_id(self) -> str | None:
        return "e9"

    async def end(self, data: bytes) -> bool:
        self.ends.append(data)
        return self.writes

    def splice_target(self) -> None:
        return None


def new_state(forwarded: int = 0) -> tuple[Metrics, StreamState]:
    metrics = Metrics()
    state = StreamState(
        RouteMetrics(metrics, "chat"), 0.0, stream_id="s", request_id="r", session_key=None
    )
    state.forwarded = forwarded
    return metrics, state


def synthesized(metrics: Metrics) -> float | None:
    metrics.flush()
    labels = {"route": "chat", "kind": "terminal_synthesized"}
    return metrics.registry.get_sample_value("sse_sidecar_events_total", labels)


def the_event(sink: RecordingSink) -> tuple[Event, dict[str, Any]]:
    """The one terminal event the Sink got, and its JSON payload."""
    (data,) = sink.ends
    decoder = Decoder()
    (event,) = decoder.feed(data) + decoder.close()
    assert isinstance(event, Event)
    assert event.data is not None
    return event, json.loads(event.data)


async def test_commit_sends_the_upstreams_headers_and_marks_the_stream_committed() -> None:
    _, state = new_state()
    sink = RecordingSink()
    headers = CIMultiDict({"Content-Type": "text/event-stream"})
    await terminal.commit(state, sink, headers)
    assert state.committed
    assert sink.commits == [headers]


async def test_a_completed_body_writes_nothing_more() -> None:
    metrics, state = new_state()
    sink = RecordingSink()
    await terminal.ended(state, sink, GENERIC, completed=True)
    assert (state.outcome, sink.ends, synthesized(metrics)) == ("completed", [], 0.0)


async def test_a_clean_close_without_a_terminal_event_gets_ours_not_partial() -> None:
    metrics, state = new_state(forwarded=3)
    sink = RecordingSink()
    await terminal.ended(state, sink, GENERIC, completed=False)
    event, payload = the_event(sink)
    assert (event.event, event.id) == ("end", "e9")
    # The upstream said all it had, though the client has part of the answer.
    assert payload == {"type": "end", "reason": "upstream_closed", "partial": False}
    assert state.outcome == "upstream_closed"
    assert synthesized(metrics) == 1.0


async def test_a_terminal_event_the_sink_did_not_write_is_not_counted() -> None:
    metrics, state = new_state()
    await terminal.ended(state, RecordingSink(writes=False), GENERIC, completed=False)
    assert state.outcome == "upstream_closed"
    assert synthesized(metrics) == 0.0


async def test_a_stopped_stream_commits_first_then_ends_cleanly() -> None:
    _, state = new_state(forwarded=1)
    sink = RecordingSink()
    await terminal.end_stopped(state, sink, GENERIC)
    assert state.committed
    assert sink.commits == [None]  # no upstream headers: the sidecar's own
    _, payload = the_event(sink)
    assert payload == {"type": "end", "reason": "stopped", "partial": True}
    assert state.outcome == "stopped"


@pytest.mark.parametrize(
    ("code", "status", "told"),
    [
        ("upstream_status", 503, 503),
        ("upstream_timeout", 503, None),
        ("upstream_status", None, None),
    ],
)
async def test_an_error_tells_the_upstreams_status_only_for_upstream_status(
    code: str, status: int | None, told: int | None
) -> None:
    _, state = new_state()
    state.committed = True
    sink = RecordingSink()
    await terminal.end_with_error(state, sink, GENERIC, code, "went wrong", status=status)
    assert sink.commits == []  # already committed: headers are not sent twice
    event, payload = the_event(sink)
    assert event.event == "error"
    assert (payload["code"], payload["message"], payload["partial"]) == (code, "went wrong", False)
    assert payload.get("status") == told
    assert state.outcome == code


@pytest.mark.parametrize(
    ("code", "event_name", "retry"),
    [("stopped", "end", None), ("shutdown", "error", 2000), ("replaced", "error", None)],
)
async def test_a_stream_stopped_from_outside_ends_by_its_stop_code(
    code: str, event_name: str, retry: int | None
) -> None:
    _, state = new_state()
    sink = RecordingSink()
    await terminal.end_by_stop(state, sink, GENERIC, code, retry_ms=retry)
    event, payload = the_event(sink)
    assert (event.event, event.retry, state.outcome) == (event_name, retry, code)
    if event_name == "error":
        assert payload["code"] == code
        assert payload["message"]  # the client is told why, in words
