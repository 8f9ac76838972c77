"""An example SSE producer that imitates an LLM chat backend, good and bad.

Put the sidecar in front of it and watch each behaviour with ``curl -N``::

    python -m sidecar.examples.producer --port 8000
    curl -N 'http://127.0.0.1:8000/v1/chat?prompt=hi'             # tokens, silence, done
    curl -N 'http://127.0.0.1:8000/?mode=crash'                   # connection cut mid-stream
    curl -N -d '{"prompt": "hi", "mode": "hang"}' http://127.0.0.1:8000/v1/chat

Modes: ``normal``, ``crash``, ``error500``, ``garbage``, ``hang``, ``noterm``,
``slow-headers``. Parameters come from the query string or, for POST, a JSON
body (whose fields win): ``mode``, ``tokens``, ``prompt``, ``silence``,
``quiet``, ``keepalive``, ``delay``, ``ids``. Every duration is in seconds at
speed 1 and is divided by the app's ``speed``.

Strategy: each stream is a short script run by :class:`_Stream`. Every wait is
a loop of sleeps of at most 0.1 s that checks the socket and the shutdown flag,
so a client that left is noticed within ~0.2 s even while nothing is written
(aiohttp does not cancel a handler whose client went away), and a server
shutdown ends even a ``hang`` stream at once. What happened is counted in
:class:`ProducerStats` (``app[STATS]``, ``GET /_stats``) for the proxy's tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal, cast, get_args

from aiohttp import web
from multidict import CIMultiDictProxy

from sidecar.examples.running import arg_parser, run, until_signalled

Mode = Literal["normal", "crash", "error500", "garbage", "hang", "noterm", "slow-headers"]
MODES: tuple[str, ...] = get_args(Mode)
Outcome = Literal["active", "finished", "client_gone"]

TOKEN_INTERVAL = 0.05
DEFAULT_TOKENS = 24
DEFAULT_SILENCE = 20.0
KEEPALIVE_INTERVAL = 2.0
DEFAULT_DELAY = 3.0
GARBAGE_LINGER = 1.0
MAX_TOKENS = 10_000
MAX_SECONDS = 3600.0
# Real seconds, never scaled: how late a departed client or a shutdown is noticed.
POLL_STEP = 0.1
RECORDS_KEPT = 1000

ANSWER = (
    "Sure — here is a streamed answer. Each word arrives as its own token event, "
    "like a model writing it. After a third of them the model stops to think for "
    "a while, then the rest of the answer flows in, déjà vu for anyone who has "
    "watched a chat interface, until one final done event closes the stream."
)
# Modes that think (stay silent) mid-answer unless ?silence= says otherwise.
_THINKING_MODES = frozenset({"normal", "slow-headers"})
_TRUTHY = frozenset({"1", "true", "yes", "on"})
_FALSY = frozenset({"0", "false", "no", "off", ""})


@dataclass(slots=True)
class StreamRecord:
    """One stream request as the producer received it, and how it ended."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes
    mode: str
    outcome: Outcome = "active"


@dataclass(slots=True)
class ProducerStats:
    """What the producer saw: stream requests started, finished, and left by their client.

    ``finished`` counts streams the producer ended itself (including ``crash``
    and ``error500``); ``client_gone`` counts streams whose connection went
    away before that (client disconnect, or the handler was cancelled).
    """

    started: int = 0
    finished: int = 0
    client_gone: int = 0
    records: deque[StreamRecord] = field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> int:
        return self.started - self.finished - self.client_gone

    def as_json(self) -> dict[str, int]:
        return {
            "started": self.started,
            "finished": self.finished,
            "client_gone": self.client_gone,
            "active": self.active,
        }

    async def wait_until(self, predicate: Callable[[ProducerStats], bool]) -> None:
        """Return once ``predicate(self)`` holds; bound it with ``asyncio.timeout``."""
        while not predicate(self):
            await self._changed.wait()

    def _begin(self, record: StreamRecord) -> None:
        self.started += 1
        self.records.append(record)
        self._notify()

    def _end(self, record: StreamRecord, outcome: Outcome) -> None:
        record.outcome = outcome
        if outcome == "client_gone":
            self.client_gone += 1
        else:
            self.finished += 1
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter once; the next change needs a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(frozen=True, slots=True)
class _Settings:
    speed: float
    stopping: asyncio.Event


STATS = web.AppKey("sse_sidecar_example_producer_stats", ProducerStats)
_SETTINGS = web.AppKey("sse_sidecar_example_producer_settings", _Settings)


