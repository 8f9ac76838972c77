"""Load client: many concurrent SSE streams, counted and timed as cheaply as possible.

Each stream is one :class:`bench.conn.Conn` (a raw protocol, see there); this
module opens them, waits for them and reports what they saw.

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
import resource
import sys
from typing import Any

from bench import procs
from bench.conn import TICK, Conn, Endpoint, Stats, now_us


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
