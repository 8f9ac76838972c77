"""Stream state (sidecar/stream/state.py): what a stream did, accounted once at its end."""

from __future__ import annotations

import structlog

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
    (line,) = [entry for entry in logs if entry["event"] == "stream_end"]
    assert line["outcome"] == "completed"
    assert line["stream_id"] == "s1"
    assert line["request_id"] == "r1"
    assert line["session"] != "key"  # hashed, never the key itself
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
