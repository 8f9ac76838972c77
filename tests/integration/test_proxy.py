"""The normalised stream end to end: real upstream, real sidecar, real client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from bench.procs import free_port
from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

DONE = b"event: done\ndata: [DONE]\n\n"


async def test_forwards_events_and_sets_stream_headers(upstream, start_sidecar):
    upstream.script = Script(
        [b'event: token\nid: 7\ndata: {"text":"Hi"}\n\n', b"data: a\r\ndata: b\r\n\r\n", DONE],
        headers={"X-Upstream": "yes", "Content-Length": "999", "Keep-Alive": "timeout=5"},
    )
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 200
    assert got.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert got.headers["Cache-Control"] == "no-cache, no-transform"
    assert got.headers["X-Accel-Buffering"] == "no"
    assert got.headers["Connection"] == "keep-alive"
    assert got.headers["X-Upstream"] == "yes"
    assert "Content-Length" not in got.headers
    assert "Content-Encoding" not in got.headers
    assert "Keep-Alive" not in got.headers
    assert got.raw == (b'event: token\nid: 7\ndata: {"text":"Hi"}\n\ndata: a\ndata: b\n\n' + DONE)


async def test_forwards_path_query_body_and_safe_headers(upstream, start_sidecar):
    upstream.script = Script([DONE])
    # The test client plays the trusted proxy in front (its forwarding headers are kept).
    sc = await start_sidecar(
        make_config(upstream.url + "/api", top={"trusted_proxies": ["127.0.0.1/32"]})
    )
    got = await read_stream(
        sc.http,
        "POST",
        sc.url + "/s/run/1?model=x&n=2",
        data=b'{"prompt":"hi"}',
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer t",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "TE": "trailers",
            "Accept-Encoding": "gzip, br",
            "X-Forwarded-For": "10.1.2.3",
        },
    )
    assert got.status == 200
    (req,) = upstream.requests
    assert (req.method, req.path, req.query) == ("POST", "/api/run/1", "model=x&n=2")
    assert req.body == b'{"prompt":"hi"}'
    assert req.headers["Authorization"] == "Bearer t"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept-Encoding"] == "identity"
    assert req.headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert req.headers["X-Forwarded-Proto"] == "http"
    assert req.headers["X-Forwarded-Host"] == f"127.0.0.1:{sc.sidecar.port}"
    assert req.headers["X-Request-ID"] == got.headers["X-Request-ID"]
    assert "X-Secret-Hop" not in req.headers
    assert "TE" not in req.headers


async def test_only_configured_prefix_is_proxied(upstream, start_sidecar):
    upstream.script = Script([DONE])
    sc = await start_sidecar(make_config(upstream.url))
    for path in ("/sx", "/other", "/", "/s/../admin", "/s/%2e%2e/admin"):
        async with sc.http.get(sc.url + path) as resp:
            assert resp.status in (400, 404), path
    assert upstream.requests == []
    async with sc.http.get(sc.url + "/s") as resp:
        assert resp.status == 200


async def test_heartbeats_fill_upstream_silence(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", 1.0, b"data: 2\n\n", DONE])
    sc = await start_sidecar(make_config(upstream.url, heartbeat={"interval": "200ms"}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    kinds = got.kinds()
    assert kinds[0] == "message"
    assert kinds[-2:] == ["message", "done"]
    heartbeats = [i for i, k in enumerate(kinds) if k == "keepalive"]
    assert 3 <= len(heartbeats) <= 5
    assert set(heartbeats) == set(range(1, 1 + len(heartbeats)))  # all inside the silence
    assert got.data("keepalive")[0] == {"type": "keepalive"}
    gaps = [b - a for a, b in zip(got.times, got.times[1:], strict=False)]
    assert max(gaps) < 0.45


async def test_no_heartbeat_when_interval_is_zero(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", 0.5, DONE])
    sc = await start_sidecar(make_config(upstream.url, heartbeat={"interval": 0}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds() == ["message", "done"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("convert", b'data: 1\n\nevent: keepalive\ndata: {"type":"keepalive"}\n\n'),
        ("pass", b"data: 1\n\n: ping\n"),
        ("drop", b"data: 1\n\n"),
    ],
)
async def test_comment_modes(upstream, start_sidecar, mode, expected):
    upstream.script = Script([b"data: 1\n\n: ping\n", 0.1, DONE])
    sc = await start_sidecar(make_config(upstream.url, comments=mode, heartbeat={"interval": 0}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.raw == expected + DONE


async def test_custom_keepalive_and_data_sentinel_terminal(upstream, start_sidecar):
    upstream.script = Script([b": x\n\n", b"data: [DONE]\n\n", b"data: after\n\n"])
    sc = await start_sidecar(
        make_config(
            upstream.url,
            keepalive={"event": "ping", "data": "{}"},
            terminal={"events": [], "data": ["[DONE]"]},
        )
    )
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.raw == b"event: ping\ndata: {}\n\ndata: [DONE]\n\n"


async def test_retry_and_opening_event_go_out_before_the_upstream_answers(upstream, start_sidecar):
    upstream.script = Script([DONE], headers_delay=0.6)
    sc = await start_sidecar(
        make_config(upstream.url, stream={"retry": "2s", "open_event": "open", "commit_after": 0})
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with sc.http.get(sc.url + "/s") as resp:
        assert resp.status == 200
        # One block: retry: alone would be an empty message event in most parsers.
        opening = b'retry: 2000\nevent: open\ndata: {"type":"open"}\n\n'
        assert await resp.content.readuntil(b"\n\n") == opening
        assert loop.time() - t0 < 0.4  # long before the upstream answered
        assert await resp.content.read() == DONE


async def test_error_status_is_passed_through(upstream, start_sidecar):
    body = json.dumps({"error": {"type": "rate_limited"}}).encode()
    upstream.script = Script(
        [body], status=429, content_type="application/json", headers={"Retry-After": "7"}
    )
    sc = await start_sidecar(make_config(upstream.url))
    async with sc.http.post(sc.url + "/s", json={"p": 1}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert resp.content_type == "application/json"
        assert await resp.read() == body
    metrics = await sc.metrics()
    assert 'sse_sidecar_passthrough_responses_total{route="test",status_class="4xx"} 1.0' in metrics
    assert 'sse_sidecar_streams_total{outcome="passthrough",route="test"} 1.0' in metrics


async def test_non_stream_success_is_passed_through(upstream, start_sidecar):
    upstream.script = Script([b"<html>hi</html>"], content_type="text/html")
    sc = await start_sidecar(make_config(upstream.url))
    async with sc.http.get(sc.url + "/s") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert await resp.read() == b"<html>hi</html>"


async def test_late_error_status_becomes_upstream_status(upstream, start_sidecar):
    upstream.script = Script([b"{}"], status=503, content_type="application/json",
                             headers_delay=0.3)  # fmt: skip
    sc = await start_sidecar(make_config(upstream.url, stream={"commit_after": 0}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 200
    err = got.error()
    assert (err["code"], err["status"], err["partial"]) == ("upstream_status", 503, False)


async def test_unreachable_upstream(start_sidecar):
    # Refused before commit: an HTTP error, so resp.ok is false and EventSource stops.
    sc = await start_sidecar(make_config(f"http://127.0.0.1:{free_port()}"))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 502
    assert got.headers["Content-Type"].startswith("application/json")
    assert json.loads(got.raw)["error"]["code"] == "upstream_unreachable"
    assert got.events == []


async def test_dns_failure_is_a_502(start_sidecar):
    sc = await start_sidecar(make_config("http://no-such-host.invalid:80"))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 502
    assert json.loads(got.raw)["error"]["code"] == "upstream_unreachable"


@contextlib.contextmanager
def _full_listener() -> Iterator[int]:
    """A port whose SYNs Linux drops: a listener that never accepts, its queue full."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
