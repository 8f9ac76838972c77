"""The HTTP upstream client against raw TCP servers on loopback that write scripted bytes.

The servers speak no HTTP themselves: every byte of each answer is in the
test, so framing, interim responses and broken endings are exactly what the
test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from multidict import CIMultiDict
from yarl import URL

from bench.procs import free_port
from sidecar.errors import (
    UpstreamBadHead,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamUnreachable,
)
from sidecar.upstream.connect import cancel_pending, open_stream, request_head
from sidecar.upstream.http import Upstream

# A step of a raw server: bytes to write, seconds to sleep, an Event to wait
# for (the test lets the server go on), or "hang" (wait for the client to close).
Step = bytes | float | asyncio.Event | str

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
CHUNKED = SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class RawServer:
    """Plays its steps to each connection, after reading the request; records the request."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.requests: list[bytes] = []
        #: What the client sent after its request, while the server hung.
        self.extra = b""
        self.client_closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/sse?x=1")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.requests.append(head + await reader.readexactly(length))
            for step in self.steps:
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, asyncio.Event):
                    await step.wait()
                elif step == "hang":
                    while data := await reader.read(65536):
                        self.extra += data
                    self.client_closed.set()
                elif step == "abort":
                    writer.transport.abort()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closed.set()
        finally:
            writer.close()


