"""Synthetic SSE producer: stamped events at a set rate, comments, silences, idle streams.

Strategy: a bare :class:`asyncio.Protocol` speaks just enough HTTP/1.1 for a
GET (read the head, answer ``200`` with a chunked ``text/event-stream``), so
the producer costs as little CPU as possible on the two shared cores. Paced
streams share one timer (a heap driven by ``loop.call_at``) instead of a task
each; unpaced ("burst") streams write blocks of events whenever the transport
has room (``pause_writing``/``resume_writing``).

Each stream is configured by its query string:

``n``              events to send, then ``event: done`` / ``data: [DONE]`` (default 100)
``rate``           events per second per stream; 0 sends as fast as flow control allows
``size``           bytes of each event's data (default 64)
``comment_every``  a ``: ping`` comment after every N events (0: none)
``silence_every``  after every N events, pause ``silence`` seconds (0: none)
``idle``           1: headers, then nothing until the client leaves
``block``          events per write in burst mode (default 32)

An event is ``id: <seq>`` and ``data: T<send time, µs of CLOCK_MONOTONIC> <seq> xxx…``,
so a client on the same machine can compute stamp → receipt latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import random
import sys
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlsplit

from bench import procs

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
COMMENT = b": ping\n\n"
DONE = b"event: done\ndata: [DONE]\n\n"
END_OF_BODY = b"0\r\n\r\n"
MAX_HEAD = 16 * 1024
PUMP_BLOCKS = 8


def now_us() -> int:
    """The stamp clock: CLOCK_MONOTONIC is one clock for every process of the machine."""
    return time.monotonic_ns() // 1000


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


@dataclass(frozen=True, slots=True)
class Params:
    n: int = 100
    rate: float = 0.0
    size: int = 64
    comment_every: int = 0
    silence_every: int = 0
    silence: float = 0.0
    idle: bool = False
    block: int = 32

    @classmethod
    def from_query(cls, query: str) -> Params:
        raw = {k: v[-1] for k, v in parse_qs(query).items()}
        return cls(
            n=int(raw.get("n", 100)),
            rate=float(raw.get("rate", 0)),
            size=int(raw.get("size", 64)),
            comment_every=int(raw.get("comment_every", 0)),
            silence_every=int(raw.get("silence_every", 0)),
            silence=float(raw.get("silence", 0)),
            idle=raw.get("idle", "0") == "1",
            block=max(int(raw.get("block", 32)), 1),
        )


class Pacer:
    """One timer for every paced stream of the process: a heap of (due time, stream)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Stream]] = []
        self.order = itertools.count()
        self.handle: asyncio.Handle | None = None
        self.armed_at = 0.0  # uvloop's timer handles do not expose when()

    def add(self, when: float, stream: Stream) -> None:
        heapq.heappush(self.heap, (when, next(self.order), stream))
        if self.handle is None or when < self.armed_at:
            if self.handle is not None:
                self.handle.cancel()
            self._arm(when)

    def _arm(self, when: float) -> None:
        self.armed_at = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        heap = self.heap
        # uvloop's timers have millisecond resolution and may fire a little
        # early; without the slack the heap would be polled in a busy loop.
        now = self.loop.time() + 0.001
        while heap and heap[0][0] <= now:
            when, _, stream = heapq.heappop(heap)
            after = stream.tick(when)
            if after is not None:
                heapq.heappush(heap, (after, next(self.order), stream))
        if heap:
            self._arm(heap[0][0])


class Stream(asyncio.Protocol):
    """One client connection: parse the request head, then send the configured stream."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""
        self.params = Params()
        self.seq = 0
        self.paused = False
        self.finished = False

    # --- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return  # the request is read; ignore anything after it
        head = self.head = self.head + data
        if head.find(b"\r\n\r\n") < 0:
            if len(head) > MAX_HEAD:
                self._refuse()
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.head = None
        try:
            _method, target, _version = line.split(" ")
            self.params = Params.from_query(urlsplit(target).query)
        except ValueError:
            self._refuse()
            return
        self._start()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if not self.finished and self.params.rate <= 0 and not self.params.idle:
            self._pump()

    # --- sending ------------------------------------------------------------

    def _refuse(self) -> None:
        assert self.transport is not None
        self.head = None
        self.transport.write(BAD_REQUEST)
        self.transport.close()
        self.finished = True

    def _start(self) -> None:
        assert self.transport is not None
        self.transport.write(HEAD)
        p = self.params
        if p.idle:
            return
        if p.n <= 0:
            self._finish(b"")
        elif p.rate > 0:
            period = 1.0 / p.rate
            # Spread the streams over one period so they do not all fire at once.
            self.pacer.add(self.pacer.loop.time() + random.uniform(0, period), self)
        else:
            self._pump()

    def _event(self, stamp: int) -> bytes:
        p = self.params
        seq = self.seq
        self.seq = seq + 1
        data = b"T%d %d " % (stamp, seq)
        if len(data) < p.size:
            data += b"x" * (p.size - len(data))
        body = b"id: %d\ndata: %s\n\n" % (seq, data)
        if p.comment_every and self.seq % p.comment_every == 0:
            body += COMMENT
        return body

    def tick(self, due: float) -> float | None:
        """A paced stream's turn: send one event; return when the next is due."""
        if self.finished:
            return None
        assert self.transport is not None
        p = self.params
        body = self._event(now_us())
        if self.seq >= p.n:
            self._finish(body)
            return None
        self.transport.write(chunk(body))
        after = due + 1.0 / p.rate
        if p.silence_every and self.seq % p.silence_every == 0:
            after += p.silence
        return after

    def _pump(self) -> None:
        """Burst mode: write blocks of events until the transport is full or all are sent.

        At most ``PUMP_BLOCKS`` blocks per turn of the loop, so one stream does
        not fill the kernel's (large, loopback) socket buffer before the other
        streams are even accepted.
        """
        assert self.transport is not None
        p = self.params
        for _ in range(PUMP_BLOCKS):
            if self.paused or self.finished:
                return
            stamp = now_us()
            count = min(p.block, p.n - self.seq)
            body = b"".join([self._event(stamp) for _ in range(count)])
            if self.seq >= p.n:
                self._finish(body)
                return
            self.transport.write(chunk(body))
        asyncio.get_running_loop().call_soon(self._pump)

    def _finish(self, body: bytes) -> None:
        assert self.transport is not None
        self.finished = True
        self.transport.write(chunk(body + DONE) + END_OF_BODY)
        self.transport.close()  # after the buffer drains


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop)
    server = await loop.create_server(lambda: Stream(pacer), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.producer", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    procs.raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        procs.run_loop(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