@dataclass(frozen=True, slots=True)
class StreamParams:
    """One request's parameters; durations in seconds at speed 1."""

    mode: Mode = "normal"
    tokens: int = DEFAULT_TOKENS
    prompt: str = ""
    silence: float = 0.0
    quiet: float = 0.0
    keepalive: float = KEEPALIVE_INTERVAL
    delay: float = DEFAULT_DELAY
    ids: bool = False


class _BadRequest(Exception):
    pass


class _ClientGone(Exception):
    pass


class _ServerStopping(Exception):
    pass


def _scalar(raw: Mapping[str, object], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    raise _BadRequest(f"{name} must be a string or a number")


def _seconds(raw: Mapping[str, object], name: str, default: float) -> float:
    text = _scalar(raw, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _BadRequest(f"{name} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise _BadRequest(f"{name} must be between 0 and {MAX_SECONDS:g} seconds")
    return value


def _parse_params(raw: Mapping[str, object]) -> StreamParams:
    mode = _scalar(raw, "mode") or "normal"
    if mode not in MODES:
        raise _BadRequest(f"mode must be one of {', '.join(MODES)}")
    tokens_text = _scalar(raw, "tokens")
    try:
        tokens = DEFAULT_TOKENS if tokens_text is None else int(tokens_text)
    except ValueError:
        raise _BadRequest(f"tokens must be an integer, got {tokens_text!r}") from None
    if not 0 <= tokens <= MAX_TOKENS:
        raise _BadRequest(f"tokens must be between 0 and {MAX_TOKENS}")
    ids = (_scalar(raw, "ids") or "").lower()
    if ids not in _TRUTHY | _FALSY:
        raise _BadRequest("ids must be 1 or 0")
    silence = _seconds(raw, "silence", DEFAULT_SILENCE if mode in _THINKING_MODES else 0.0)
    keepalive = _seconds(raw, "keepalive", KEEPALIVE_INTERVAL)
    if keepalive == 0:
        raise _BadRequest("keepalive must be more than 0 seconds")
    # By default keepalive comments cover two intervals (at most half of the
    # silence) and the rest is quiet: no bytes at all, long enough for the
    # sidecar's default 15 s heartbeat to show through.
    quiet = _seconds(raw, "quiet", silence - min(2 * keepalive, silence / 2))
    return StreamParams(
        mode=cast(Mode, mode),  # checked against MODES above
        tokens=tokens,
        prompt=_prompt(raw),
        silence=silence,
        quiet=min(quiet, silence),
        keepalive=keepalive,
        delay=_seconds(raw, "delay", DEFAULT_DELAY),
        ids=ids in _TRUTHY,
    )


def _prompt(raw: Mapping[str, object]) -> str:
    prompt = raw.get("prompt")
    messages = raw.get("messages")
    if prompt is None and isinstance(messages, list) and messages:
        # An OpenAI-style body: echo the last message.
        last = messages[-1]
        prompt = last.get("content") if isinstance(last, dict) else None
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise _BadRequest("prompt must be a string")
    return prompt


def _answer_tokens(prompt: str, count: int) -> list[str]:
    echo = f'You asked: "{prompt}". ' if prompt.strip() else ""
    words = (echo + ANSWER).split()
    # LLM-style tokens: a word with its leading space, cycling if more are asked for.
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(count)]


class _Stream:
    """One streamed answer: the write path and the clock of a single request."""

    def __init__(self, request: web.Request, params: StreamParams, settings: _Settings) -> None:
        self.request = request
        self.params = params
        self.response: web.StreamResponse | None = None
        self._settings = settings
        self._tokens = _answer_tokens(params.prompt, params.tokens)
        self._next_id = 1

    def check(self) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone
        if self._settings.stopping.is_set():
            raise _ServerStopping

    async def pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds / self._settings.speed
        while True:
            self.check()
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, POLL_STEP))

    async def start(self) -> None:
        self.check()
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await self.response.prepare(self.request)
        except ConnectionResetError as exc:
            raise _ClientGone from exc

    async def send(self, chunk: bytes) -> None:
        assert self.response is not None, "start() first"
        self.check()
        try:
            await self.response.write(chunk)
        except ConnectionResetError as exc:
            raise _ClientGone from exc

    async def event(self, name: str, data: str) -> None:
        lines = []
        if self.params.ids:
            lines.append(f"id: {self._next_id}")
            self._next_id += 1
        lines += [f"event: {name}", f"data: {data}", "", ""]
        await self.send("\n".join(lines).encode())

    async def tokens(self, start: int, stop: int) -> None:
        for text in self._tokens[start:stop]:
            await self.event("token", json.dumps({"text": text}, ensure_ascii=False))
            await self.pause(TOKEN_INTERVAL)

    async def think(self) -> None:
        """The silence mid-answer: keepalive comments first, then no bytes at all."""
        p = self.params
        elapsed = 0.0
        while elapsed + p.keepalive <= p.silence - p.quiet + 1e-9:
            await self.pause(p.keepalive)
            await self.send(b": keepalive\n\n")
            elapsed += p.keepalive
        await self.pause(p.silence - elapsed)