class Recorder:
    """A Sink that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.ended = asyncio.Event()

    def data(self, chunk: bytes) -> None:
        self.calls.append(("data", chunk))

    def eof(self) -> None:
        self.calls.append(("eof", None))
        self.ended.set()

    def failed(self, exc: UpstreamError) -> None:
        self.calls.append(("failed", exc))
        self.ended.set()

    @property
    def body(self) -> bytes:
        return b"".join(c for kind, c in self.calls if kind == "data" and isinstance(c, bytes))

    @property
    def ending(self) -> tuple[str, object]:
        """The first eof() or failed(); no bytes may follow it."""
        calls = [c for c in self.calls if c[0] != "data" or c[1]]  # data(b"") tells nothing
        ends = [i for i, c in enumerate(calls) if c[0] != "data"]
        assert ends, "the body has not ended"
        assert ends[-1] == len(calls) - 1, "bytes after the end"
        return calls[ends[0]]

    @property
    def endings(self) -> list[str]:
        return [kind for kind, _ in self.calls if kind != "data"]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Sequence[Step]], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(steps: Sequence[Step]) -> RawServer:
        server = RawServer(steps)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def opened() -> AsyncIterator[list[Upstream]]:
    """Upstreams to close after the test, whatever it did."""
    upstreams: list[Upstream] = []
    yield upstreams
    for upstream in upstreams:
        upstream.close()
    await asyncio.sleep(0)  # let the transports finish closing


async def connect(
    server: RawServer,
    opened: list[Upstream],
    method: str = "GET",
    body: bytes | None = None,
    headers: CIMultiDict[str] | None = None,
) -> Upstream:
    async with asyncio.timeout(2):
        upstream = await open_stream(method, server.url, headers or CIMultiDict(), body, 2.0)
    opened.append(upstream)
    return upstream


async def read_all(upstream: Upstream) -> list[bytes]:
    chunks = []
    async with asyncio.timeout(2):
        while piece := await upstream.read_chunk():
            chunks.append(piece)
    return chunks


async def read_until_error(upstream: Upstream) -> tuple[bytes, Exception | None]:
    """What read_chunk gave before it failed, and how it failed (None: a clean end)."""
    got = b""
    try:
        async with asyncio.timeout(2):
            while piece := await upstream.read_chunk():
                got += piece
    except UpstreamError as exc:
        return got, exc
    return got, None


# --- the head ------------------------------------------------------------------


async def test_the_server_receives_exactly_the_request_head_and_body(serve, opened):
    server = await serve([SSE_HEAD + b"Content-Length: 0\r\n\r\n", "hang"])
    headers = CIMultiDict([("Accept", "text/event-stream"), ("X-Name", "café"), ("X-A", "2")])
    body = b'{"prompt":"hi"}'
    upstream = await connect(server, opened, "POST", body, headers)
    upstream.close()
    await asyncio.wait_for(server.client_closed.wait(), 1)
    assert server.requests == [request_head("POST", server.url, headers, body) + body]
    assert server.extra == b""  # and nothing after it


async def test_status_reason_headers_and_content_type(serve, opened):
    server = await serve(
        [
            b"HTTP/1.1 201 Made It\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n"
            b"X-A: 1\r\nx-a: 2\r\nX-Name: caf\xc3\xa9\r\nX-Raw: \xe9\r\nContent-Length: 0\r\n\r\n"
        ]
    )
    upstream = await connect(server, opened)
    assert (upstream.status, upstream.reason) == (201, "Made It")
    assert upstream.content_type == "text/event-stream"
    assert upstream.headers.getall("X-A") == ["1", "2"]
    assert upstream.headers["X-Name"] == "café"
    assert upstream.headers["X-Raw"].encode("utf-8", "surrogateescape") == b"\xe9"


async def test_content_type_defaults_to_octet_stream(serve, opened):
    server = await serve([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    upstream = await connect(server, opened)
    assert upstream.content_type == "application/octet-stream"


@pytest.mark.parametrize("apart", [False, True], ids=["one-read", "separate-reads"])
async def test_interim_responses_are_skipped(serve, opened, apart):
    interim = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ]
    final = SSE_HEAD + b"Content-Length: 9\r\n\r\ndata: 1\n\n"
    steps: list[Step] = (
        [interim[0], 0.05, interim[1], 0.05, final] if apart else [b"".join([*interim, final])]
    )
    server = await serve(steps)
    async with asyncio.timeout(0.5):
        upstream = await open_stream("GET", server.url, CIMultiDict(), None, 1.0)
    opened.append(upstream)
    assert (upstream.status, upstream.reason) == (200, "OK")
    assert "Link" not in upstream.headers
    assert await read_all(upstream) == [b"data: 1\n\n"]


# --- bodies that end well --------------------------------------------------------


async def test_chunked_body(serve, opened):
    gate = asyncio.Event()
    server = await serve(
        [CHUNKED + chunk(b"data: 1\n\n"), gate, chunk(b"data: 2\n\n") + b"0\r\n\r\n", "hang"]
    )
    upstream = await connect(server, opened)
    assert await upstream.read_chunk() == b"data: 1\n\n"  # before the server goes on
    gate.set()
    assert await read_all(upstream) == [b"data: 2\n\n"]  # ends with the framing, not the socket


@pytest.mark.parametrize(
    ("ending", "last"),
    [(b"", None), (b"0\r\n\r\n", "eof"), (b"zz\r\n", "failed")],
    ids=["more-to-come", "end", "break"],
)
async def test_the_chunks_of_one_read_reach_a_sink_as_one_piece(serve, opened, ending, last):
    # A burst: the Sink checks and writes once per read, not once per chunk;
    # an end or a break in the same read comes after the bytes before it.
    gate = asyncio.Event()
    pieces = [b"data: %d\n\n" % n for n in range(50)]
    server = await serve([CHUNKED, gate, b"".join(chunk(p) for p in pieces) + ending, "hang"])
    upstream = await connect(server, opened)
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.sleep(0.05)
    gate.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sink.calls:
            break
    await asyncio.sleep(0.05)
    assert sink.calls[0] == ("data", b"".join(pieces))
    assert [kind for kind, _ in sink.calls[1:]] == ([last] if last else [])


async def test_content_length_body_ends_at_its_length(serve, opened):
    # What follows the body on the connection is no part of the answer.
    server = await serve([SSE_HEAD + b"Content-Length: 5\r\n\r\nhelloEXTRA BYTES", "hang"])
    upstream = await connect(server, opened)
    assert b"".join(await read_all(upstream)) == b"hello"


async def test_no_content_status_has_no_body(serve, opened):
    server = await serve([b"HTTP/1.1 204 No Content\r\n\r\n", "hang"])
    upstream = await connect(server, opened)
    assert await read_all(upstream) == []


async def test_body_without_length_ends_cleanly_with_the_connection(serve, opened):
    server = await serve([SSE_HEAD + b"\r\n" + b"data: 1\n\n", 0.05, b"data: 2\n\n"])
    upstream = await connect(server, opened)
    assert b"".join(await read_all(upstream)) == b"data: 1\n\ndata: 2\n\n"


async def test_body_without_length_ends_cleanly_for_a_sink(serve, opened):
    server = await serve([SSE_HEAD + b"\r\n", 0.05, b"data: 1\n\n"])
    upstream = await connect(server, opened)
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.wait_for(sink.ended.wait(), 2)
    assert sink.calls == [("data", b"data: 1\n\n"), ("eof", None)]


async def test_read_body_within_and_over_its_limit(serve, opened):
    answer = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 10\r\n\r\n0123456789"
    server = await serve([answer])
    upstream = await connect(server, opened)
    assert await upstream.read_body(10) == b"0123456789"
    upstream = await connect(server, opened)
    with pytest.raises(UpstreamError, match="over 9 bytes"):
        await upstream.read_body(9)


# --- what came before anyone read ----------------------------------------------


async def test_data_that_came_before_attach_is_delivered_first_in_order(serve, opened):
    gate = asyncio.Event()
    early = chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n")
    server = await serve([CHUNKED + early, gate, chunk(b"data: 3\n\n") + b"0\r\n\r\n"])
    upstream = await connect(server, opened)
    await asyncio.sleep(0.05)  # the body's first bytes are in, nobody reads them yet
    sink = Recorder()
    upstream.attach(sink)
    # Synchronously, inside attach():
    assert sink.calls == [("data", b"data: 1\n\n"), ("data", b"data: 2\n\n")]
    gate.set()
    await asyncio.wait_for(sink.ended.wait(), 2)
    assert sink.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert sink.ending == ("eof", None)


async def test_data_that_came_before_read_chunk_is_read_first(serve, opened):
    gate = asyncio.Event()
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), gate, chunk(b"data: 2\n\n"), "hang"])
    upstream = await connect(server, opened)
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.sleep(0.05)
    assert await upstream.read_chunk() == b"data: 1\n\ndata: 2\n\n"


async def test_a_body_that_ended_before_attach_is_delivered_then_ended(serve, opened):
    server = await serve([CHUNKED + chunk(b"data: 1\n\n") + b"0\r\n\r\n"])
    upstream = await connect(server, opened)
    await asyncio.sleep(0.05)
    sink = Recorder()
    upstream.attach(sink)
    assert sink.calls == [("data", b"data: 1\n\n"), ("eof", None)]


async def test_a_large_unread_body_stops_the_socket_and_loses_nothing(serve, opened):
    body = bytes(range(256)) * 4096  # 1 MiB, far over what is held unread
    head = SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
    server = await serve([head + body, "hang"])
    upstream = await connect(server, opened)
    await asyncio.sleep(0.2)
    assert upstream.transport is not None
    assert not upstream.transport.is_closing()
    assert not upstream.transport.is_reading()  # paused: the rest waits in the socket
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.wait_for(sink.ended.wait(), 2)
    assert sink.body == body
    assert sink.ending == ("eof", None)


async def test_pause_holds_the_body_until_resume(serve, opened):
    gate = asyncio.Event()
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), gate, chunk(b"data: 2\n\n"), "hang"])
    upstream = await connect(server, opened)
    sink = Recorder()
    upstream.attach(sink)
    upstream.pause()
    assert upstream.transport is not None
    assert not upstream.transport.is_reading()
    gate.set()
    await asyncio.sleep(0.1)
    assert sink.body == b"data: 1\n\n"
    upstream.resume()
    await asyncio.sleep(0.1)
    assert sink.body == b"data: 1\n\ndata: 2\n\n"


# --- content codings -------------------------------------------------------------


def compressed_pieces(texts: list[bytes], wbits: int) -> list[bytes]:
    """Each text compressed and flushed on its own, so it can be decoded as it comes."""
    comp = zlib.compressobj(wbits=wbits)
    pieces = [comp.compress(t) + comp.flush(zlib.Z_SYNC_FLUSH) for t in texts]
    pieces[-1] += comp.flush()
    return pieces


@pytest.mark.parametrize(
    ("coding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("GZip ", 31)]
)
async def test_compressed_stream_is_decoded_as_it_comes(serve, opened, coding, wbits):
    gate = asyncio.Event()
    first, second = compressed_pieces([b"data: 1\n\n", b"data: 2\n\n"], wbits)
    head = (
        SSE_HEAD
        + f"Content-Encoding: {coding}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    server = await serve([head + chunk(first), gate, chunk(second) + b"0\r\n\r\n"])
    upstream = await connect(server, opened)
    upstream.decode_content()
    assert await upstream.read_chunk() == b"data: 1\n\n"  # not held for the rest
    gate.set()
    assert b"".join(await read_all(upstream)) == b"data: 2\n\n"


async def test_compressed_stream_is_decoded_for_a_sink(serve, opened):
    pieces = compressed_pieces([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"], 31)
    server = await serve(
        [SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n", *(x for p in pieces for x in (p, 0.02))]
    )
    upstream = await connect(server, opened)
    upstream.decode_content()
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.wait_for(sink.ended.wait(), 2)
    assert sink.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert sink.ending == ("eof", None)


async def test_without_decode_content_the_body_stays_as_sent(serve, opened):
    body = zlib.compress(b'{"error":"x"}', wbits=31)
    head = b"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    server = await serve([head % len(body) + body])
    upstream = await connect(server, opened)
    assert await upstream.read_body(1000) == body


async def test_unsupported_content_encoding_is_refused(serve, opened):
    server = await serve([SSE_HEAD + b"Content-Encoding: br\r\nContent-Length: 0\r\n\r\n"])
    upstream = await connect(server, opened)
    with pytest.raises(UpstreamError, match="'br'"):
        upstream.decode_content()


async def test_identity_coding_is_left_alone(serve, opened):
    server = await serve([SSE_HEAD + b"Content-Encoding: identity\r\n\r\ndata: 1\n\n"])
    upstream = await connect(server, opened)
    upstream.decode_content()
    assert b"".join(await read_all(upstream)) == b"data: 1\n\n"


async def test_broken_gzip_is_a_disconnect_for_read_chunk(serve, opened):
    (good,) = compressed_pieces([b"data: 1\n\n"], 31)
    broken = good[:-8] + b"\xff" * 16  # a sync-flushed stream, then an invalid block
    server = await serve([SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n", broken, "hang"])
    upstream = await connect(server, opened)
    upstream.decode_content()
    with pytest.raises(UpstreamDisconnected, match=r"broken compressed body.*mid-stream$"):
        await read_all(upstream)
    await asyncio.wait_for(server.client_closed.wait(), 1)


@pytest.mark.parametrize(
    "early",
    [
        False,
        True,
    ],
    ids=["after-attach", "before-attach"],
)
async def test_broken_gzip_is_one_disconnect_for_a_sink(serve, opened, early):
    broken = b"\x1f\x8b" + b"\0" * 30  # a gzip header, then no valid deflate data
    head = SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n"
    server = await serve([head + broken, "hang"] if early else [head, 0.1, broken, "hang"])
    upstream = await connect(server, opened)
    upstream.decode_content()
    if early:
        await asyncio.sleep(0.05)
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.wait_for(sink.ended.wait(), 2)
    await asyncio.sleep(0.05)  # room for a late, second ending
    kind, exc = sink.ending
    assert kind == "failed"
    assert isinstance(exc, UpstreamDisconnected)
    assert sink.endings == ["failed"]  # once, never eof
    assert sink.body == b""
    await asyncio.wait_for(server.client_closed.wait(), 1)


async def test_gzip_body_cut_before_its_end_is_a_disconnect(serve, opened):
    (whole,) = compressed_pieces([b"data: 1\n\n"], 31)
    cut = whole[:-10]  # the sync-flushed event is all there; the stream's end is not
    head = SSE_HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(cut)
    server = await serve([head + cut])
    upstream = await connect(server, opened)
    upstream.decode_content()
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.wait_for(sink.ended.wait(), 2)
    assert sink.body == b"data: 1\n\n"
    assert sink.ending[0] == "failed"


# --- no answer: unreachable --------------------------------------------------------


async def test_connection_refused_is_unreachable():
    url = URL(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(UpstreamUnreachable, match="cannot connect"):
        await open_stream("GET", url, CIMultiDict(), None, 2.0)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
async def test_connect_timeout_is_unreachable():
    # A listener that never accepts, its queue full: Linux drops the next SYN.
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
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamUnreachable, match="timed out"):
                await open_stream("GET", URL(f"http://127.0.0.1:{port}/"), CIMultiDict(), None, 0.2)
            assert loop.time() - started < 1.0
        finally:
            for filler in fillers:
                filler.close()


async def test_a_url_that_is_not_http_is_unreachable():
    with pytest.raises(UpstreamUnreachable, match="not an http"):
        await open_stream("GET", URL("ws://127.0.0.1:1/"), CIMultiDict(), None, 2.0)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
    ],
)
async def test_garbage_instead_of_a_response_is_a_protocol_error(serve, answer):
    # A connection that answered is no "unreachable" upstream: nginx says 502 too.
    server = await serve([answer, "hang"])
    with pytest.raises(UpstreamBadHead, match="invalid response head"):
        async with asyncio.timeout(2):  # refused at once, not when the server closes
            await open_stream("GET", server.url, CIMultiDict(), None, 2.0)
    await asyncio.wait_for(server.client_closed.wait(), 1)  # and the connection is dropped


async def test_closed_before_any_byte_is_unreachable(serve):
    server = await serve([])
    with pytest.raises(UpstreamUnreachable, match="closed the connection"):
        async with asyncio.timeout(2):
            await open_stream("GET", server.url, CIMultiDict(), None, 2.0)


@pytest.mark.parametrize(
    "steps",
    [[b"HTTP/1.1 200 OK\r\nContent-Ty"], [b"HTTP/1.1 200 OK\r\n", "abort"]],
    ids=["half-a-head", "reset"],
)
async def test_closed_inside_the_head_is_a_protocol_error(serve, steps):
    server = await serve(steps)
    with pytest.raises(UpstreamBadHead, match="closed the connection inside its head"):
        async with asyncio.timeout(2):
            await open_stream("GET", server.url, CIMultiDict(), None, 2.0)


# --- a body that breaks: disconnected -------------------------------------------------


async def test_closed_mid_chunk_is_a_disconnect_for_read_chunk(serve, opened):
    gate = asyncio.Event()
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), gate, b"20\r\ndata: par"])
    upstream = await connect(server, opened)
    assert await upstream.read_chunk() == b"data: 1\n\n"
    gate.set()
    with pytest.raises(UpstreamDisconnected, match=r"closed the connection mid-stream$"):
        await read_all(upstream)


async def test_bytes_before_a_break_are_read_before_the_error(serve, opened):
    server = await serve([CHUNKED + chunk(b"data: 1\n\n") + b"20\r\ndata: par"])
    upstream = await connect(server, opened)
    await asyncio.sleep(0.05)  # the body and the close are in before anyone reads
    got, error = await read_until_error(upstream)
    assert isinstance(error, UpstreamDisconnected)
    assert got == b"data: 1\n\ndata: par"


@pytest.mark.parametrize(
    ("ending", "body"),
    [
        (b"20\r\ndata: par", b"data: 1\n\ndata: par"),
        (b"9\r\ndata: 2\n\n\r\n", b"data: 1\n\ndata: 2\n\n"),
        ("abort", b"data: 1\n\n"),
    ],
    ids=["mid-chunk", "between-chunks", "reset"],
)
async def test_a_broken_body_is_a_disconnect_for_a_sink(serve, opened, ending, body):
    gate = asyncio.Event()
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), gate, ending])
    upstream = await connect(server, opened)
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(sink.ended.wait(), 2)
    kind, exc = sink.ending
    assert kind == "failed"
    assert isinstance(exc, UpstreamDisconnected)
    assert str(exc).endswith("mid-stream")
    assert sink.body == body  # everything that came, then the error
    assert sink.endings == ["failed"]


# --- closing -----------------------------------------------------------------------


async def test_close_drops_the_connection_at_once(serve, opened):
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), "hang"])
    upstream = await connect(server, opened)
    upstream.close()
    await asyncio.wait_for(server.client_closed.wait(), 1)


async def test_detach_stops_the_callbacks(serve, opened):
    gate = asyncio.Event()
    server = await serve([CHUNKED + chunk(b"data: 1\n\n"), gate, chunk(b"data: 2\n\n"), "hang"])
    upstream = await connect(server, opened)
    sink = Recorder()
    upstream.attach(sink)
    await asyncio.sleep(0.05)
    upstream.detach()
    gate.set()
    await asyncio.sleep(0.1)
    assert sink.calls == [("data", b"data: 1\n\n")]


async def test_cancel_pending_closes_a_request_still_waiting_for_its_head(serve):
    server = await serve(["hang"])
    task = asyncio.ensure_future(open_stream("GET", server.url, CIMultiDict(), None, 2.0))
    await asyncio.sleep(0.05)
    cancel_pending(task)
    await asyncio.wait_for(server.client_closed.wait(), 1)
    assert task.cancelled()


async def test_cancel_pending_closes_an_answered_request(serve):
    server = await serve([CHUNKED, "hang"])
    task = asyncio.ensure_future(open_stream("GET", server.url, CIMultiDict(), None, 2.0))
    await asyncio.wait_for(asyncio.shield(task), 2)
    cancel_pending(task)
    await asyncio.wait_for(server.client_closed.wait(), 1)


async def test_cancel_pending_ignores_no_task_and_a_failed_one():
    cancel_pending(None)
    url = URL(f"http://127.0.0.1:{free_port()}/")
    task = asyncio.ensure_future(open_stream("GET", url, CIMultiDict(), None, 2.0))
    await asyncio.wait({task})
    cancel_pending(task)  # does not raise the task's error
    assert isinstance(task.exception(), UpstreamUnreachable)


# --- compressed bodies are decoded only as fast as they are read ---------------------


def _big_gzip(total: int) -> tuple[bytes, bytes]:
    event = b"data: " + b"q" * 500 + b"\n\n"
    plain = event * (total // len(event))
    return plain, zlib.compress(plain, wbits=31)


@pytest.mark.parametrize("ending", ["length", "close"])
async def test_a_slow_reader_gets_every_decoded_byte_and_the_end(serve, opened, ending):
    # Highly compressible: a few KiB on the wire are MiBs once decoded. The
    # reader is behind most of the time; what waits is kept compressed, and
    # the end comes after the last decoded byte, whether the body is framed
    # or ends with the connection.
    plain, packed = _big_gzip(4 * 1024 * 1024)
    framing = b"Content-Length: %d\r\n" % len(packed) if ending == "length" else b""
    server = await serve([SSE_HEAD + b"Content-Encoding: gzip\r\n" + framing + b"\r\n" + packed])
    upstream = await connect(server, opened)
    upstream.decode_content()
    got = []
    async with asyncio.timeout(10):
        while piece := await upstream.read_chunk():
            assert len(piece) <= 64 * 1024
            got.append(piece)
            if len(got) % 8 == 0:
                await asyncio.sleep(0.001)  # behind, now and then
    assert b"".join(got) == plain


async def test_a_paused_sink_stops_the_decoding(serve, opened):
    plain, packed = _big_gzip(8 * 1024 * 1024)  # ~25 KiB on the wire
    server = await serve([SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n" + packed, "hang"])
    upstream = await connect(server, opened)
    upstream.decode_content()

    class Pausing(Recorder):
        def data(self, chunk: bytes) -> None:
            super().data(chunk)
            upstream.pause()  # as the splice does when its client is behind

    sink = Pausing()
    upstream.attach(sink)
    await asyncio.sleep(0.2)
    assert len(sink.body) <= 2 * 64 * 1024  # a piece or two, not 8 MiB
    while len(sink.body) < len(plain):
        upstream.resume()
        await asyncio.sleep(0)
    assert sink.body == plain