async def test_unreachable_after_commit_stays_the_terminal_event(start_sidecar):
    # A connect timeout longer than commit_after: headers are out, so an event ends it.
    with _full_listener() as port:
        sc = await start_sidecar(
            make_config(
                f"http://127.0.0.1:{port}",
                stream={"commit_after": "100ms"},
                limits={"connect_timeout": "400ms"},
            )
        )
        got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 200
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_unreachable", False)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
async def test_connect_timeout_before_commit_is_a_504(start_sidecar):
    with _full_listener() as port:
        sc = await start_sidecar(
            make_config(
                f"http://127.0.0.1:{port}",
                stream={"commit_after": "2s"},
                limits={"connect_timeout": "300ms"},
            )
        )
        got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.status == 504
    assert json.loads(got.raw)["error"]["code"] == "upstream_unreachable"


async def test_upstream_crash_mid_stream_is_reported_at_once(upstream, start_sidecar):
    upstream.script = Script([b"data: part\n\n", 0.05, "abort"])
    sc = await start_sidecar(make_config(upstream.url, limits={"idle_timeout": "30s"}))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert loop.time() - t0 < 1.0
    assert got.kinds() == ["message", "error"]
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_disconnected", True)


async def test_clean_close_without_terminal_gives_end(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n"])
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds() == ["message", "end"]
    # partial means "the rest will not come": a clean close said all it had.
    assert got.data("end") == [{"type": "end", "reason": "upstream_closed", "partial": False}]


async def test_idle_upstream_times_out(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(
        make_config(upstream.url, limits={"idle_timeout": "400ms"}, heartbeat={"interval": "100ms"})
    )
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds().count("keepalive") >= 2  # heartbeats do not count as upstream bytes
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_timeout", True)
    assert "idle_timeout" in err["message"]
    await asyncio.wait_for(upstream.requests[0].finished.wait(), 1.0)


async def test_max_duration_ends_a_busy_stream(upstream, start_sidecar):
    upstream.script = Script([b"data: x\n\n", 0.1] * 50)
    sc = await start_sidecar(make_config(upstream.url, limits={"max_duration": "500ms"}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    err = got.error()
    assert err["code"] == "upstream_timeout"
    assert "max_duration" in err["message"]
    assert 3 <= got.kinds().count("message") <= 7


@pytest.mark.parametrize(
    ("steps", "kind"),
    [
        ([b"data: ok\n\n", b"data: \xff\xfe\n\n"], "invalid_utf8"),
        ([b"data: ok\n\n", b"data: " + b"x" * 2000 + b"\n\n"], "event_too_large"),
        ([b"data: ok\n\n", b"event: " + b"y" * 3000], "line_too_long"),
        ([b"data: ok\n\n", b"data: cut"], "truncated_event"),
    ],
)
async def test_malformed_upstream_ends_with_protocol_error(upstream, start_sidecar, steps, kind):
    upstream.script = Script(steps)
    sc = await start_sidecar(
        make_config(upstream.url, limits={"max_event_bytes": 1000, "max_line_bytes": 2500})
    )
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds() == ["message", "error"]
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_protocol", True)
    metrics = await sc.metrics()
    assert (
        f'sse_sidecar_upstream_protocol_errors_total{{kind="{kind}",route="test"}} 1.0' in metrics
    )


async def test_error_before_any_event_is_not_partial(upstream, start_sidecar):
    upstream.script = Script([b": hello\n", b"data: \xc3\n\n"])
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds() == ["keepalive", "error"]
    assert got.error()["partial"] is False


async def test_client_disconnect_closes_upstream_within_a_second(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url))
    loop = asyncio.get_running_loop()
    async with sc.http.get(sc.url + "/s") as resp:
        assert await resp.content.readuntil(b"\n\n") == b"data: 1\n\n"
        resp.connection.transport.abort()  # type: ignore[union-attr]
        left = loop.time()
    record = upstream.requests[0]
    await asyncio.wait_for(record.finished.wait(), 1.0)
    assert record.client_gone_at is not None
    assert record.client_gone_at - left < 1.0
    await asyncio.sleep(0.05)
    metrics = await sc.metrics()
    assert 'sse_sidecar_streams_total{outcome="client_disconnected",route="test"} 1.0' in metrics
    assert 'sse_sidecar_active_streams{route="test"} 0.0' in metrics
    # The upstream was closed at once: the whole observation is in the first bucket.
    assert (
        'sse_sidecar_upstream_after_client_gone_seconds_bucket{le="0.01",route="test"} 1.0'
        in metrics
    )


async def test_150_concurrent_streams_all_get_their_first_event(upstream, start_sidecar):
    upstream.script = Script([b"data: first\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url))
    loop = asyncio.get_running_loop()

    # The test client needs no pool cap either, or it would be what queues.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def first_event() -> float:
        t0 = loop.time()
        async with http.get(sc.url + "/s") as resp:
            assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
            return loop.time() - t0

    async with http:
        latencies = await asyncio.wait_for(
            asyncio.gather(*(first_event() for _ in range(150))), 10.0
        )
    assert len(latencies) == 150
    assert max(latencies) < 3.0


async def test_newline_injection_never_reaches_the_wire(upstream, start_sidecar):
    upstream.script = lambda request: Script(
        [b"data: " + request.rel_url.raw_query_string.encode() + b"\n\n", DONE]
    )
    sc = await start_sidecar(make_config(upstream.url))
    evil = "%0D%0Aevent:%20done%0A%0Adata:%20x"
    got = await read_stream(sc.http, "GET", sc.url + f"/s/a%0Ab?x={evil}")
    assert got.kinds() == ["message", "done"]
    assert upstream.requests[0].path == "/a\nb"
    sc2 = await start_sidecar(make_config(f"http://127.0.0.1:{free_port()}"))
    got = await read_stream(sc2.http, "GET", sc2.url + f"/s/{evil}?{evil}")
    assert got.status == 502
    assert got.events == []
    assert b"\n" not in got.raw


async def test_whole_unchanged_chunks_are_forwarded_byte_for_byte(upstream, start_sidecar):
    # No space after the colon, an unknown field, a retry: all the same
    # meaning, and the fast path hands the upstream's bytes on as they are.
    chunk = b"data:a\nfoo: bar\nretry: 10\n\nid:7\ndata:b\n\n"
    upstream.script = Script([b"data: 0\n\n", 0.05, chunk, 0.05, DONE])
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.raw == b"data: 0\n\n" + chunk + DONE
    assert [e.data for e in got.events] == ["0", "a", "b", "[DONE]"]


async def test_bad_bytes_after_good_events_in_one_read_never_reach_the_client(
    upstream, start_sidecar
):
    upstream.script = Script([b"data: 0\n\n", 0.05, b"data: ok\n\ndata: \xff\n\n"])
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert b"\xff" not in got.raw
    assert got.kinds() == ["message", "message", "error"]
    assert got.error()["code"] == "upstream_protocol"


async def test_a_client_that_stops_reading_is_cut_off(upstream, start_sidecar):
    big = b"data: " + b"x" * 65536 + b"\n\n"
    upstream.script = Script([big] * 400 + [DONE])
    sc = await start_sidecar(
        make_config(upstream.url, limits={"write_timeout": "300ms", "max_event_bytes": "1MiB"})
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.port)
    writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # headers, then never read again
    try:
        for _ in range(100):
            metrics = await sc.metrics()
            if 'sse_sidecar_slow_client_disconnects_total{route="test"} 1.0' in metrics:
                break
            await asyncio.sleep(0.1)
        assert 'sse_sidecar_streams_total{outcome="slow_client",route="test"} 1.0' in metrics
        await asyncio.wait_for(upstream.requests[0].finished.wait(), 2.0)
    finally:
        writer.close()


async def test_global_stream_cap_and_method_answer_in_json(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url, methods=["GET"], top={"max_streams": 1}))
    async with sc.http.get(sc.url + "/s") as first:
        await first.content.readuntil(b"\n\n")
        async with sc.http.get(sc.url + "/s") as second:
            assert second.status == 503
            assert (await second.json())["error"]["code"] == "overloaded"
    async with sc.http.put(sc.url + "/s") as resp:  # DELETE is the stop request
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, DELETE"
    metrics = await sc.metrics()
    assert 'sse_sidecar_rejected_requests_total{reason="max_streams",route="test"} 1.0' in metrics
