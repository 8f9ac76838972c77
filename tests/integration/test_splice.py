"""The splice (sidecar/stream/splice.py) end to end: real upstream and sidecar, raw clients.

Routes here do not resume, so every committed HTTP stream runs on the
splice's callback path. Raw sockets stand in for clients whose reading pace
the test must control; their bytes are de-chunked here, strictly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import zlib

from tests.conftest import Running, Script, make_config
from tests.integration.streams import read_stream

DONE = b"event: done\ndata: [DONE]\n\n"
KEEPALIVE = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


def error_event(code: str, message: str, *, partial: bool) -> bytes:
    """The terminal error event as DESIGN.md gives it, byte for byte."""
    payload = {"type": "error", "code": code, "message": message, "partial": partial}
    return b"event: error\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """Split an HTTP/1.1 response into head and de-chunked body; True if the body ended."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, "no complete response head"
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", rest[:100]
            return head, bytes(body), True
        if len(rest) < size + 2:
            break
        assert rest[size : size + 2] == b"\r\n", "chunk framing broken"
        body += rest[:size]
        rest = rest[size + 2 :]
    return head, bytes(body), False


class RawClient:
    """A client on a plain socket: it reads only when the test says so."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def get(cls, port: int, path: str = "/s", rcvbuf: int = 4096) -> RawClient:
        sock = socket.socket()
        # Set before connecting, so the window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, ("127.0.0.1", port))
        await client.loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        while b"\r\n\r\n" not in client.raw:
            await client.recv(1)  # a byte at a time: no more than the head is taken
        return client

    async def recv(self, size: int) -> bytes:
        data = await self.loop.sock_recv(self.sock, size)
        self.raw += data
        return data

    async def read_to_end(self, pause: float = 0.0, size: int = 65536) -> bytes:
        """Read until the chunked body ends or the sidecar closes; the de-chunked body."""
        # The last chunk's end is enough to stop on; the framing is checked after.
        while not self.raw.endswith(b"\r\n0\r\n\r\n"):
            try:
                if not await self.recv(size):
                    break  # the sidecar closed the connection
            except ConnectionResetError:
                break
            if pause:
                await asyncio.sleep(pause)
        return dechunk(bytes(self.raw))[1]

    def close(self) -> None:
        self.sock.close()


async def wait_for_metric(sc: Running, line: str, limit: float = 5.0) -> str:
    async with asyncio.timeout(limit):
        while line not in (metrics := await sc.metrics()):
            await asyncio.sleep(0.05)
    return metrics


# --- (a) a client that stops reading --------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off_and_the_upstream_closed(
    upstream, start_sidecar
):
    big = b"data: " + b"x" * 65530 + b"\n\n"
    upstream.script = Script([big] * 256 + [DONE])  # 16 MiB, more than any socket buffers
    sc = await start_sidecar(make_config(upstream.url, limits={"write_timeout": "500ms"}))
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = await RawClient.get(sc.sidecar.port)  # then never reads
    try:
        metrics = await wait_for_metric(
            sc, 'sse_sidecar_streams_total{outcome="slow_client",route="test"} 1.0'
        )
        assert 'sse_sidecar_slow_client_disconnects_total{route="test"} 1.0' in metrics
        assert 'sse_sidecar_active_streams{route="test"} 0.0' in metrics
        assert 0.5 <= loop.time() - started < 3.0  # one write_timeout after it fell behind
        record = upstream.requests[0]
        await asyncio.wait_for(record.finished.wait(), 1.0)
        # The upstream was still blocked writing when the sidecar dropped it: the
        # sidecar stopped reading it instead of holding its body in memory.
        assert record.client_gone_at is not None
        assert record.client_gone_at - started < 3.0
    finally:
        client.close()


async def test_a_client_cut_off_as_slow_is_disconnected(upstream, start_sidecar):
    big = b"data: " + b"x" * 65530 + b"\n\n"
    upstream.script = Script([big] * 256 + [DONE])
    sc = await start_sidecar(make_config(upstream.url, limits={"write_timeout": "300ms"}))
    client = await RawClient.get(sc.sidecar.port)
    try:
        await wait_for_metric(
            sc, 'sse_sidecar_streams_total{outcome="slow_client",route="test"} 1.0'
        )
        # Cut off: the connection is closed, not left to end cleanly once the
        # client reads again (that would look like a complete answer).
        async with asyncio.timeout(2.0):
            body = await client.read_to_end()
        assert not dechunk(bytes(client.raw))[2], "a cut-off stream ended like a whole one"
        assert body.count(b"\n\n") < 256
    finally:
        client.close()


# --- (b) a client that reads slowly but keeps up ---------------------------------------


def numbered_events(count: int, size: int) -> bytes:
    """Events in the encoder's own form, so decoded or passed raw they are the same bytes."""
    return b"".join(
        b"event: tok\nid: %d\ndata: %06d %s\n\n" % (i, i, b"y" * size) for i in range(count)
    )


