"""Runs of the example producer that outlive their connection, as resumable producers' do.

Strategy: a resumable run (``resumable=1``) writes its answer into a
:class:`RunLog` whether or not a connection reads it, like a producer that
honours ``Last-Event-ID`` (or OpenAI's background responses). A connection
follows the log from where it asked: from the start, after
``Last-Event-ID: <run>-<n>``, or after ``starting_after=N`` on
``GET …/responses/<id>``. A run is kept :data:`RUN_KEEP` seconds after its
end (or after its last connection left, while it still runs), at most
:data:`MAX_RUNS` at once. For the proxy's tests a run can cut the
connections that follow it (``cut=N`` events in, ``cuts`` times, ``cut_how``
``reset``, ``fin`` or ``stall``) and repeat ``repeat`` events on a resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from aiohttp import web

from sidecar.examples.producer_stats import ProducerStats, StreamRecord

CutHow = Literal["reset", "fin", "stall"]
Style = Literal["sse", "responses"]

#: Real seconds a run is kept for a resume after it ended or its last reader left.
RUN_KEEP = 60.0
MAX_RUNS = 100
# Real seconds, never scaled: how late a departed connection is noticed.
POLL_STEP = 0.1

_LAST_ID = re.compile(r"([0-9a-f]{12})-(\d{1,9})")
_RESPONSE_PATH = re.compile(r".*/responses/resp_([0-9a-f]{12})")


class RunLog:
    """What one run produced so far: blocks, each with its position (None: a comment)."""

    def __init__(self, style: Style, *, cut: int, cuts: int, cut_how: CutHow, repeat: int) -> None:
        self.id = secrets.token_hex(6)
        self.style = style
        self.entries: list[tuple[int | None, bytes]] = []
        self.done = False
        #: Connections reading the log now, and when the last one left.
        self.readers = 0
        self.left_at: float | None = None
        self.cut, self.cuts_left, self.cut_how, self.repeat = cut, cuts, cut_how, repeat
        self._next = 1 if style == "sse" else 0
        self._changed = asyncio.Event()

    @property
    def response_id(self) -> str:
        return f"resp_{self.id}"

    def event(self, name: str, data: str) -> None:
        """An event of the answer, numbered (an id, or OpenAI's ``sequence_number``)."""
        position, self._next = self._next, self._next + 1
        if self.style == "sse":
            block = f"id: {self.id}-{position}\nevent: {name}\ndata: {data}\n\n"
        else:
            block = _responses_event(name, data, position, self.response_id)
        self._append(position, block.encode())

    def comment(self, chunk: bytes) -> None:
        self._append(None, chunk)

    def finish(self) -> None:
        self.done = True
        self._wake()

    def start_after(self, position: int) -> int:
        """The index of the first entry after ``position``, less ``repeat`` events."""
        index = next(
            (i for i, (p, _) in enumerate(self.entries) if p is not None and p > position),
            len(self.entries),
        )
        back = self.repeat
        while back and index > 0:
            index -= 1
            if self.entries[index][0] is not None:
                back -= 1
        return index

    async def changed(self, within: float) -> None:
        """Return when something is appended (or after ``within`` seconds)."""
        try:
            async with asyncio.timeout(within):
                await self._changed.wait()
        except TimeoutError:
            pass

    def _append(self, position: int | None, block: bytes) -> None:
        self.entries.append((position, block))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _responses_event(name: str, data: str, seq: int, response_id: str) -> str:
    """An event as OpenAI's Responses stream sends it (no SSE id: a sequence number)."""
    body: dict[str, object]
    if name == "created":
        kind, body = "response.created", {"response": {"id": response_id, "status": "in_progress"}}
    elif name == "done":
        kind, body = "response.completed", {"response": {"id": response_id, "status": "completed"}}
    else:
        text = json.loads(data).get("text", "")
        kind, body = "response.output_text.delta", {"item_id": f"msg_{response_id[5:]}",
                                                    "delta": text}  # fmt: skip
    payload = {"type": kind, "sequence_number": seq, **body}
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Runs:
    """The runs a producer keeps, by id: at most MAX_RUNS, each RUN_KEEP after its end."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, RunLog] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, run: RunLog) -> None:
        self.sweep()
        while len(self._runs) >= MAX_RUNS:
            self._runs.popitem(last=False)
        self._runs[run.id] = run

    def get(self, run_id: str) -> RunLog | None:
        self.sweep()
        return self._runs.get(run_id)

    def sweep(self) -> None:
        now = asyncio.get_running_loop().time()
        for run_id, run in list(self._runs.items()):
            if run.readers == 0 and run.left_at is not None and now - run.left_at > RUN_KEEP:
                del self._runs[run_id]

    def abandoned(self, run: RunLog) -> bool:
        """No connection read it for RUN_KEEP: its generation may stop."""
        return run.id not in self._runs


def resume_target(request: web.Request) -> tuple[str, int] | None:
    """The run and position a request asks to resume after, if it asks."""
    match = _RESPONSE_PATH.fullmatch(request.path)
    if match is not None and request.method == "GET":
        after = request.query.get("starting_after", "-1")
        return match[1], int(after) if after.lstrip("-").isdigit() else -1
    last = request.headers.get("Last-Event-ID", "")
    found = _LAST_ID.fullmatch(last)
    return (found[1], int(found[2])) if found is not None else None


async def serve_resume(
    request: web.Request,
    target: tuple[str, int],
    runs: Runs,
    stats: ProducerStats,
    stopping: Callable[[], bool],
) -> web.StreamResponse:
    """A request for the rest of a run: after its Last-Event-ID, or starting_after."""
    run = runs.get(target[0])
    record = StreamRecord(request.method, request.path, request.query_string, request.headers,
                          await request.read(), "resume", resume_of=target)  # fmt: skip
    stats.resume_request(record, found=run is not None)
    if run is None:
        record.outcome = "finished"
        error = {"type": "not_found", "message": "no such run (it ended too long ago)"}
        return web.json_response({"error": error}, status=404)
    response = await serve(request, run, run.start_after(target[1]), stopping)
    record.outcome = "finished" if run.done else "client_gone"
    return response


async def serve(
    request: web.Request, run: RunLog, index: int, stopping: Callable[[], bool]
) -> web.StreamResponse:
    """One connection reading a run's log from ``index``, until its end, a cut or a shutdown."""
    transport = request.transport
    run.readers += 1
    try:
        # Headers once the answer begins (slow-headers delays them as without resume).
        while not (run.entries or run.done or stopping()):
            if transport is None or transport.is_closing():
                return web.Response(status=499)
            await run.changed(POLL_STEP)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        with contextlib.suppress(ConnectionResetError):
            await response.prepare(request)
            await follow(request, response, run, index, stopping)
        return response
    finally:
        run.readers -= 1
        run.left_at = asyncio.get_running_loop().time()


async def follow(
    request: web.Request,
    response: web.StreamResponse,
    run: RunLog,
    index: int,
    stopping: Callable[[], bool],
) -> None:
    """Write the run's entries from ``index`` on to one connection, until the end or a cut."""
    transport = request.transport
    sent = 0
    while transport is not None and not transport.is_closing() and not stopping():
        if index < len(run.entries):
            position, block = run.entries[index]
            index += 1
            await response.write(block)
            sent += position is not None
            if run.cut and sent >= run.cut and run.cuts_left > 0:
                run.cuts_left -= 1
                await _cut(transport, run.cut_how, stopping)
                return
        elif run.done:
            return
        else:
            await run.changed(POLL_STEP)


async def _cut(transport: asyncio.Transport, how: CutHow, stopping: Callable[[], bool]) -> None:
    """End a connection without the terminal event: a reset, a FIN, or silence."""
    if how == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close() sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return
    if how == "fin" and isinstance(transport, asyncio.WriteTransport):
        transport.write_eof()  # half-close: inside the chunked body, no end chunk
    # Silence (or a FIN sent): wait for the peer to give up on the connection.
    while not transport.is_closing() and not stopping():  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(POLL_STEP)
