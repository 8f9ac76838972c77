"""An example WebSocket agent gateway that speaks OpenClaw's protocol (2026.9).

Put the sidecar in front of it (a ``ws://`` route with ``websocket: {profile:
openclaw}``), or talk to it directly::

    python -m sidecar.examples.gateway --port 8765 --token s3cret
    # send: {"type":"req","id":"c","method":"connect","params":{"minProtocol":4,
    #        "maxProtocol":4,"client":{...},"auth":{"token":"s3cret"}}}
    # then: {"type":"req","id":"1","method":"agent","params":{"message":"hi",
    #        "sessionKey":"main","idempotencyKey":"k1"}}

Like the real gateway (shared/openclaw-gateway.md) it sends
``connect.challenge``, requires ``connect`` first (else INVALID_REQUEST and
close 1008), checks the token (AUTH_TOKEN_MISMATCH, NOT_PAIRED), rewrites
session keys (``main`` → ``agent:main:main``, lowered), sends ``deltaText``,
reports a rewritten text as a ``replace: true`` retry, stops a run on
``chat.abort``, ticks, and says ``shutdown`` when stopped. ``handshake=False``
gives the bare generic protocol (no connect, keys kept) for the generic
profile.

A request gets an accepted ``res`` with a run id, then ``chat`` events whose
text is CUMULATIVE, then ``final`` and a final ``res``. Like a real gateway it
broadcasts every run's events to every connection, so runs on one session key
interleave on every socket. Markers in the message select a behaviour:
``[reset]`` (the text is rewritten once mid-run, shorter and different),
``[error]``, ``[abort]``, ``[die]`` (the requesting connection is cut without
a close frame mid-run), ``[slow]`` (five times slower, with a pause) and
``[tool]`` (``agent`` tool-call events mid-run). What the text is, and how it
grows, is pure and exported (sidecar/examples/gateway_text.py) so tests can
compute what a client must assemble.

Strategy: one task per run broadcasts its frames, played by
sidecar/examples/gateway_play.py; one record per connection
(:class:`ConnectionRecord`, with an ``asyncio.Event`` set when the socket
closed) lets tests assert from the gateway's side that a client went away.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sidecar.examples.gateway_play import (
    ABORT_MESSAGE,
    ABORTED_BY_RPC,
    ERROR_MESSAGE,
    TOKEN_INTERVAL,
    RunPlayer,
    RunRecord,
    send,
)
from sidecar.examples.gateway_text import (
    accepted,
    canonical_key,
    cumulative_texts,
    failed,
    final_text,
)
from sidecar.examples.running import arg_parser, run, until_signalled

DEFAULT_SESSION = "agent:main:main"
RECORDS_KEPT = 1000
#: The protocol version of OpenClaw 2026.9 (connect must offer it).
PROTOCOL = 4
#: Seconds between tick events (OpenClaw: 30).
TICK_INTERVAL = 30
# --- what the gateway saw ----------------------------------------------------------------


@dataclass(slots=True)
class ConnectionRecord:
    """One WebSocket connection as the gateway saw it."""

    id: int
    path: str
    #: The handshake request's headers (case-insensitive lookups).
    headers: Headers
    #: Set once the socket is closed, however it closed.
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    requests: list[Any] = field(default_factory=list)


class Gateway:
    """The example gateway; ``speed`` divides every delay (10 = ten times faster)."""

    def __init__(
        self, *, speed: float = 1.0, handshake: bool = True, token: str | None = None
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        self.speed = speed
        #: Speak OpenClaw's protocol (connect first, key rewriting, chat.abort);
        #: False: the bare generic protocol, for the generic profile.
        self.handshake = handshake
        #: The shared token connect must carry (None: any token, or none).
        self.token = token
        self._operators: set[ServerConnection] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        #: The latest connections and runs (older ones are forgotten).
        self.connections: deque[ConnectionRecord] = deque(maxlen=RECORDS_KEPT)
        self.runs: deque[RunRecord] = deque(maxlen=RECORDS_KEPT)
        #: Connections accepted, and those of them that closed since.
        self.opened = 0
        self.closed = 0
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idempotency: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._run_ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._changed = asyncio.Event()
        self._player = RunPlayer(self._broadcast, self._sleep, self._notify, handshake=handshake)

    # --- observable state ---------------------------------------------------------

    async def wait_until(self, predicate: Callable[[Gateway], bool]) -> None:
        """Return once ``predicate(self)`` holds; bound it with ``asyncio.timeout``."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> str:
        """Listen (port 0: any free port) and return the ``ws://`` URL."""
        self._server = await serve(
            self._connection, host, port, process_request=_health, close_timeout=1.0
        )
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{f'[{host}]' if ':' in host else host}:{port}/"

    async def stop(self) -> None:
        """Stop runs, close every connection with 1001 and stop listening.

        In handshake mode, like OpenClaw on SIGTERM: a ``shutdown`` event first.
        """
        if self.handshake and self._operators:
            reason = {"reason": "gateway stopping"}
            broadcast(
                self._operators,
                json.dumps({"type": "event", "event": "shutdown", "payload": reason}),
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def kill(self) -> None:
        """Die like a crashed process: every connection cut, no close frames."""
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            for connection in self._server.connections:
                connection.transport.abort()
            self._server.close(close_connections=False)

    # --- protocol -----------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        record = ConnectionRecord(next(self._ids), ws.request.path, ws.request.headers)
        self.connections.append(record)
        self.opened += 1
        self._notify()
        try:
            if self.handshake:
                challenge = {"nonce": f"n-{record.id}", "ts": 0}
                await send(
                    ws, {"type": "event", "event": "connect.challenge", "payload": challenge}
                )
            else:
                self._operators.add(ws)
            async for message in ws:
                await self._on_message(ws, record, message)
        except ConnectionClosed:
            pass  # cut without a close frame: recorded below like any close
        finally:
            self._operators.discard(ws)
            record.close_code = ws.close_code
            record.closed.set()
            self.closed += 1
            self._notify()

    async def _on_message(
        self, ws: ServerConnection, record: ConnectionRecord, message: str | bytes
    ) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            frame = None
        record.requests.append(frame)
        if not isinstance(frame, dict) or frame.get("type") != "req":
            await send(ws, failed(None, "INVALID_REQUEST", "frames must be req objects"))
            return
        request_id = frame.get("id")
        params = frame.get("params")
        if self.handshake and ws not in self._operators:
            await self._connect(ws, request_id, frame)
            return
        if frame.get("method") == "chat.abort" and self.handshake:
            await send(ws, self._abort(request_id, params))
            return
        if frame.get("method") != "agent":
            await send(ws, failed(request_id, "UNKNOWN_METHOD", "only agent is served"))
            return
        if not isinstance(params, dict) or not isinstance(params.get("message"), str):
            await send(ws, failed(request_id, "INVALID_REQUEST", "params.message is required"))
            return
        key = params.get("idempotencyKey")
        if isinstance(key, str) and key in self._idempotency:
            # A retried request joins the run it already started.
            await send(ws, accepted(request_id, self._idempotency[key]))
            return
        agent = params.get("agentId") if isinstance(params.get("agentId"), str) else "main"
        session_key = params.get("sessionKey")
        if not isinstance(session_key, str):
            session_key = DEFAULT_SESSION if agent == "main" else f"agent:{agent}:main"
        elif self.handshake:
            session_key = canonical_key(session_key, agent if isinstance(agent, str) else "main")
        run = RunRecord(f"run-{next(self._run_ids)}", session_key, params["message"], record.id)
        if isinstance(key, str):
            self._idempotency[key] = run.run_id
            if len(self._idempotency) > RECORDS_KEPT:
                del self._idempotency[next(iter(self._idempotency))]
        self.runs.append(run)
        self._notify()
        await send(ws, accepted(request_id, run.run_id, session_key))
        task = asyncio.create_task(self._player.play(ws, request_id, run))
        self._tasks.add(task)
        self._running[run.run_id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._running.pop(run.run_id, None))

    async def _connect(self, ws: ServerConnection, request_id: object, frame: Any) -> None:
        """The first request must be connect, with protocol 4 and the right token."""
        params = frame.get("params")
        if frame.get("method") != "connect" or not isinstance(params, dict):
            message = "invalid handshake: first request must be connect"
            await send(ws, failed(request_id, "INVALID_REQUEST", message))
            await ws.close(1008, "invalid handshake")
            return
        if params.get("minProtocol", 0) > PROTOCOL or params.get("maxProtocol", 0) < PROTOCOL:
            await send(ws, failed(request_id, "INVALID_REQUEST", "protocol mismatch"))
            await ws.close(1002, "protocol mismatch")
            return
        auth = params.get("auth")
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            await send(ws, failed(request_id, "NOT_PAIRED", "device identity required"))
            await ws.close(1008, "device identity required")
            return
        if self.token is not None and token != self.token:
            refused = failed(request_id, "INVALID_REQUEST", "unauthorized: gateway token mismatch")
            refused["error"]["details"] = {"code": "AUTH_TOKEN_MISMATCH"}  # type: ignore[index]
            await send(ws, refused)
            await ws.close(1008, "unauthorized")
            return
        self._operators.add(ws)
        ticker = asyncio.create_task(self._tick(ws))
        self._tasks.add(ticker)
        ticker.add_done_callback(self._tasks.discard)
        policy = {"maxPayload": 25 * 1024 * 1024, "tickIntervalMs": TICK_INTERVAL * 1000}
        hello = {"type": "hello-ok", "protocol": PROTOCOL, "policy": policy}
        await send(ws, {"type": "res", "id": request_id, "ok": True, "payload": hello})

    async def _tick(self, ws: ServerConnection) -> None:
        while ws in self._operators:
            await self._sleep(TICK_INTERVAL)
            await send(ws, {"type": "event", "event": "tick", "payload": {"ts": 0}})

    def _abort(self, request_id: object, params: object) -> dict[str, object]:
        run_id = params.get("runId") if isinstance(params, dict) else None
        task = self._running.get(run_id) if isinstance(run_id, str) else None
        if task is None:
            payload: dict[str, object] = {"ok": True, "aborted": False, "runIds": []}
        else:
            task.cancel(ABORTED_BY_RPC)
            payload = {"ok": True, "aborted": True, "runIds": [run_id]}
        return {"type": "res", "id": request_id, "ok": True, "payload": payload}

    def _broadcast(self, frame: dict[str, object]) -> None:
        assert self._server is not None
        frame["seq"] = next(self._seq)
        broadcast(self._operators, json.dumps(frame, ensure_ascii=False))

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)


def _health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(200, "ok\n")
    return None


# --- command line --------------------------------------------------------------------


async def _serve(host: str, port: int, speed: float, token: str | None) -> int:
    gateway = Gateway(speed=speed, token=token)
    try:
        url = await gateway.start(host, port)
    except OSError as exc:
        print(f"example gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"example gateway listening on {url} (speed {speed:g})", flush=True)
        await until_signalled()
    finally:
        await gateway.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the example gateway until SIGINT/SIGTERM; return the exit status."""
    parser = arg_parser(
        "sse-sidecar example-gateway",
        "Serve an example WebSocket agent gateway speaking OpenClaw's protocol.",
        8765,
    )
    parser.add_argument("--token", help="the shared token connect must carry (default: any)")
    args = parser.parse_args(argv)
    return run(lambda: _serve(args.host, args.port, args.speed, args.token))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ABORT_MESSAGE",
    "ERROR_MESSAGE",
    "TOKEN_INTERVAL",
    "Gateway",
    "canonical_key",
    "cumulative_texts",
    "final_text",
    "main",
]
