"""Hostile upstream heads: endless, huge, too many headers, 1xx floods, control characters.

Before the stream is committed each is a 502 with a JSON error (as nginx's
"upstream sent too big header"); after it, ``error/upstream_protocol``. And
memory stays bounded while the upstream keeps sending.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.adversarial.conftest import PeakRss, RawUpstream, get, hang, metric, raw_request
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial

OK_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def endless(prefix: bytes, line: bytes, total: int):
    """A handler that sends ``prefix`` then ``line`` over and over (``total`` bytes), then hangs."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        batch = line * (65536 // len(line) + 1)
        sent = 0
        while sent < total:
            writer.write(batch)
            await writer.drain()
            sent += len(batch)
        await asyncio.sleep(3600)

    return handler


def answer(data: bytes):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(3600)

    return handler


async def bad_gateway(sc, path: str = "/s") -> dict:
    resp = await raw_request(sc.sidecar.port, get(path), timeout=5)
    assert resp.status == 502, resp.raw[:300]
    body = json.loads(resp.body)
    assert body["error"]["code"] == "upstream_protocol"
    return body


@pytest.mark.parametrize(
    ("prefix", "line"),
    [
        (OK_SSE, b"X-Filler: 0123456789abcdef\r\n"),  # endless header lines
        (b"HTTP/1.1 103 Early Hints\r\n", b"Link: </a.css>; rel=preload\r\n"),  # on a 1xx
        (OK_SSE + b"X-Big: ", b"a" * 1024),  # one endless header value
    ],
    ids=["endless-headers", "endless-1xx", "endless-value"],
)
async def test_endless_upstream_head_is_502_with_bounded_memory(
    raw_upstream: RawUpstream, start_sidecar, prefix, line
):
    # 48 MiB offered; before the limit the sidecar took all of it and never answered.
    raw_upstream.handler = endless(prefix, line, 48 * 1024 * 1024)
    sc = await start_sidecar(make_config(raw_upstream.url))
    async with PeakRss() as rss:
        body = await bad_gateway(sc)
    assert "too big header" in body["error"]["message"] or "too many" in body["error"]["message"]
    assert rss.growth < 20 * 1024 * 1024
    text = await sc.metrics()
    kinds = ("head_too_large", "too_many_headers")
    assert sum(metric(text, "sse_sidecar_upstream_protocol_errors_total", kind=k) for k in kinds)


async def test_many_small_headers_are_not_copied_to_the_client(raw_upstream, start_sidecar):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(200_000))
    raw_upstream.handler = answer(OK_SSE + headers + b"\r\ndata: x\n\n")
    sc = await start_sidecar(make_config(raw_upstream.url))
    body = await bad_gateway(sc)
    assert "too" in body["error"]["message"]


async def test_header_count_limit_alone(raw_upstream, start_sidecar):
    # 101 short headers: under the byte limit, over the count.
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    raw_upstream.handler = answer(OK_SSE + headers + b"\r\ndata: x\n\n")
    sc = await start_sidecar(make_config(raw_upstream.url))
    body = await bad_gateway(sc)
    assert "too many headers" in body["error"]["message"]
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_upstream_protocol_errors_total", kind="too_many_headers") == 1


async def test_a_5mb_header_value_is_502_not_a_bare_status_line(raw_upstream, start_sidecar):
    raw_upstream.handler = answer(OK_SSE + b"X-Big: " + b"v" * (5 * 1024 * 1024) + b"\r\n\r\n")
    sc = await start_sidecar(make_config(raw_upstream.url))
    await bad_gateway(sc)


async def test_too_big_head_after_commit_is_a_terminal_protocol_error(raw_upstream, start_sidecar):
    async def late(reader, writer):
        await asyncio.sleep(0.5)  # past commit_after: the client has its 200 already
        writer.write(OK_SSE + b"X-Big: " + b"v" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    raw_upstream.handler = late
    sc = await start_sidecar(make_config(raw_upstream.url, stream={"commit_after": "100ms"}))
    resp = await raw_request(sc.sidecar.port, get("/s"), timeout=5)
    assert resp.status == 200
    assert resp.body.count(b"event: error") == 1
    assert b'"code":"upstream_protocol"' in resp.body


async def test_interim_flood_is_a_protocol_error_at_once(raw_upstream, start_sidecar):
    # Small 1xx heads, one after another: before, a core spun until idle_timeout.
    raw_upstream.handler = endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n", 4 * 1024 * 1024)
    sc = await start_sidecar(make_config(raw_upstream.url, limits={"idle_timeout": "30s"}))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bad_gateway(sc)
    assert loop.time() - started < 2
    text = await sc.metrics()
    kinds = ("too_many_interim", "head_too_large")
    assert sum(metric(text, "sse_sidecar_upstream_protocol_errors_total", kind=k) for k in kinds)


async def test_a_few_interim_responses_are_fine(raw_upstream, start_sidecar):
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" * 3
    raw_upstream.handler = answer(hints + OK_SSE + b"\r\nevent: done\ndata: ok\n\n")
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, get("/s"), timeout=5, until=b"data: ok")
    assert resp.status == 200


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/event-stream\r\n\r\n",
        b"HTTP/1.1 500 Bad\x1bThing\r\nContent-Type: application/json\r\n\r\n",
    ],
    ids=["stream", "passthrough"],
)
async def test_control_character_in_the_reason_is_502(raw_upstream, start_sidecar, head):
    raw_upstream.handler = answer(head + b"data: x\n\n")
    sc = await start_sidecar(make_config(raw_upstream.url))
    await bad_gateway(sc)


@pytest.mark.parametrize(
    "head",
    [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n"],
)
async def test_invalid_head_is_protocol_not_unreachable(raw_upstream, start_sidecar, head):
    raw_upstream.handler = answer(head)
    sc = await start_sidecar(make_config(raw_upstream.url))
    await bad_gateway(sc)
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_streams_total", outcome="upstream_protocol") == 1
    assert metric(text, "sse_sidecar_streams_total", outcome="upstream_unreachable") == 0


async def test_a_silent_upstream_still_commits_and_times_out(raw_upstream, start_sidecar):
    # The head limits do not touch an upstream that merely takes its time.
    raw_upstream.handler = hang
    sc = await start_sidecar(
        make_config(
            raw_upstream.url, stream={"commit_after": "100ms"}, limits={"idle_timeout": "300ms"}
        )
    )
    resp = await raw_request(sc.sidecar.port, get("/s"), timeout=5)
    assert resp.status == 200
    assert b'"code":"upstream_timeout"' in resp.body