async def test_a_slow_client_that_keeps_up_gets_every_event_in_order(upstream, start_sidecar):
    stream = numbered_events(3000, 4000)  # 12 MB: far more than the socket buffers hold
    # Writes cut at odd places, so events straddle reads (decoder and raw path both run).
    pieces = [stream[i : i + 100_003] for i in range(0, len(stream), 100_003)]
    upstream.script = Script([*pieces, DONE])
    sc = await start_sidecar(make_config(upstream.url, limits={"write_timeout": "2s"}))
    client = await RawClient.get(sc.sidecar.port, rcvbuf=65536)
    try:
        async with asyncio.timeout(10):
            body = await client.read_to_end(
                pause=0.003
            )  # a pause per read: slower than the upstream
        done_at = asyncio.get_running_loop().time()
    finally:
        client.close()
    # The client was the bottleneck: the upstream had sent all long before it read all.
    ended_at = upstream.requests[0].ended_at
    assert ended_at is not None
    assert ended_at < done_at - 0.1
    assert body == stream + DONE
    assert body.count(b"event: done") == 1
    assert b"event: error" not in body
    await wait_for_metric(sc, 'sse_sidecar_streams_total{outcome="completed",route="test"} 1.0')


# --- (c) heartbeats ------------------------------------------------------------------------


