"""One stream of the load client: its request, its response head, de-chunking, counting.

Strategy: one :class:`asyncio.Protocol` per stream, no HTTP library. The
response head is read once; a chunked body is de-chunked with ``bytes.find``;
the event stream is cut at the last blank line of each read and counted with
``bytes.count`` (C speed), so the client stays far from being the bottleneck.
Latency is the producer's stamp (``data: T<µs>``) against the receipt time;
every event's stamp is read when a read holds up to 8 events, else the first
and last of the read (burst). A connection may hand its stream to another
(``hop``): a client reconnecting elsewhere with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

#: The code of the sidecar's JSON error answer.
_CODE = re.compile(rb'"code": ?"([a-z_]+)"')

SAMPLE_CAP = 100_000  # latencies kept per process (reservoir sample beyond this)
TICK = b"data: T"
#: Called with a stream's connection and the last event id it read: reopen it elsewhere.
Hop = Callable[["Conn", bytes], None]


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Stats:
    """What all streams of this process saw."""

    def __init__(self, expected: int, marker: bytes = TICK) -> None:
        self.expected = expected
        #: What one counted event looks like; only the producer's ticks carry a stamp.
        self.marker = marker
        self.stamped = marker == TICK
        #: Streams reopened at the follow URL (each still one stream).
        self.followed = 0
        self.events = 0
        self.keepalives = 0
        self.comments = 0
        self.bytes = 0
        self.opened = 0
        self.completed = 0
        self.short = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[int] = []
        self.seen = 0
        self.ttfb: list[int] = []
        self.first_event = 0
        self.last_event = 0

    def latency(self, value: int) -> None:
        self.seen += 1
        if len(self.latencies) < SAMPLE_CAP:
            self.latencies.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < SAMPLE_CAP:
                self.latencies[slot] = value


class Conn(asyncio.Protocol):
    """One stream's connection: send the request, read the head, de-chunk, count events."""

    def __init__(
        self,
        stats: Stats,
        request: bytes,
        hold: bool,
        *,
        key: str = "",
        hop: Hop | None = None,
        resumed: Conn | None = None,
    ) -> None:
        self.stats = stats
        self.request = request
        self.hold = hold
        self.key = key
        #: Set until the stream moves to the follow URL (after its first events).
        self.hop = hop
        #: The connection this one took the stream over from.
        self.resumed = resumed is not None
        self.t0 = now_us()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.head_done = False
        self.chunked = False
        self.pending = b""  # an unfinished chunk-size line
        self.left = 0  # data bytes left in the current chunk
        self.skip = 0  # CRLF bytes to skip after a chunk
        self.sse = b""  # the unfinished tail of the event stream
        self.events: int = resumed.events if resumed is not None else 0
        self.finished = False  # the terminal event is in (or the stream failed)
        self.closing = False  # we closed the connection ourselves
        self.moved = False  # the stream went on on another connection
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[bool] = loop.create_future()
        #: Done when the stream is over, on whichever connection it ended.
        self.closed: asyncio.Future[None] = (
            resumed.closed if resumed is not None else loop.create_future()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            # The other side ended the stream: fine only after the terminal event.
            self.stats.errors["dropped_while_held" if self.hold else "closed_before_terminal"] += 1
        self.finished = self.closing = True
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.closed.done() and not self.moved:
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = now_us()
        self.stats.bytes += len(data)
        if not self.head_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            if not self._read_head(head, now, data) or not data:
                return
        if not self.finished:
            self._events(self._dechunk(data) if self.chunked else data, now)

    def _read_head(self, head: bytes, now: int, data: bytes = b"") -> bool:
        self.head_done = True
        status = head[9:12]
        if status != b"200":
            # The error's code too, when its JSON body came with the head.
            code = _CODE.search(data)
            why = f" {code[1].decode(errors='replace')}" if code else ""
            self.stats.errors[f"status_{status.decode(errors='replace')}{why}"] += 1
            self.opened.set_result(False)
            self._close()
            return False
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        if self.resumed:
            self.stats.followed += 1
        else:
            self.stats.ttfb.append(now - self.t0)
            self.stats.opened += 1
        self.opened.set_result(True)
        return True

    def _dechunk(self, data: bytes) -> bytes:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            if self.left:
                end = min(n, pos + self.left)
                out.append(data[pos:end])
                self.left -= end - pos
                pos = end
                if not self.left:
                    self.skip = 2
            elif self.skip:
                step = min(self.skip, n - pos)
                self.skip -= step
                pos += step
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.pending = data[pos:]
                    break
                size = int(data[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    break  # end of body; the terminal event has been seen by now
                self.left = size
        return b"".join(out)

    def _events(self, body: bytes, now: int) -> None:
        buf = self.sse + body if self.sse else body
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.sse = buf
            return
        block = buf[: end + 2]
        self.sse = buf[end + 2 :]
        stats = self.stats
        ticks = block.count(stats.marker)
        if ticks:
            self.events += ticks
            stats.events += ticks
            if not stats.first_event:
                stats.first_event = now
            stats.last_event = now
            if stats.stamped:
                for pos in _stamps(block, ticks):
                    space = block.find(b" ", pos)
                    stats.latency(now - int(block[pos:space]))
        if b"keepalive" in block:
            stats.keepalives += block.count(b"event: keepalive\n")
        if b": ping" in block:
            stats.comments += block.count(b": ping\n")
        if b"event: " in block:
            if b"event: done\n" in block:
                self._terminal()
            elif b"event: error\n" in block or b"event: end\n" in block:
                stats.errors["sse_error_or_end"] += 1
                self._terminal(ok=False)
        if ticks and self.hop is not None and not self.finished:
            self._move(block)

    def _move(self, block: bytes) -> None:
        """Cut this connection and hand the stream, and its last id, to the follow URL."""
        assert self.hop is not None
        found = last_id(block)
        if found is None:
            self.stats.errors["no_id_to_resume_from"] += 1
            self.hop = None  # it goes on here
            return
        hop, self.hop = self.hop, None
        self.moved = True
        self._close()
        hop(self, found)

    def _terminal(self, ok: bool = True) -> None:
        if self.finished:
            return
        self.finished = True
        if ok and self.events == self.stats.expected:
            self.stats.completed += 1
        elif ok:
            self.stats.short += 1
        self._close()

    def _close(self) -> None:
        self.finished = self.closing = True
        if self.transport is not None:
            self.transport.close()


def last_id(block: bytes) -> bytes | None:
    """The value of the last ``id:`` field in ``block`` (whole events), None without one."""
    pos = block.rfind(b"\nid: ")
    if pos >= 0:
        pos += 1
    elif block.startswith(b"id: "):
        pos = 0
    else:
        return None
    end = block.find(b"\n", pos)
    return block[pos + 4 : end]


def _stamps(block: bytes, ticks: int) -> list[int]:
    """Offsets of the stamps to read: all of them for a few events, else first and last."""
    first = block.find(TICK) + len(TICK)
    if ticks == 1:
        return [first]
    if ticks > 8:
        return [first, block.rfind(TICK) + len(TICK)]
    out = [first]
    pos = first
    for _ in range(ticks - 1):
        pos = block.find(TICK, pos) + len(TICK)
        out.append(pos)
    return out


class Endpoint:
    """Where streams are opened, and the request that opens one."""

    def __init__(self, url: str, session_param: str, body: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.session_param = session_param
        self.body = body.encode()

    def request(self, key: str, last_id: bytes = b"") -> bytes:
        path = self.target
        if self.session_param:
            path += ("&" if "?" in path else "?") + f"{self.session_param}={key}"
        method = "POST" if self.body else "GET"
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
        ).encode()
        if last_id:
            head += b"Last-Event-ID: " + last_id + b"\r\n"
        if self.body:
            head += b"Content-Type: application/json\r\n"
            head += f"Content-Length: {len(self.body)}\r\n".encode()
        return head + b"\r\n" + self.body