async def _answer(stream: _Stream, *, terminal: bool = True) -> None:
    await stream.start()
    third = stream.params.tokens // 3
    await stream.tokens(0, third)
    await stream.think()
    await stream.tokens(third, stream.params.tokens)
    if terminal:
        await stream.event("done", "[DONE]")


async def _play(stream: _Stream) -> web.StreamResponse:
    """Run the script of the request's mode; return the response to finish."""
    mode = stream.params.mode
    if mode == "error500":
        error = {"type": "server_error", "message": "model overloaded"}
        return web.json_response({"error": error}, status=500)
    if mode == "slow-headers":
        await stream.pause(stream.params.delay)
    if mode in {"normal", "slow-headers", "noterm"}:
        await _answer(stream, terminal=mode != "noterm")
    else:
        await stream.start()
        if mode == "crash":
            await stream.tokens(0, max(1, stream.params.tokens // 3))
            # Cut the TCP connection inside the chunked body: the client sees
            # a truncated response, not a clean end.
            if stream.request.transport is not None:
                stream.request.transport.abort()
        elif mode == "garbage":
            await stream.tokens(0, 2)
            await stream.send(b"data: \xff\xfe\xfa\n\n")
            await stream.pause(GARBAGE_LINGER)
        else:  # hang
            await stream.tokens(0, 1)
            await stream.pause(math.inf)
    assert stream.response is not None
    return stream.response


async def _read_params(request: web.Request) -> tuple[StreamParams, bytes]:
    raw: dict[str, object] = dict(request.query)
    body = await request.read()
    if request.method == "POST" and body.strip():
        try:
            decoded = json.loads(body)
        except ValueError:
            raise _BadRequest("the body must be a JSON object") from None
        if not isinstance(decoded, dict):
            raise _BadRequest("the body must be a JSON object")
        raw.update(decoded)
    return _parse_params(raw), body


async def _handle_stream(request: web.Request) -> web.StreamResponse:
    try:
        params, body = await _read_params(request)
    except _BadRequest as exc:
        error = {"type": "invalid_request", "message": str(exc)}
        return web.json_response({"error": error}, status=400)
    stats = request.app[STATS]
    record = StreamRecord(
        request.method, request.path, request.query_string, request.headers, body, params.mode
    )
    stats._begin(record)
    stream = _Stream(request, params, request.app[_SETTINGS])
    outcome: Outcome = "client_gone"
    try:
        response = await _play(stream)
        outcome = "finished"
    except _ClientGone:
        # aiohttp's write_eof on the dead connection fails quietly.
        return stream.response or web.Response(status=499)
    except _ServerStopping:
        # End the stream cleanly (no terminal event), as a server going away does.
        outcome = "finished"
        return stream.response or web.Response(status=503, text="shutting down")
    finally:
        stats._end(record, outcome)
    return response


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _demo(_request: web.Request) -> web.Response:
    """The demo page (``demo.html``, package data): a stream to watch through the sidecar."""
    page = resources.files("sidecar.examples").joinpath("demo.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def _on_shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for handlers: every stream ends within POLL_STEP.
    app[_SETTINGS].stopping.set()


def create_app(*, speed: float = 1.0) -> web.Application:
    """The example producer; ``speed`` divides every delay (100 = a hundred times faster)."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    app = web.Application()
    app[STATS] = ProducerStats()
    app[_SETTINGS] = _Settings(speed=speed, stopping=asyncio.Event())
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/demo", _demo)
    app.router.add_get("/demo/", _demo)
    app.router.add_get("/{tail:.*}", _handle_stream, allow_head=False)
    app.router.add_post("/{tail:.*}", _handle_stream)
    return app


async def _serve(host: str, port: int, speed: float) -> int:
    runner = web.AppRunner(create_app(speed=speed), shutdown_timeout=5.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            print(f"example producer: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
        print(
            f"example producer listening on {url} (speed {speed:g}); try: curl -N {url}", flush=True
        )
        await until_signalled()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the example producer until SIGINT/SIGTERM; return the exit status."""
    args = arg_parser(
        "sse-sidecar example-producer",
        "Serve an example SSE producer that imitates an LLM chat backend.",
        8000,
    ).parse_args(argv)
    return run(lambda: _serve(args.host, args.port, args.speed))


if __name__ == "__main__":
    raise SystemExit(main())
