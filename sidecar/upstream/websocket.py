"""WebSocket upstreams: one run on a gateway, its events as SSE events.

Strategy: :class:`WebSocketSource` only moves messages between the socket and
a :class:`~sidecar.upstream.ws_tracker.RunTracker` (the sans-I/O part: run-id
latching, session filter, cumulative text to deltas, the reset rule, state
mapping) and translates every ``websockets`` exception into
:mod:`sidecar.errors` in one place (:func:`translated`), like
:mod:`sidecar.upstream.http` does for aiohttp.

Gateway gone → :class:`UpstreamDisconnected` from the pending ``read()`` at
once (a close frame or a dropped TCP connection wakes ``recv``); client gone
→ ``close()``, bounded by CLOSE_TIMEOUT, so the gateway learns within a
second that nobody reads the run.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Final
from uuid import uuid4

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import CloseCode

from sidecar.errors import EventTooLarge, UpstreamDisconnected, UpstreamUnreachable
from sidecar.sse import Event
from sidecar.upstream.ws_profile import OVERSIZE_FACTOR, WebSocketProfile, render_request
from sidecar.upstream.ws_tracker import RunTracker

__all__ = ["CLOSE_TIMEOUT", "RunTracker", "WebSocketProfile", "WebSocketSource"]

#: How long close() waits for the gateway's half of the closing handshake
#: before dropping the TCP connection (the socket is gone well within 1 s).
CLOSE_TIMEOUT: Final = 0.25


@contextmanager
def translated(what: str, *, opening: bool = False) -> Iterator[None]:
    """The one place where ``websockets`` errors become ours."""
    lost = UpstreamUnreachable if opening else UpstreamDisconnected
    try:
        yield
    except ConnectionClosed as exc:
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            raise EventTooLarge(f"gateway sent a frame too large to skip {what}") from None
        raise lost(f"gateway closed the connection {what} ({_close_reason(exc)})") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpstreamUnreachable(f"gateway refused the WebSocket handshake: {status}") from None
    except TimeoutError:
        raise lost(f"timed out {what}") from None
    except (WebSocketException, OSError) as exc:
        raise lost(f"gateway failed {what}: {exc}") from None


def _close_reason(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "no close frame"
    return f"code {exc.rcvd.code}" + (f": {exc.rcvd.reason}" if exc.rcvd.reason else "")


def json_body(body: object) -> object:
    """The client's body as JSON data; raw bytes are decoded, anything unreadable is None."""
    if isinstance(body, bytes | bytearray | str):
        try:
            return json.loads(body) if body else None
        except (ValueError, RecursionError):
            return None
    return body


class WebSocketSource:
    """One run on a gateway: connect, send the request frame, read our run's events.

    ``body`` is the client's JSON body (decoded, or raw bytes decoded here),
    ``session_key`` the stream's validated session key (None: none),
    ``request_id`` the stream's request id and ``terminal_event`` the event
    name ``final`` maps to (the route's first terminal event).
    """

    def __init__(
        self,
        url: str,
        profile: WebSocketProfile,
        *,
        body: object,
        session_key: str | None,
        request_id: str,
        terminal_event: str = "done",
    ) -> None:
        self.url = url
        self.profile = profile
        #: The request frame this source sends (a fresh idempotency key each).
        self.frame = render_request(
            profile.request,
            body=json_body(body),
            session_key=session_key,
            request_id=request_id,
            idempotency_key=str(uuid4()),
        )
        self.tracker = RunTracker.for_request(profile, self.frame, terminal_event)
        self._ws: ClientConnection | None = None
        self._closed = False

    @property
    def done(self) -> bool:
        """Whether the run ended (terminal event returned, or an error raised)."""
        return self.tracker.done

    @property
    def malformed(self) -> Counter[str]:
        """Frames skipped because they broke the profile, by kind (for metrics)."""
        return self.tracker.malformed

    def handshake_headers(self) -> list[tuple[str, str]]:
        headers = list(self.profile.headers.items())
        if self.profile.token is not None:
            headers.append(("Authorization", f"Bearer {self.profile.token}"))
        return headers

    async def open(self) -> None:
        """Connect within ``connect_timeout`` and send the request frame."""
        if self._ws is not None or self._closed:
            raise RuntimeError("a WebSocketSource is opened once")
        profile = self.profile
        with translated("while connecting", opening=True):
            self._ws = await connect(
                self.url,
                additional_headers=self.handshake_headers(),
                open_timeout=profile.connect_timeout,
                close_timeout=CLOSE_TIMEOUT,
                max_size=profile.max_frame_bytes * OVERSIZE_FACTOR,
                # Like the HTTP upstream (trust_env off): only configured
                # upstreams, never a proxy picked up from the environment.
                proxy=None,
            )
            self._check_not_closed()
            await self._ws.send(json.dumps(self.frame))

    def _check_not_closed(self) -> None:
        if self._closed and self._ws is not None:  # close() ran during the handshake
            self._ws.transport.abort()
            raise UpstreamUnreachable("closed while connecting")

    async def read(self) -> list[Event]:
        """Our run's next events (never empty until ``done``; then always empty).

        The terminal event, if any, is the last item. Cancelling is safe: a
        frame is either still in the socket's queue or fully turned into the
        returned items (no await between the two).
        """
        ws = self._ws
        if ws is None:
            raise RuntimeError("read() before open()")
        tracker = self.tracker
        while not tracker.done:
            with translated("mid-run"):
                message = await ws.recv()
            items = tracker.feed(message)
            if items:
                return items
        return []

    async def close(self) -> None:
        """Close the socket; idempotent, and done within CLOSE_TIMEOUT even if the
        gateway does not answer (then the TCP connection is dropped)."""
        self._closed = True
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close()
        except TimeoutError:
            ws.transport.abort()
        except BaseException:
            ws.transport.abort()
            raise

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake (for sync cleanup)."""
        self._closed = True
        if self._ws is not None:
            self._ws.transport.abort()

    async def __aenter__(self) -> WebSocketSource:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
