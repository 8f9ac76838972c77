"""HTTP upstreams: one connection per stream, its response parsed by llhttp (httptools).

Strategy: the stream's hot path (sidecar/stream/splice.py) takes every read of the
upstream body in this protocol's callback and writes the client's bytes in the
same call. aiohttp's client would put a ``StreamReader``, a future and a task
wake-up between each read and its write, and keep ~9 KB of client objects per
open stream; here the request is a few header lines we write ourselves
(sidecar/upstream/connect.py) and httptools (llhttp, the parser inside
aiohttp and Node) does the parsing and the chunked framing. Connections are
not pooled: a stream holds its connection for its whole life, and a pool
would only help the rare short answer.

The body goes one of three ways, chosen once the head is in:
:meth:`Upstream.attach` (a :class:`Sink` called synchronously per read),
:meth:`Upstream.read_chunk` (an ``asyncio.StreamReader``, with its flow
control, for the paths that await), or :meth:`Upstream.read_body` (the whole,
raw body of an answer passed through). Only our own errors leave this module
(:mod:`sidecar.errors`).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.errors import (
    UpstreamBadHead,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamUnreachable,
)
from sidecar.upstream.head import HeadLimits, HeadReader

#: Body bytes held before anyone reads them; past this the socket stops reading.
_HOLD = 64 * 1024

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Sink(Protocol):
    """Where :meth:`Upstream.attach` delivers the body, in the protocol's callbacks."""

    def data(self, chunk: bytes) -> None: ...

    def eof(self) -> None: ...

    def failed(self, exc: UpstreamError) -> None: ...


