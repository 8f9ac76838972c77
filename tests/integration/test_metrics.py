"""Exact metric values after a scripted set of streams, and the stream log lines."""

from __future__ import annotations

import asyncio
import re

import structlog

from bench.procs import free_port
from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

DONE = b"event: done\ndata: [DONE]\n\n"


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_exact_counters_after_a_scripted_set_of_streams(upstream, start_sidecar):
    scripts = {
        "normal": Script([b"data: 1\n\n", b"data: 2\n\n", DONE]),
        "comments": Script([b": a\n", 0.05, b": b\n", 0.05, b"data: 1\n\n", DONE]),
        "heartbeats": Script([b"data: 1\n\n", 0.55, DONE]),
        "crash": Script([b"data: 1\n\n", 0.05, "abort"]),
        "garbage": Script([b"data: 1\n\n", b"data: \xff\n\n"]),
        "noterm": Script([b"data: 1\n\n"]),
        "hang": Script([b"data: 1\n\n", "hang"]),
        "e500": Script([b"{}"], status=500, content_type="application/json"),
    }
    upstream.script = lambda request: scripts[request.query["m"]]
    sc = await start_sidecar(
        make_config(
            upstream.url,
            heartbeat={"interval": "200ms"},
            limits={"idle_timeout": "900ms"},
            session={"policy": "reject"},
        )
    )
    keepalives = 0  # what the clients got: converted comments and heartbeats
    for mode in ("normal", "comments", "heartbeats", "crash", "garbage", "noterm", "hang", "e500"):
        got_stream = await read_stream(sc.http, "GET", sc.url + f"/s?m={mode}")
        keepalives += sum(e.event == "keepalive" for e in got_stream.events)
    # A conflict: a live stream holds the key, a second request is rejected.
    key = {"X-Session-Key": "k1"}
    upstream.script = lambda request: Script([b"data: 1\n\n", 0.3, DONE])
    first = asyncio.ensure_future(read_stream(sc.http, "GET", sc.url + "/s", headers=key))
    await asyncio.sleep(0.1)
    async with sc.http.get(sc.url + "/s", headers=key) as resp:
        assert resp.status == 409
    keepalives += sum(e.event == "keepalive" for e in (await first).events)
    got = samples(await sc.metrics())

    def v(name: str, **labels: str) -> float:
        inner = ",".join(f'{k}="{val}"' for k, val in sorted(labels.items()))
        return got[f"{name}{{{inner}}}"]

    r = "test"
    assert v("sse_sidecar_streams_total", route=r, outcome="completed") == 4
    assert v("sse_sidecar_streams_total", route=r, outcome="upstream_disconnected") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="upstream_protocol") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="upstream_closed") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="upstream_timeout") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="passthrough") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="rejected") == 1
    assert v("sse_sidecar_streams_total", route=r, outcome="client_disconnected") == 0
    assert v("sse_sidecar_active_streams", route=r) == 0
    # normal 3 + comments 2 + heartbeats 2 + crash 1 + garbage 1 + noterm 1 + hang 1 + k1 2
    assert v("sse_sidecar_events_total", route=r, kind="forwarded") == 13
    assert v("sse_sidecar_events_total", route=r, kind="comment_converted") == 2
    # heartbeats: 550 ms of silence holds 2 (at 200, 400 ms); hang: 900 ms
    # until idle_timeout holds 4; k1: 300 ms holds 1. Each is due 200 ms after
    # the last write and the timer wheel fires up to a slot late, so on a
    # loaded machine the last of hang's may fall past its timeout: the count
    # must be exactly what the clients got, and about what the timings give.
    heartbeats = v("sse_sidecar_events_total", route=r, kind="heartbeat")
    assert heartbeats == keepalives - 2
    assert 5 <= heartbeats <= 7
    # crash, garbage, noterm (end), hang (timeout)
    assert v("sse_sidecar_events_total", route=r, kind="terminal_synthesized") == 4
    assert v("sse_sidecar_upstream_protocol_errors_total", route=r, kind="invalid_utf8") == 1
    assert v("sse_sidecar_passthrough_responses_total", route=r, status_class="5xx") == 1
    assert v("sse_sidecar_session_conflicts_total", route=r, policy="reject") == 1
    assert v("sse_sidecar_stream_duration_seconds_count", route=r) == 10
    # Every stream that got an upstream stream records its longest silence;
    # heartbeats (550 ms) and hang (900 ms) were silent longer than 0.5 s.
    assert v("sse_sidecar_upstream_max_silence_seconds_count", route=r) == 8
    assert v("sse_sidecar_upstream_max_silence_seconds_bucket", route=r, le="0.5") == 6
    assert v("sse_sidecar_upstream_max_silence_seconds_bucket", route=r, le="1.0") == 8
    assert v("sse_sidecar_upstream_ttfb_seconds_count", route=r) == 8
    assert v("sse_sidecar_build_info", version=__import__("sidecar").__version__) == 1


