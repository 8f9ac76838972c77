"""One shared, authenticated gateway connection per process; runs multiplexed over it.

Strategy: a gateway that broadcasts every run's events to every operator
connection costs O(runs²) frames with one socket per stream. Here one
:class:`GatewayConnection` per (URL, profile) reads every frame once, decodes
it once, and routes it to the run it belongs to: by request id until the
acceptance names the run, then by run id. Each stream reads its run through a
:class:`~sidecar.upstream.gateway_runs.GatewayRunSource`. A stream that ends
before its run did sends ``chat.abort``: closing a socket does not stop a
gateway run.

The connection drops → every run on it fails with ``upstream_disconnected``
at once; the next stream reconnects (attempts spaced by a capped backoff)
and waits for it up to ``connect_timeout``. A refused handshake fails the
waiting streams with :class:`~sidecar.errors.GatewayRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sidecar.errors import (
    GatewayRefused,
    SidecarError,
    UpstreamDisconnected,
    UpstreamUnreachable,
)
from sidecar.upstream import openclaw
from sidecar.upstream.websocket import CLOSE_TIMEOUT, translated
from sidecar.upstream.ws_profile import OVERSIZE_FACTOR, WebSocketProfile, lookup

log = structlog.get_logger("sse_sidecar")

#: Reconnect attempts are spaced by this, doubling up to BACKOFF_MAX.
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: Frames of runs not yet accepted by any stream, kept for their acceptance.
UNCLAIMED_FRAMES: Final = 512


def read_token(profile: WebSocketProfile) -> str | None:
    """The gateway token: ``token`` (or its environment override), else ``token_file``.

    Read at every connect, so a rotated Kubernetes Secret is picked up.
    """
    if profile.token is not None:
        return profile.token
    if profile.token_file is None:
        return None
    try:
        return Path(profile.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UpstreamUnreachable(f"cannot read websocket.token_file: {exc}") from None


class GatewayRun:
    """What the connection knows of one run: where its frames go."""

    __slots__ = ("abort_on_accept", "queue", "request_id", "run_id", "session_key", "socket")

    def __init__(
        self, request_id: str, session_key: str | None, socket: object | None = None
    ) -> None:
        self.request_id = request_id
        #: The socket the run was started on: only its frames count (after a
        #: gateway's ``shutdown`` a second socket may carry the same broadcasts).
        self.socket = socket
        self.session_key = session_key
        self.run_id: str | None = None
        self.abort_on_accept = False
        #: Decoded frames, or the error that ended the connection.
        self.queue: asyncio.Queue[Mapping[str, Any] | SidecarError] = asyncio.Queue()


class GatewayConnection:
    """The shared connection to one gateway; see the module docstring."""

    def __init__(
        self,
        url: str,
        profile: WebSocketProfile,
        on_malformed: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.profile = profile
        #: Told the kind of every frame skipped as malformed (the route's metric).
        self.on_malformed = on_malformed
        self._ws: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._by_request: dict[str, GatewayRun] = {}
        self._by_run: dict[str, GatewayRun] = {}
        #: Request ids of runs whose acceptance has not come yet.
        self._awaiting: set[str] = set()
        self._unclaimed: deque[tuple[str, Mapping[str, Any]]] = deque(maxlen=UNCLAIMED_FRAMES)
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._closed = False
        #: The gateway announced ``shutdown``: no new runs on this socket.
        self.draining = False
        #: Frames that were not JSON objects, by kind (for metrics).
        self.malformed: Counter[str] = Counter()
        #: Connections made, and lost, since start (for tests and metrics).
        self.connects = 0
        self.disconnects = 0

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # --- connecting -------------------------------------------------------------

    async def connected(self) -> ClientConnection:
        """The open, authenticated socket; connects (with backoff) when there is none."""
        if self._closed:
            raise UpstreamUnreachable("the sidecar is shutting down")
        ws = self._ws
        if ws is not None and not self.draining:
            return ws
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._connect())
            task.add_done_callback(self._connect_done)
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[ClientConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: its waiters (if any) raised it already

    async def _connect(self) -> ClientConnection:
        """Attempts spaced by the backoff until one succeeds, the gateway refuses us,
        or ``connect_timeout`` is over (the waiting streams give up then too)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.profile.connect_timeout
        while True:
            await asyncio.sleep(max(0.0, self._next_attempt - loop.time()))
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            self._next_attempt = loop.time() + self._backoff
            try:
                return await self._attempt()
            except GatewayRefused:
                raise  # retrying will not change the gateway's mind
            except UpstreamUnreachable:
                if self._closed or self._next_attempt >= give_up:
                    raise

    async def _attempt(self) -> ClientConnection:
        profile = self.profile
        token = read_token(profile)
        with translated("while connecting", opening=True):
            ws = await connect(
                self.url,
                additional_headers=list(profile.headers.items()),
                open_timeout=profile.connect_timeout,
                close_timeout=CLOSE_TIMEOUT,
                max_size=profile.max_frame_bytes * OVERSIZE_FACTOR,
                proxy=None,
            )
        try:
            async with asyncio.timeout(profile.connect_timeout):
                await self._handshake(ws, token)
        except BaseException as exc:
            ws.transport.abort()
            if isinstance(exc, TimeoutError):
                raise UpstreamUnreachable("the gateway did not answer connect in time") from None
            raise
        self._backoff = 0.0
        self._next_attempt = 0.0
        self.connects += 1
        self.draining = False
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read(ws))
        log.info("gateway_connected", url=self.url)
        return ws

    async def _handshake(self, ws: ClientConnection, token: str | None) -> None:
        """Send connect at once (not after the challenge) and wait for hello-ok."""
        request_id = self.next_id("connect")
        frame = openclaw.connect_frame(
            self.profile.handshake, token, request_id, tools=self.profile.forward_tools
        )
        try:
            await ws.send(json.dumps(frame))
            while True:
                message = await ws.recv()
                try:
                    decoded = json.loads(message)
                except (ValueError, TypeError):
                    continue
                if openclaw.hello_result(decoded, request_id):
                    return
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise openclaw.closed_refusal(
                rcvd.code if rcvd else None, rcvd.reason if rcvd else ""
            ) from None

    # --- reading ----------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        error: SidecarError = UpstreamDisconnected("the gateway connection closed")
        try:
            async for message in ws:
                self._route(message, ws)
        except ConnectionClosed as exc:
            error = UpstreamDisconnected(f"the gateway connection closed mid-run ({exc})")
        except Exception as exc:  # a bug here must not leave runs hanging
            log.exception("gateway_reader_failed")
            error = UpstreamDisconnected(f"the gateway connection failed: {exc!r}")
        finally:
            self._lost(ws, error)

    def _lost(self, ws: ClientConnection, error: SidecarError) -> None:
        if self._ws is ws:
            self._ws = None
            self.disconnects += 1
            log.warning("gateway_disconnected", url=self.url)
        runs = [r for r in self._by_request.values() if r.socket is ws]
        for run in runs:
            self.forget(run)
            run.queue.put_nowait(error)
        self._unclaimed.clear()

    def _skip(self, kind: str) -> None:
        self.malformed[kind] += 1
        if self.on_malformed is not None:
            self.on_malformed(kind)

    def _route(self, message: str | bytes, ws: object = None) -> None:
        if isinstance(message, bytes):
            self._skip("binary")
            return
        if len(message) > self.profile.max_frame_bytes:
            self._skip("too_large")
            return
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):
            self._skip("not_json")
            return
        if not isinstance(frame, dict):
            self._skip("not_object")
            return
        profile = self.profile
        kind = lookup(frame, profile.type)
        if kind == profile.response.type:
            run = self._by_request.get(str(lookup(frame, profile.response.id)))
            if run is not None and run.socket is ws:
                self._response(run, frame)
            return
        if kind != profile.event.type:
            return
        if lookup(frame, profile.event.name) == "shutdown":
            # Running runs may still finish; new ones wait for a new socket.
            self.draining = True
            return
        run_id = lookup(frame, profile.event.run_id)
        if not isinstance(run_id, str):
            return  # tick, presence, health…: no run of ours
        run = self._by_run.get(run_id)
        if run is not None:
            if run.socket is ws:
                run.queue.put_nowait(frame)
        elif self._awaiting:
            # Events may overtake an acceptance: keep them for it (bounded).
            self._unclaimed.append((run_id, frame))

    def _response(self, run: GatewayRun, frame: Mapping[str, Any]) -> None:
        run_id = lookup(frame, self.profile.response.run_id)
        if run.run_id is None and isinstance(run_id, str) and run_id:
            run.run_id = run_id
            self._awaiting.discard(run.request_id)
            canonical = lookup(frame, self.profile.response.session_key)
            if isinstance(canonical, str):
                run.session_key = canonical
            self._by_run[run_id] = run
            run.queue.put_nowait(frame)
            for held in [f for held_id, f in self._unclaimed if held_id == run_id]:
                run.queue.put_nowait(held)
            if run.abort_on_accept:
                self.abort(run)
            return
        run.queue.put_nowait(frame)

    # --- runs -------------------------------------------------------------------

    async def start(self, frame: Mapping[str, Any], request_id: str) -> GatewayRun:
        """Send ``frame`` (an ``agent`` request with id ``request_id``) on the socket."""
        ws = await self.connected()
        session_key = lookup(frame, self.profile.request_session_key)
        run = GatewayRun(request_id, session_key if isinstance(session_key, str) else None, ws)
        self._by_request[request_id] = run
        self._awaiting.add(request_id)
        try:
            with translated("while sending the request"):
                await ws.send(json.dumps(frame))
        except BaseException:
            self.forget(run)
            raise
        return run

    def forget(self, run: GatewayRun) -> None:
        self._by_request.pop(run.request_id, None)
        self._awaiting.discard(run.request_id)
        if run.run_id is not None:
            self._by_run.pop(run.run_id, None)

    def abort(self, run: GatewayRun) -> None:
        """Stop the run at the gateway (``chat.abort``); fire and forget."""
        if run.run_id is None:
            if run.request_id in self._by_request:
                run.abort_on_accept = True  # sent once the acceptance names the run
            return
        self.forget(run)
        frame = openclaw.abort_frame(self.next_id("abort"), run.session_key, run.run_id)
        self.send_later(frame, run.socket)

    def send_later(self, frame: Mapping[str, Any], ws: object = None) -> None:
        """Send ``frame`` on ``ws`` (default: the current socket) from a task of its own."""
        socket = ws if isinstance(ws, ClientConnection) else self._ws
        if socket is not None:
            self._spawn(self._send_quietly(socket, frame))

    async def _send_quietly(self, ws: ClientConnection, frame: Mapping[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.send(json.dumps(frame))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Abort every run still here, then close the socket (sidecar shutdown)."""
        self._closed = True
        for run in list(self._by_request.values()):
            self.abort(run)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
        if self._connecting is not None:
            self._connecting.cancel()
        ws = self._ws
        if ws is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close()
            except (TimeoutError, OSError):
                ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


__all__ = ["GatewayConnection", "GatewayRefused", "GatewayRun", "read_token"]
