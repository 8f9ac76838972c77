"""Stream state (sidecar/stream/state.py): what a stream did, accounted once at its end."""

from __future__ import annotations

from typing import Any

import structlog

from sidecar.logs import session_hash
from sidecar.metrics import Metrics, RouteMetrics
from sidecar.normalize import Batch
from sidecar.stream.state import StreamState


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    metrics.flush()
    return metrics.registry.get_sample_value(name, {"route": "chat", **labels})


def new_state(started: float = 100.0) -> tuple[Metrics, StreamState]:
    metrics = Metrics()
    route = RouteMetrics(metrics, "chat")
    state = StreamState(route, started, stream_id="s1", request_id="r1", session_key="key")
    return metrics, state


def stream_end(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one ``stream_end`` line among the captured ones."""
    (line,) = [entry for entry in logs if entry["event"] == "stream_end"]
    return line


def test_reads_track_the_longest_silence_and_the_first_byte() -> None:
    metrics, state = new_state()
    state.reading_from(101.0)
    state.read_at(103.0)
    state.read_at(103.5)
    state.read_at(110.0)
    assert state.max_silence == 6.5
    assert state.last_byte == 110.0
    # The time to first byte is sampled once, from the start of the stream.
    assert sample(metrics, "sse_sidecar_upstream_ttfb_seconds_count") == 1.0
    assert sample(metrics, "sse_sidecar_upstream_ttfb_seconds_sum") == 3.0


def test_writes_heartbeats_and_events_are_counted_in_the_stream_and_the_route() -> None:
    metrics, state = new_state()
    state.wrote(10, 101.0)
    state.wrote(5, 102.0)
    state.heartbeat()
    state.passed(3)
    state.counted(Batch(forwarded=2, comments_converted=1, comments_dropped=4))
    assert (state.bytes_out, state.last_write, state.heartbeats, state.forwarded) == (
        15,
        102.0,
        1,
        5,
    )
    assert state.partial
    assert sample(metrics, "sse_sidecar_client_bytes_total") == 15.0
    assert sample(metrics, "sse_sidecar_events_total", kind="forwarded") == 5.0
    assert sample(metrics, "sse_sidecar_events_total", kind="heartbeat") == 1.0
    assert sample(metrics, "sse_sidecar_events_total", kind="comment_converted") == 1.0
    assert sample(metrics, "sse_sidecar_events_total", kind="comment_dropped") == 4.0


def test_nothing_forwarded_is_not_partial() -> None:
    _, state = new_state()
    state.counted(Batch(comments_passed=1))
    assert not state.partial


def test_finish_accounts_the_outcome_and_writes_the_stream_end_line() -> None:
    metrics, state = new_state()
    metrics.active_streams.labels("chat").inc()
    state.committed = True
    state.upstream_seen = True
    state.outcome = "completed"
    state.read_at(102.0)
    state.wrote(7, 102.0)
    with structlog.testing.capture_logs() as logs:
        state.finish(110.0)
    assert sample(metrics, "sse_sidecar_streams_total", outcome="completed") == 1.0
    assert sample(metrics, "sse_sidecar_active_streams") == 0.0
    assert sample(metrics, "sse_sidecar_stream_duration_seconds_sum") == 10.0
    # The silence still running at the end counts: 8 s since the last byte.
    assert sample(metrics, "sse_sidecar_upstream_max_silence_seconds_sum") == 8.0
    line = stream_end(logs)
    assert line["outcome"] == "completed"
    assert line["stream_id"] == "s1"
    assert line["request_id"] == "r1"
    # Hashed, never the key itself.
    assert line["session"] == session_hash("key") != "key"
    assert line["bytes_out"] == 7
    assert line["duration_s"] == 10.0


def test_a_stream_that_never_reached_an_upstream_samples_no_silence() -> None:
    metrics, state = new_state()
    metrics.active_streams.labels("chat").inc()
    state.committed = True
    state.client_gone(104.0)
    state.finish(105.0)
    assert sample(metrics, "sse_sidecar_upstream_max_silence_seconds_count") == 0.0
    assert sample(metrics, "sse_sidecar_upstream_after_client_gone_seconds_sum") == 1.0


def test_a_new_stream_has_done_nothing_yet() -> None:
    # Until a path decides otherwise, a stream that ends was left by its
    # client (a cancelled handler), has sent no headers, and its first
    # heartbeat is due one interval after the request, not at once.
    _, state = new_state(started=100.0)
    assert state.outcome == "client_disconnected"
    assert state.committed is False
    assert state.upstream_seen is False
    assert (state.last_write, state.last_byte) == (100.0, 100.0)
    assert (state.forwarded, state.heartbeats, state.bytes_out) == (0, 0, 0)
    assert state.max_silence == 0.0
    assert state.client_gone_at is None
    assert not state.partial


def test_an_outcome_nobody_set_is_reported_as_the_client_gone() -> None:
    metrics, state = new_state()
    with structlog.testing.capture_logs() as logs:
        state.finish(101.0)
    assert sample(metrics, "sse_sidecar_streams_total", outcome="client_disconnected") == 1.0
    assert stream_end(logs)["outcome"] == "client_disconnected"


def test_short_silences_are_measured_from_zero() -> None:
    # The longest silence starts at 0 s: a stream whose reads are all under
    # a second apart reports that, not a floor of one second.
    _, state = new_state(started=100.0)
    state.reading_from(100.0)
    state.read_at(100.25)
    state.read_at(100.5)
    assert state.max_silence == 0.25


def test_the_time_to_first_byte_is_sampled_once_however_many_reads() -> None:
    metrics, state = new_state(started=100.0)
    for now in (101.0, 102.0, 103.0):
        state.read_at(now)
    assert sample(metrics, "sse_sidecar_upstream_ttfb_seconds_count") == 1.0
    assert sample(metrics, "sse_sidecar_upstream_ttfb_seconds_sum") == 1.0


def test_events_and_heartbeats_add_up_over_calls() -> None:
    metrics, state = new_state()
    state.passed(2)
    state.passed(3)
    state.heartbeat()
    state.heartbeat()
    state.counted(Batch(forwarded=4))
    assert (state.forwarded, state.heartbeats) == (9, 2)
    assert sample(metrics, "sse_sidecar_events_total", kind="forwarded") == 9.0
    assert sample(metrics, "sse_sidecar_events_total", kind="heartbeat") == 2.0


def test_the_route_tally_adds_every_stream_of_the_route() -> None:
    # Two streams of one route share its tally: each adds, none overwrites.
    metrics, first = new_state()
    second = StreamState(first.metrics, 100.0, stream_id="s2", request_id="r2", session_key=None)
    first.passed(2)
    second.passed(3)
    first.heartbeat()
    second.heartbeat()
    first.wrote(10, 101.0)
    second.wrote(20, 101.0)
    assert sample(metrics, "sse_sidecar_events_total", kind="forwarded") == 5.0
    assert sample(metrics, "sse_sidecar_events_total", kind="heartbeat") == 2.0
    assert sample(metrics, "sse_sidecar_client_bytes_total") == 30.0
    assert (first.forwarded, second.forwarded) == (2, 3)


def test_comments_passed_through_are_counted_by_their_number() -> None:
    metrics, state = new_state()
    state.counted(Batch(comments_passed=3))
    state.counted(Batch(comments_passed=2))
    assert sample(metrics, "sse_sidecar_events_total", kind="comment_passed") == 5.0
    assert sample(metrics, "sse_sidecar_events_total", kind="comment_dropped") == 0.0
    assert sample(metrics, "sse_sidecar_events_total", kind="comment_converted") == 0.0
    assert sample(metrics, "sse_sidecar_events_total", kind="forwarded") == 0.0


def test_the_stream_end_line_carries_every_field() -> None:
    _, state = new_state(started=100.0)
    state.committed = True
    state.upstream_seen = True
    state.outcome = "upstream_closed"
    state.reading_from(100.0)
    state.read_at(101.23456)
    state.read_at(101.5)
    state.passed(3)
    state.heartbeat()
    state.heartbeat()
    state.wrote(42, 101.5)
    with structlog.testing.capture_logs() as logs:
        state.finish(110.12345)
    line = stream_end(logs)
    # Times to the millisecond: rounding to more digits or to whole seconds
    # changes the line.
    assert line == {
        "event": "stream_end",
        "log_level": "info",
        "route": "chat",
        "stream_id": "s1",
        "request_id": "r1",
        "session": session_hash("key"),
        "outcome": "upstream_closed",
        "duration_s": 10.123,
        "events_forwarded": 3,
        "heartbeats": 2,
        "bytes_out": 42,
        "max_silence_s": 1.235,
    }


def test_a_stream_without_a_session_logs_none_for_it() -> None:
    metrics = Metrics()
    state = StreamState(
        RouteMetrics(metrics, "chat"), 100.0, stream_id="s1", request_id="r1", session_key=None
    )
    with structlog.testing.capture_logs() as logs:
        state.finish(101.0)
    assert stream_end(logs)["session"] is None


def test_different_sessions_log_different_hashes() -> None:
    lines = []
    for key in ("alpha", "beta"):
        metrics = Metrics()
        state = StreamState(
            RouteMetrics(metrics, "chat"), 100.0, stream_id="s", request_id="r", session_key=key
        )
        with structlog.testing.capture_logs() as logs:
            state.finish(101.0)
        lines.append(stream_end(logs)["session"])
    assert lines == [session_hash("alpha"), session_hash("beta")]
    assert lines[0] != lines[1]