async def test_heartbeats_fill_silence_between_events_never_inside_one(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", b"event: tok\ndata: hal", 0.55, b"f\n\n", DONE])
    sc = await start_sidecar(make_config(upstream.url, heartbeat={"interval": "100ms"}))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    beats = got.raw.count(KEEPALIVE)
    assert 3 <= beats <= 6
    # Every heartbeat lies between the two events: none inside the split one.
    assert got.raw == b"data: 1\n\n" + KEEPALIVE * beats + b"event: tok\ndata: half\n\n" + DONE
    gaps = [b - a for a, b in zip(got.times, got.times[1:], strict=False)]
    assert max(gaps) < 0.3  # the timer kept writing through the whole silence
    metrics = await sc.metrics()
    assert f'sse_sidecar_events_total{{kind="heartbeat",route="test"}} {beats}.0' in metrics


# --- (d) limits ----------------------------------------------------------------------------


async def test_idle_timeout_ends_a_splice_stream_with_its_error_event(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", b"data: half", "hang"])
    sc = await start_sidecar(
        make_config(upstream.url, limits={"idle_timeout": "300ms"}, heartbeat={"interval": "100ms"})
    )
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    beats = got.raw.count(KEEPALIVE)
    assert 1 <= beats <= 3  # heartbeats are no upstream bytes: they do not hold it open
    message = "no bytes from upstream for limits.idle_timeout (0.3s)"
    assert got.raw == (
        b"data: 1\n\n" + KEEPALIVE * beats + error_event("upstream_timeout", message, partial=True)
    )
    assert 0.25 <= got.times[-1] - got.times[0] < 0.8
    record = upstream.requests[0]
    await asyncio.wait_for(record.finished.wait(), 1.0)
    assert record.client_gone_at is not None  # the sidecar closed the upstream
    metrics = await sc.metrics()
    assert 'sse_sidecar_streams_total{outcome="upstream_timeout",route="test"} 1.0' in metrics


async def test_max_duration_ends_a_busy_splice_stream_with_its_error_event(upstream, start_sidecar):
    upstream.script = Script([b"data: x\n\n", 0.1] * 50)
    sc = await start_sidecar(
        make_config(upstream.url, limits={"max_duration": "500ms", "idle_timeout": "300ms"})
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert 0.45 <= loop.time() - started < 1.0
    events = got.raw.count(b"data: x\n\n")
    assert 3 <= events <= 7  # events kept coming, so the idle limit never applied
    message = "stream reached limits.max_duration (0.5s)"
    assert got.raw == b"data: x\n\n" * events + error_event(
        "upstream_timeout", message, partial=True
    )
    await asyncio.wait_for(upstream.requests[0].finished.wait(), 1.0)


# --- (e) raw and decoded parts of one read ------------------------------------------------


async def test_raw_and_decoded_parts_of_reads_go_out_in_order(upstream, start_sidecar):
    upstream.script = Script(
        [
            b"data: 0\n\ndata: fir",
            0.05,
            # The end of an event, two clean ones (passed raw: no space after
            # the colon, an unknown field), the start of another.
            b"st\n\ndata:a\nfoo: bar\n\nid:7\ndata:b\n\nevent: x\ndata: pa",
            0.05,
            # The end of that event, then a comment and CRLF: decoded.
            b"rt\n\n: note\r\ndata: c\r\n\r\ndata:d\n\n",
            0.05,
            b"data:e\n\ndata: y\r",  # a CR at the end of a read ...
            0.05,
            b"\n\r\ndata:z\n\n",  # ... whose LF starts the next
            0.05,
            DONE,
        ]
    )
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert [e.data for e in got.events if e.event != "keepalive"] == [
        "0", "first", "a", "b", "part", "c", "d", "e", "y", "z", "[DONE]"
    ]  # fmt: skip
    assert got.raw == (
        b"data: 0\n\ndata: first\n\n"
        + b"data:a\nfoo: bar\n\nid:7\ndata:b\n\n"
        + b"event: x\ndata: part\n\n"
        + KEEPALIVE
        + b"data: c\n\ndata: d\n\n"
        + b"data:e\n\n"
        + b"data: y\n\ndata: z\n\n"
        + DONE
    )


async def test_a_long_read_ending_with_the_terminal_event_sends_the_rest_as_it_came(
    upstream, start_sidecar
):
    # A burst's last read: the terminal event keeps it off the raw path, but
    # only that event needs the decoder; the events before keep their spelling.
    events = b"".join(b"data:%d\n\n" % n for n in range(1000))
    upstream.script = Script([b"data: 0\n\n", 0.05, events + DONE])
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.raw == b"data: 0\n\n" + events + DONE
    # ... and a long read refused for a comment in its middle is decoded whole.
    upstream.script = Script([b"data: 0\n\n", 0.05, events + b": note\n\n" + events + DONE])
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    respelled = events.replace(b"data:", b"data: ")
    assert got.raw == b"data: 0\n\n" + respelled + KEEPALIVE + respelled + DONE


# --- (f) a compressed upstream ---------------------------------------------------------------


def gzip_pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` gzipped, flushed at each cut, so each piece decodes as it comes."""
    comp = zlib.compressobj(wbits=31)
    bounds = [0, *cuts, len(stream)]
    pieces = [
        comp.compress(stream[a:b]) + comp.flush(zlib.Z_SYNC_FLUSH)
        for a, b in itertools.pairwise(bounds)
    ]
    pieces[-1] += comp.flush()
    return pieces


async def test_gzip_from_the_upstream_is_decoded(upstream, start_sidecar):
    stream = b"data: 1\n\nevent: tok\ndata: two\n\n" + b"data: 3\n\n" + DONE
    first, second, third = gzip_pieces(stream, [9, 40])
    # The compressed pieces are cut again, off their flush points.
    upstream.script = Script(
        [first, 0.3, second[:5], second[5:] + third[:3], third[3:]],
        headers={"Content-Encoding": "gzip"},
    )
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert upstream.requests[0].headers["Accept-Encoding"] == "identity"
    assert "Content-Encoding" not in got.headers
    assert got.raw == stream
    assert got.times[1] - got.times[0] >= 0.25  # the first event was not held for the rest


async def test_broken_gzip_from_the_upstream_is_a_disconnect(upstream, start_sidecar):
    (good,) = gzip_pieces(b"data: 1\n\n", [])
    upstream.script = Script(
        [good[:-8], 0.05, b"\xff" * 16, "hang"], headers={"Content-Encoding": "gzip"}
    )
    sc = await start_sidecar(make_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert got.kinds() == ["message", "error"]
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_disconnected", True)
    assert "compressed" in err["message"]


# --- more of the splice's edges -------------------------------------------------------------


async def test_an_upstream_break_behind_a_slow_client_comes_after_every_event_read(
    upstream, start_sidecar
):
    stream = numbered_events(1500, 4000)  # 6 MB: the client falls behind, bytes are held
    pieces = [stream[i : i + 65_537] for i in range(0, len(stream), 65_537)]
    upstream.script = Script([*pieces, "abort"])
    sc = await start_sidecar(make_config(upstream.url, limits={"write_timeout": "2s"}))
    client = await RawClient.get(sc.sidecar.port, rcvbuf=65536)
    try:
        async with asyncio.timeout(10):
            body = await client.read_to_end(pause=0.003)
    finally:
        client.close()
    events, sep, error = body.rpartition(b"event: tok")
    last_event, _, error = error.partition(b"\n\n")
    forwarded = events + sep + last_event + b"\n\n"
    assert stream.startswith(forwarded)  # whole events, in order, none lost or doubled
    # The upstream ends with a FIN after its data; only what its own buffer
    # still held when it aborted (under 64 KiB) may be missing.
    assert forwarded.count(b"event: tok") >= 1400
    assert error.startswith(b"event: error\n")
    assert error.endswith(b"\n\n")
    assert error.count(b"\n\n") == 1  # exactly one terminal event, the last thing sent
    payload = json.loads(error.split(b"data: ", 1)[1])
    assert (payload["code"], payload["partial"]) == ("upstream_disconnected", True)


async def test_an_http10_client_gets_the_stream_unframed(upstream, start_sidecar):
    stream = b"data: 1\n\n" + numbered_events(50, 100)
    upstream.script = Script([stream[:777], 0.05, stream[777:], DONE])
    sc = await start_sidecar(make_config(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.port)
    try:
        writer.write(b"GET /s HTTP/1.0\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read()  # HTTP/1.0: the stream ends with the connection
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == stream + DONE


async def test_passed_comments_are_not_counted_as_events(upstream, start_sidecar):
    upstream.script = Script([b": a\n\n", 0.05, b": b\n\n", 0.05])
    sc = await start_sidecar(make_config(upstream.url, comments="pass"))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert [e.event for e in got.events] == ["end"]
    assert got.data("end") == [{"type": "end", "reason": "upstream_closed", "partial": False}]
    metrics = await sc.metrics()
    assert 'sse_sidecar_events_total{kind="forwarded",route="test"} 0.0' in metrics
    assert 'sse_sidecar_events_total{kind="comment_passed",route="test"} 2.0' in metrics
