"""Load client: many concurrent SSE streams, counted and timed as cheaply as possible.

Strategy: one :class:`asyncio.Protocol` per stream, no HTTP library. The
response head is read once; a chunked body is de-chunked with ``bytes.find``;
the event stream is cut at the last blank line of each read and counted with
``bytes.count`` (C speed), so the client stays far from being the bottleneck.
Latency is the producer's stamp (``data: T<µs>``) against the receipt time;
every event's stamp is read when a read holds up to 8 events, else the first
and last of the read (burst).

Modes: a *flow* run ends when every stream got its terminal event (or the
deadline passes) and prints one JSON result. A *hold* run opens every stream,
prints ``{"phase": "opened"}``, holds them until a line arrives on stdin,
then closes them and prints the result. Timestamps are µs of CLOCK_MONOTONIC.

With ``--follow-url`` each stream moves after its first read of events: the
connection is closed and the stream reopened at the other URL with its session
key and ``Last-Event-ID`` (a remote follower); the two connections count as one
stream. With ``--count-event`` the events counted are those of that type (a
WebSocket route's deltas carry no stamp, so no latency is read); with
``--body`` each stream is a POST of that JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from bench import procs

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
            if not self._read_head(head, now) or not data:
                return
        if not self.finished:
            self._events(self._dechunk(data) if self.chunked else data, now)

    def _read_head(self, head: bytes, now: int) -> bool:
        self.head_done = True
        status = head[9:12]
        if status != b"200":
            self.stats.errors[f"status_{status.decode(errors='replace')}"] += 1
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
        last_id = _last_id(block)
        if last_id is None:
            self.stats.errors["no_id_to_resume_from"] += 1
            self.hop = None  # it goes on here
            return
        hop, self.hop = self.hop, None
        self.moved = True
        self._close()
        hop(self, last_id)

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


def _last_id(block: bytes) -> bytes | None:
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


async def run(
    url: str,
    streams: int,
    events: int,
    hold: bool,
    deadline: float,
    concurrency: int,
    session_param: str = "",
    *,
    body: str = "",
    count_event: str = "",
    follow_url: str = "",
) -> dict[str, object]:
    start = Endpoint(url, session_param, body)
    follow = Endpoint(follow_url, session_param, body) if follow_url else None
    # A session route: every stream its own key, unique across load processes.
    keys = (f"{os.getpid()}-{i}" for i in itertools.count())

    stats = Stats(events, f"event: {count_event}\n".encode() if count_event else TICK)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    moving: set[asyncio.Task[None]] = set()
    started = now_us()
    end_at = loop.time() + deadline

    async def reopen(conn: Conn) -> None:
        assert follow is not None
        try:
            await loop.create_connection(lambda: conn, follow.host, follow.port)
        except OSError as exc:
            stats.errors[f"follow_connect_{type(exc).__name__}"] += 1
            if not conn.closed.done():
                conn.closed.set_result(None)
            return
        conns.append(conn)

    def hop(old: Conn, last_id: bytes) -> None:
        assert follow is not None
        conn = Conn(stats, follow.request(old.key, last_id), hold, key=old.key, resumed=old)
        task = loop.create_task(reopen(conn))
        moving.add(task)
        task.add_done_callback(moving.discard)

    async def open_one() -> None:
        async with gate:
            key = next(keys)
            conn = Conn(stats, start.request(key), hold, key=key, hop=hop if follow else None)
            try:
                await loop.create_connection(lambda: conn, start.host, start.port)
            except OSError as exc:
                stats.errors[f"connect_{type(exc).__name__}"] += 1
                return
            conns.append(conn)
            try:
                await asyncio.wait_for(asyncio.shield(conn.opened), end_at - loop.time())
            except TimeoutError:
                stats.errors["no_head_before_deadline"] += 1

    await asyncio.gather(*(open_one() for _ in range(streams)))
    opened_at = now_us()
    if hold:
        report({"phase": "opened", "opened": stats.opened})
        stats.keepalives = stats.events = 0  # count what arrives while held
        await _wait_stdin(max(end_at - loop.time(), 0))
        held = now_us() - opened_at
        for conn in conns:
            conn._close()
    waiting = [c.closed for c in conns if not c.closed.done()]
    if waiting:
        _, late = await asyncio.wait(waiting, timeout=max(end_at - loop.time(), 1.0))
        if late:
            stats.errors["deadline"] += len(late)
        for conn in conns:
            conn._close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "phase": "done",
        "streams": streams,
        "opened": stats.opened,
        "followed": stats.followed,
        "completed": stats.completed,
        "short": stats.short,
        "expected_per_stream": events,
        "events": stats.events,
        "keepalives": stats.keepalives,
        "comments": stats.comments,
        "bytes": stats.bytes,
        "errors": dict(stats.errors),
        "latency_us": stats.latencies,
        "ttfb_us": stats.ttfb,
        "start_us": started,
        "opened_us": opened_at,
        "first_event_us": stats.first_event,
        "last_event_us": stats.last_event,
        "held_us": held if hold else 0,
        "end_us": now_us(),
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


async def _wait_stdin(limit: float) -> None:
    """Until a line (or EOF) arrives on stdin, at most ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not fired.done():
            fired.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(fired, limit)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--events", type=int, default=0, help="events each stream should get")
    parser.add_argument("--hold", action="store_true", help="open, report, hold until stdin")
    parser.add_argument("--deadline", type=float, default=60.0, help="hard time bound (s)")
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight")
    parser.add_argument(
        "--session-param", default="", help="query parameter given a unique session key per stream"
    )
    parser.add_argument("--body", default="", help="POST this JSON body (default: GET)")
    parser.add_argument(
        "--count-event", default="", help="count events of this type (default: stamped data)"
    )
    parser.add_argument(
        "--follow-url",
        default="",
        help="after its first events, reopen each stream here with Last-Event-ID",
    )
    args = parser.parse_args(argv)
    procs.raise_nofile()
    result = procs.run_loop(
        run(
            args.url,
            args.streams,
            args.events,
            args.hold,
            args.deadline,
            args.concurrency,
            args.session_param,
            body=args.body,
            count_event=args.count_event,
            follow_url=args.follow_url,
        )
    )
    report(result)
    return 0


def report(doc: dict[str, Any]) -> None:
    """One JSON line to the runner, all of it.

    The runner sets PYTHONUNBUFFERED, so print() goes to the pipe in one
    write() whose short count nobody retries: a result line over 128 KiB
    arrived cut now and then. os.write is retried until all of it is out.
    """
    view = memoryview((json.dumps(doc) + "\n").encode())
    while view:
        view = view[os.write(sys.stdout.fileno(), view) :]


if __name__ == "__main__":
    sys.exit(main())
