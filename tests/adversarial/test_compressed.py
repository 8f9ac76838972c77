"""Compressing upstreams: slow clients hold bounded memory and end as slow_client; bombs are cut."""

from __future__ import annotations

import asyncio
import socket
import zlib

import pytest

from tests.adversarial.conftest import PeakRss, get, metric, raw_request
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial

GZIP_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def gzip_events(decompressed: int) -> bytes:
    """A gzip member of small events, ~1000:1, ``decompressed`` bytes when inflated."""
    event = b"data: " + b"z" * 1000 + b"\n\n"
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = event * 1024
    out = [comp.compress(block) for _ in range(decompressed // len(block))]
    out.append(comp.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(out)


async def test_slow_clients_on_a_gzip_stream_hold_bounded_memory(raw_upstream, start_sidecar):
    clients = 6
    body = gzip_events(32 * 1024 * 1024)  # ~32 KiB on the wire, 32 MiB inflated

    async def gzip_stream(reader, writer):
        writer.write(GZIP_SSE + chunk(body))
        await writer.drain()
        await asyncio.sleep(3600)

    raw_upstream.handler = gzip_stream
    sc = await start_sidecar(
        make_config(
            raw_upstream.url,
            limits={"write_timeout": "1s", "idle_timeout": "2s", "max_pending_bytes": "256KiB"},
        )
    )
    socks = []
    async with PeakRss() as rss:
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sc.sidecar.port))
            await asyncio.get_running_loop().sock_sendall(sock, get("/s"))
            socks.append(sock)  # and never read
        async with asyncio.timeout(10):
            while True:
                text = await sc.metrics()
                ended = sum(
                    metric(text, "sse_sidecar_streams_total", outcome=o)
                    for o in ("slow_client", "upstream_timeout", "client_disconnected")
                )
                if ended >= clients:
                    break
                await asyncio.sleep(0.2)
    for sock in socks:
        sock.close()
    # Before: each client's decoder inflated the whole read into the pending
    # buffer (~32 MiB each), and most ended as upstream_timeout.
    assert rss.growth < 40 * 1024 * 1024, rss.growth
    assert metric(text, "sse_sidecar_streams_total", outcome="slow_client") == clients
    assert metric(text, "sse_sidecar_slow_client_disconnects_total", route="test") == clients


async def test_a_gzip_bomb_is_cut_at_the_line_limit(raw_upstream, start_sidecar):
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"a" * (1024 * 1024)
    bomb = comp.compress(b"data: ") + b"".join(comp.compress(zeros) for _ in range(256))
    bomb += comp.flush(zlib.Z_SYNC_FLUSH)  # 256 MiB of one line, ~256 KiB sent

    async def stream(reader, writer):
        writer.write(GZIP_SSE + chunk(bomb))
        await writer.drain()
        await asyncio.sleep(3600)

    raw_upstream.handler = stream
    sc = await start_sidecar(make_config(raw_upstream.url, limits={"max_line_bytes": "64KiB"}))
    async with PeakRss() as rss:
        resp = await raw_request(sc.sidecar.port, get("/s"), timeout=10)
    assert resp.status == 200
    assert b'"code":"upstream_protocol"' in resp.body
    assert rss.growth < 40 * 1024 * 1024
