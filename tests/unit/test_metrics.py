"""Per-read counts go to plain ints and reach Prometheus on flush and on every scrape."""

from __future__ import annotations

from sidecar.metrics import Metrics, RouteMetrics


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_tallies_reach_the_counters_on_flush_only() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "chat")
    route.counts.bytes_in += 10
    route.counts.bytes_out += 20
    route.counts.forwarded += 3
    assert _value(metrics, "sse_sidecar_upstream_bytes_total", route="chat") == 0
    metrics.flush()
    assert _value(metrics, "sse_sidecar_upstream_bytes_total", route="chat") == 10
    assert _value(metrics, "sse_sidecar_client_bytes_total", route="chat") == 20
    events = _value(metrics, "sse_sidecar_events_total", route="chat", kind="forwarded")
    assert events == 3
    metrics.flush()  # nothing new: nothing added twice
    assert _value(metrics, "sse_sidecar_upstream_bytes_total", route="chat") == 10


def test_a_scrape_sees_what_streams_counted_since_the_last_flush() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "chat")
    route.counts.forwarded += 7
    text = metrics.render().decode()
    assert 'sse_sidecar_events_total{kind="forwarded",route="chat"} 7.0' in text
