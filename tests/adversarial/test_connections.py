"""Client connections: idle and trickling ones, too many, oversized and malformed heads."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.adversarial.conftest import get, hang, metric, raw_request
from tests.adversarial.test_paths_and_query import done
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial


def fast_limits(**limits):
    return make_config(
        "http://127.0.0.1:9", top={"limits": {"request_head_timeout": "500ms", **limits}}
    )


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    got = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            got += chunk
    return got


async def test_a_connection_that_sends_nothing_is_closed_at_the_head_timeout(start_sidecar):
    sc = await start_sidecar(fast_limits())
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.port)
    try:
        got = await closed_within(reader, 3)  # before: the 75 s keep-alive timeout
    finally:
        writer.close()
    assert got.startswith(b"HTTP/1.1 408")
    assert b"request_head_timeout" in got
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_refused_connections_total", reason="head_timeout") == 1


async def test_a_trickled_head_is_cut_at_the_head_timeout(start_sidecar):
    sc = await start_sidecar(fast_limits())
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /s HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    task = loop.create_task(trickle())
    try:
        got = await closed_within(reader, 3)
    finally:
        task.cancel()
        writer.close()
    assert got.startswith(b"HTTP/1.1 408")
    assert loop.time() - started < 2


async def test_the_head_timeout_spares_a_request_that_is_being_served(raw_upstream, start_sidecar):
    async def slow(reader, writer):
        await asyncio.sleep(1.0)  # twice the head timeout
        await done(reader, writer)

    raw_upstream.handler = slow
    config = make_config(raw_upstream.url, top={"limits": {"request_head_timeout": "500ms"}})
    sc = await start_sidecar(config)
    resp = await raw_request(sc.sidecar.port, get("/s"), timeout=5)
    assert resp.status == 200
    assert b"event: done" in resp.body


async def test_idle_connections_make_room_for_a_real_request(raw_upstream, start_sidecar):
    # Before: 1,100 empty connections at ulimit -n 1024 made a real request fail.
    raw_upstream.handler = done
    config = make_config(
        raw_upstream.url, top={"limits": {"max_connections": 20, "request_head_timeout": "30s"}}
    )
    sc = await start_sidecar(config)
    idle = [await asyncio.open_connection("127.0.0.1", sc.sidecar.port) for _ in range(30)]
    try:
        resp = await raw_request(sc.sidecar.port, get("/s"), timeout=3)
        assert resp.status == 200
        text = await sc.metrics()
        assert metric(text, "sse_sidecar_refused_connections_total", reason="evicted") >= 10
        assert metric(text, "sse_sidecar_open_connections") <= 21
    finally:
        for _, writer in idle:
            writer.close()


async def test_connections_past_the_cap_get_a_clear_503_when_all_are_busy(
    raw_upstream, start_sidecar
):
    raw_upstream.handler = hang  # every stream stays open, waiting on its upstream
    config = make_config(
        raw_upstream.url,
        top={"limits": {"max_connections": 5}},
        limits={"idle_timeout": "30s"},
        heartbeat={"interval": "0s"},
    )
    sc = await start_sidecar(config)
    busy = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.port)
        writer.write(get("/s"))
        busy.append((reader, writer))
    try:
        async with asyncio.timeout(5):
            while len(raw_upstream.heads) < 5:
                await asyncio.sleep(0.02)
        refused = await raw_request(sc.sidecar.port, get("/s"), timeout=3)
        assert refused.status == 503
        assert json.loads(refused.body)["error"]["code"] == "too_many_connections"
        text = await sc.metrics()
        assert metric(text, "sse_sidecar_refused_connections_total", reason="max_connections") == 1
        assert metric(text, "sse_sidecar_open_connections") == 5
    finally:
        for _, writer in busy:
            writer.close()
    async with asyncio.timeout(5):
        while (await sc.metrics()).count("sse_sidecar_open_connections 0.0") == 0:
            await asyncio.sleep(0.05)
    raw_upstream.handler = done
    resp = await raw_request(sc.sidecar.port, get("/s"), timeout=3)
    assert resp.status == 200  # the slots are free again


async def test_a_request_head_over_the_total_cap_is_431(raw_upstream, start_sidecar):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    # 10 headers of 4 KiB: each under aiohttp's per-line limit, 40 KiB together.
    headers = [f"X-Pad-{i}: {'p' * 4096}" for i in range(10)]
    resp = await raw_request(sc.sidecar.port, get("/s", *headers))
    assert resp.status == 431
    assert json.loads(resp.body)["error"]["code"] == "request_head_too_large"
    assert raw_upstream.heads == []
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_bad_requests_total", reason="head_too_large") == 1


async def test_too_many_request_headers_is_431(raw_upstream, start_sidecar):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, get("/s", *(f"X-{i}: v" for i in range(150))))
    assert resp.status == 431
    assert raw_upstream.heads == []


SMUGGLING = [
    # CL.TE and TE.CL: both framings at once
    b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # two different lengths
    b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
    b"GET /s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # an obfuscated Transfer-Encoding
    b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    b"0\r\n\r\nGET /s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\nGET /s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # a bare LF line ending and a space-folded header
    b"GET /s HTTP/1.1\nHost: x\n\n",
    b"GET /s HTTP/1.1\r\nHost: x\r\n X-Folded: y\r\n\r\n",
]


@pytest.mark.parametrize("data", SMUGGLING)
async def test_smuggling_forms_are_refused_and_nothing_is_smuggled(
    raw_upstream, start_sidecar, data
):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, data, timeout=3)
    assert resp.status == 400, resp.raw[:200]
    assert json.loads(resp.body)["error"]["code"] == "bad_request"
    assert not any(b"smuggled" in head for head in raw_upstream.heads)


async def test_malformed_requests_are_logged_as_rate_limited_json_lines(tmp_path):
    """A real process: what it writes to stdout and stderr for a burst of bad requests."""
    import sys

    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
        "logging: {format: json}\n"
        "routes: [{name: t, path: /s, upstream: 'http://127.0.0.1:9'}]\n"
    )

    def lower_fd_limit() -> None:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lower_fd_limit,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        lines: list[dict] = []
        async with asyncio.timeout(15):
            while not any(line.get("event") == "listening" for line in lines):
                lines.append(json.loads(await proc.stdout.readline()))
        (fd,) = [line for line in lines if line.get("event") == "fd_limit"]
        assert fd["soft"] == fd["hard"]  # raised from 256
        port = next(line["port"] for line in lines if line.get("event") == "listening")
        for _ in range(30):
            resp = await raw_request(port, b"GET /s HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            assert resp.status == 400
        await asyncio.sleep(1.1)  # the next second's first line reports what was held back
        await raw_request(port, b"\x16\x03\x01garbage\r\n\r\n")
        await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    text = out.decode()
    assert "Traceback" not in text
    assert "Traceback" not in err.decode()
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    bad = [r for r in records if r.get("event") == "bad_request"]
    suppressed = [r for r in records if r.get("event") == "bad_requests_suppressed"]
    assert suppressed
    # 5 a second at most; the rest counted in the next second's first line.
    assert 1 <= len(bad) <= 15
    assert len(bad) + sum(r["count"] for r in suppressed) >= 30


async def test_pipelined_requests_are_answered_in_order(raw_upstream, start_sidecar):
    # The heads a connection reads ahead wait in the handler's queue (HeadQueue).
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    first = b"GET /s?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    resp = await raw_request(sc.sidecar.port, first + first + get("/s?n=3"))
    assert resp.raw.count(b"HTTP/1.1 200") == 3
    assert len(raw_upstream.heads) == 3