async def test_unreachable_and_rejections_are_counted(start_sidecar):
    sc = await start_sidecar(
        make_config(
            f"http://127.0.0.1:{free_port()}",
            session={"from": "query:k"},
            limits={"max_body_bytes": 10},
        )
    )
    await read_stream(sc.http, "GET", sc.url + "/s")
    async with sc.http.get(sc.url + "/s?k=bad%20key") as resp:
        assert resp.status == 400
    async with sc.http.post(sc.url + "/s", data=b"x" * 11) as resp:
        assert resp.status == 413
    got = samples(await sc.metrics())
    assert got['sse_sidecar_streams_total{outcome="upstream_unreachable",route="test"}'] == 1
    assert got['sse_sidecar_rejected_requests_total{reason="bad_session_key",route="test"}'] == 1
    assert got['sse_sidecar_rejected_requests_total{reason="body_too_large",route="test"}'] == 1


async def test_labels_never_carry_keys_paths_or_addresses(upstream, start_sidecar):
    upstream.script = Script([DONE])
    sc = await start_sidecar(make_config(upstream.url))
    await read_stream(
        sc.http, "GET", sc.url + "/s/user/12345?x=1", headers={"X-Session-Key": "secret-key"}
    )
    text = await sc.metrics()
    for leak in ("secret-key", "12345", "127.0.0.1", "/s/user"):
        assert leak not in text
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {"route", "outcome", "kind", "reason", "status_class", "policy", "result",
                      "backend", "version", "le"}  # fmt: skip


async def test_one_log_line_at_start_and_end_with_request_id(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", DONE])
    sc = await start_sidecar(make_config(upstream.url))
    with structlog.testing.capture_logs() as logs:
        got = await read_stream(
            sc.http,
            "GET",
            sc.url + "/s",
            headers={"X-Request-ID": "req-42", "X-Session-Key": "alice"},
        )
    assert got.headers["X-Request-ID"] == "req-42"
    assert upstream.requests[0].headers["X-Request-ID"] == "req-42"
    start, end = (entry for entry in logs if entry["event"] in ("stream_start", "stream_end"))
    assert start["event"] == "stream_start"
    assert end["event"] == "stream_end"
    assert start["request_id"] == end["request_id"] == "req-42"
    assert start["stream_id"] == end["stream_id"]
    assert end["route"] == "test"
    assert end["outcome"] == "completed"
    assert end["events_forwarded"] == 2
    assert end["session"] != "alice"
    assert len(end["session"]) == 12
    assert "alice" not in repr(logs)


async def test_admin_token_guards_metrics_but_not_the_probes(upstream, start_sidecar):
    sc = await start_sidecar(make_config(upstream.url, top={"admin": {
        "host": "127.0.0.1", "port": 0, "token": "s3cret"}}))  # fmt: skip
    async with sc.http.get(sc.admin_url + "/metrics") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    async with sc.http.get(
        sc.admin_url + "/metrics", headers={"Authorization": "Bearer wrong"}
    ) as resp:
        assert resp.status == 401
    async with sc.http.get(
        sc.admin_url + "/metrics", headers={"Authorization": "Bearer s3cret"}
    ) as resp:
        assert resp.status == 200
        assert "sse_sidecar_active_streams" in await resp.text()
    for path in ("/healthz", "/readyz"):
        async with sc.http.get(sc.admin_url + path) as resp:
            assert resp.status == 200


async def test_readyz_turns_false_while_draining(upstream, start_sidecar):
    sc = await start_sidecar(make_config(upstream.url, top={"drain_timeout": 0}))
    async with sc.http.get(sc.admin_url + "/readyz") as resp:
        assert (resp.status, await resp.text()) == (200, "ready\n")
    await sc.sidecar.drain()
    async with sc.http.get(sc.admin_url + "/readyz") as resp:
        assert (resp.status, await resp.text()) == (503, "draining\n")
    assert "sse_sidecar_draining 1.0" in await sc.metrics()