class Upstream(asyncio.Protocol):
    """One upstream connection and its response (the head, then the body)."""

    __slots__ = (
        "_decoder", "_early", "_early_size", "_end", "_framed", "_head", "_interim", "_notified",
        "_pieces", "_reader", "_sink", "_stash", "head", "headers", "loop", "parser", "reason",
        "status", "transport",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: HeadLimits | None = None) -> None:
        self.loop = loop
        #: Until the answer's head is complete (then dropped: a stream lives long).
        self._head: HeadReader | None = HeadReader(limits or HeadLimits())
        #: Compressed bytes not yet decoded: decoding waits while the reader is behind.
        self._stash = b""
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        #: Resolved when the status line and headers are in.
        self.head: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        #: False when the body ends only with the connection (no length, not chunked).
        self._framed = True
        self._decoder: zlib._Decompress | None = None
        self._sink: Sink | None = None
        #: The body pieces of the read being parsed, for the Sink (one call per read).
        self._pieces: list[bytes] = []
        self._reader: asyncio.StreamReader | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        #: None while the body runs; then True (complete) or the error that ended it.
        self._end: bool | UpstreamError | None = None
        self._notified = False
        #: Between the head of a 1xx and its (empty) end.
        self._interim = False

    # --- the head --------------------------------------------------------------

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (HTTP's default when absent)."""
        value = self.headers.get("Content-Type")
        if value is None:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    def forget_head(self) -> None:
        """Drop the headers (only status and content type stay): a stream lives long."""
        self.headers = _NO_HEADERS

    def decode_content(self) -> None:
        """Undo a Content-Encoding before the body is read as a stream.

        The sidecar asks for ``identity``; an upstream that compresses anyway
        with gzip or deflate is decoded, anything else is refused.
        """
        coding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        elif coding not in ("identity", ""):
            raise UpstreamError(f"upstream sent Content-Encoding {coding!r}, which cannot be read")

    # --- the body --------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Deliver the body to ``sink`` from now on, starting with what already came."""
        self._sink = sink
        self._take_early()

    def detach(self) -> None:
        """No more callbacks; the connection stops reading."""
        self._sink = None
        self.pause()

    async def read_chunk(self) -> bytes:
        """The next body bytes (b"" at a clean end), for a reader that awaits.

        Bytes that came before a break are returned before its error.
        """
        reader = self._reader
        if reader is None:
            reader = self._reader = asyncio.StreamReader(limit=_HOLD // 2, loop=self.loop)
            if self.transport is not None:
                reader.set_transport(self.transport)  # its flow control pauses the socket
            self._take_early()
        if self._stash:
            self._take(b"")  # the reader drained: decode what waited for it
        chunk = await reader.read(_HOLD)
        if not chunk and isinstance(self._end, UpstreamError):
            raise self._end
        return chunk

    async def read_body(self, limit: int) -> bytes:
        """The whole raw body of an answer passed through, or UpstreamError past ``limit``."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self._stash:
            self._take(b"")  # what waited for the reader, before anything new

    def close(self) -> None:
        """Drop the connection now (it is never reused)."""
        self._sink = None
        if self.transport is not None:
            self.transport.abort()
        if not self.head.done():
            self.head.cancel()

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return  # the response is over; anything more is not ours to read
        in_head = not self.head.done()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("upstream switched protocols instead of answering")
            return
        except httptools.HttpParserError as exc:
            if self._pieces:
                self._deliver()  # what came before the break goes out before its error
            bad = self._head.bad if self._head is not None else None
            if bad is not None:
                self._fail(str(bad), bad)
            elif in_head and not self.head.done():
                self._fail("", UpstreamBadHead(f"upstream sent an invalid response head: {exc}"))
            else:
                self._fail(f"upstream sent an invalid response: {exc}")
            return
        pieces = self._pieces
        if pieces:  # _deliver, inlined: this is once per read
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            if self._sink is not None:
                self._sink.data(body)
        if in_head and self._head is not None and (error := self._head.fed(len(data))):
            self._fail("", error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._end is not None:
            return
        if not self._framed and self.head.done() and exc is None:
            self.on_message_complete()  # a body without length ends with the connection
        elif not self.head.done() and self._head is not None and self._head.started:
            self._fail("", UpstreamBadHead("upstream closed the connection inside its head"))
        else:
            self._fail("upstream closed the connection" + (f": {exc}" if exc else ""))

    # --- httptools callbacks ---------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self._head is not None
        self._head.status(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._head is not None
        self._head.header(name, value)

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        assert self._head is not None
        final = self._head.complete(status)
        if final is None:
            self._interim = True  # 1xx: the real answer follows
            return
        self._head = None
        self.status = status
        self.reason, self.headers = final
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        no_body = status in (204, 304)
        self._framed = chunked or no_body or "Content-Length" in self.headers
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None and self._decoder is None:
            # The hot path: a read of many chunks (a burst) reaches the Sink
            # as one piece once it is parsed, so it is checked and written to
            # the client once, not once per chunk.
            self._pieces.append(body)
        elif sink is not None or self._reader is not None:
            self._take(body)
        else:
            # Nobody reads yet (the head was just handed over); kept raw, since
            # whether to decode is decided when the head is looked at.
            self._early.append(body)
            self._early_size += len(body)
            if self._early_size > _HOLD:
                self.pause()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False  # the end of a 1xx; the answer's head comes next
            return
        if self._end is None:
            if self._pieces:
                self._deliver()  # the body's last bytes before its end
            self.parser = None
            self._end = True
            self._notify_end()

    # --- internals -------------------------------------------------------------

    def _deliver(self) -> None:
        """Hand the Sink the body pieces of this read, joined."""
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if self._sink is not None:
            self._sink.data(data)

    def _take_early(self) -> None:
        early, self._early = self._early, []
        self._early_size = 0
        for chunk in early:
            self._take(chunk)
        if self._sink is not None or self._reader is not None:  # not stopped meanwhile
            self.resume()
        self._notify_end()

    def _take(self, raw: bytes) -> None:
        """Decode (if asked) and hand over, in pieces of at most _HOLD bytes.

        Pieces bound what one small compressed read can grow into before the
        stream's own caps (line and event size) look at it.
        """
        decoder = self._decoder
        if decoder is None:
            self._hand(raw)
            return
        data = self._stash + raw if self._stash else raw
        self._stash = b""
        while data and (self._sink is not None or self._reader is not None):
            if self._reader_behind():
                # Decode no more than the reader takes: the rest waits,
                # compressed (bounded by one read), until it drains.
                self._stash = data
                return
            try:
                piece = decoder.decompress(data, _HOLD)
            except zlib.error as exc:
                self._fail(f"upstream sent a broken compressed body: {exc}")
                return
            data = decoder.unconsumed_tail
            if piece:
                self._hand(piece)
        if self._end is not None:
            self._notify_end()  # an end that waited for the stash

    def _reader_behind(self) -> bool:
        """The socket is paused for the reader (by us, or the StreamReader's flow control)."""
        transport = self.transport
        return transport is not None and not transport.is_closing() and not transport.is_reading()

    def _hand(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data(data)
        elif self._reader is not None:
            self._reader.feed_data(data)

    def _finish_decoding(self) -> None:
        """At the end of the body: what the decoder still holds, and whether it was whole."""
        decoder = self._decoder
        if decoder is None or self._end is not True:
            return
        if self._sink is None and self._reader is None:
            return  # done when someone reads (_take_early -> _notify_end)
        self._decoder = None
        rest = decoder.flush()
        if rest:
            self._hand(rest)
        if not decoder.eof:
            self._end = UpstreamDisconnected(
                "upstream's compressed body ended before its end mid-stream"
            )

    def _fail(self, message: str, error: UpstreamError | None = None) -> None:
        if self._end is not None:
            return
        self.parser = None
        if error is not None:
            self._end = error
            if not self.head.done():
                self.head.set_exception(error)
        elif not self.head.done():
            # Nothing of an answer arrived: for the client that is "unreachable".
            self._end = UpstreamUnreachable(message)
            self.head.set_exception(self._end)
        else:
            self._end = UpstreamDisconnected(f"{message} mid-stream")
        if self.transport is not None:
            self.transport.abort()
        self._notify_end()

    def _notify_end(self) -> None:
        """Tell the reader, once, how the body ended (once there is one to tell)."""
        if self._end is None or self._notified or self._stash:
            return
        if self._sink is None and self._reader is None:
            return
        self._finish_decoding()
        self._notified = True
        end = self._end
        if self._sink is not None:
            if isinstance(end, UpstreamError):
                self._sink.failed(end)
            else:
                self._sink.eof()
        elif self._reader is not None:
            # An error too ends the reader's buffer; read_chunk raises it after
            # the bytes that came before it (StreamReader would raise first).
            self._reader.feed_eof()
