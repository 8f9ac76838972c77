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

``resumable=1`` makes the run outlive its connection, as producers that
resume by event id do (sidecar/examples/runs.py): ids name the run
(``<run>-<n>``) and a request with ``Last-Event-ID`` gets the rest without
a restart; ``style=responses`` speaks OpenAI's background Responses form
instead (``sequence_number``, resumed by ``GET …/responses/<id>?starting_after=N``).
``cut``, ``cuts``, ``cut_how`` and ``repeat`` break its connections on purpose.

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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from sidecar.examples import runs as resumable
from sidecar.examples.producer_params import (
    ANSWER,
    DEFAULT_TOKENS,
    GARBAGE_LINGER,
    POLL_STEP,
    TOKEN_INTERVAL,
    BadRequest,
    StreamParams,
    parse_params,
)
from sidecar.examples.producer_stats import STATS, Outcome, ProducerStats, StreamRecord
from sidecar.examples.running import arg_parser, run, until_signalled
from sidecar.examples.runs import RunLog, Runs

# The producer's vocabulary, where its users (tests, the demo) look for it.
__all__ = [
    "ANSWER",
    "DEFAULT_TOKENS",
    "STATS",
    "ProducerStats",
    "StreamParams",
    "StreamRecord",
    "create_app",
    "main",
]


@dataclass(frozen=True, slots=True)
class _Settings:
    speed: float
    stopping: asyncio.Event


class _ClientGone(Exception):
    pass


class _ServerStopping(Exception):
    pass


_SETTINGS = web.AppKey("sse_sidecar_example_producer_settings", _Settings)
RUNS = web.AppKey("sse_sidecar_example_producer_runs", Runs)


def _answer_tokens(prompt: str, count: int) -> list[str]:
    echo = f'You asked: "{prompt}". ' if prompt.strip() else ""
    words = (echo + ANSWER).split()
    # LLM-style tokens: a word with its leading space, cycling if more are asked for.
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(count)]


class _Stream:
    """One streamed answer: the write path and the clock of a single request.

    With a ``run`` (a resumable run) the answer goes into the run's log
    instead, whatever connection follows it; ``abandoned`` says nobody
    read it for so long that it may stop.
    """

    def __init__(
        self,
        request: web.Request,
        params: StreamParams,
        settings: _Settings,
        run: RunLog | None = None,
        abandoned: Callable[[], bool] = bool,
    ) -> None:
        self.request = request
        self.params = params
        self.response: web.StreamResponse | None = None
        self._settings = settings
        self._tokens = _answer_tokens(params.prompt, params.tokens)
        self._next_id = 1
        self._run = run
        self._abandoned = abandoned

    def check(self) -> None:
        if self._run is not None:
            if self._abandoned():
                raise _ClientGone
        elif (transport := self.request.transport) is None or transport.is_closing():
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
        if self._run is not None:
            if self._run.style == "responses":
                self._run.event("created", "")
            return
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await self.response.prepare(self.request)
        except ConnectionResetError as exc:
            raise _ClientGone from exc

    async def send(self, chunk: bytes) -> None:
        self.check()
        if self._run is not None:
            self._run.comment(chunk)  # the script sends comments; events go by event()
            return
        assert self.response is not None, "start() first"
        try:
            await self.response.write(chunk)
        except ConnectionResetError as exc:
            raise _ClientGone from exc

    async def event(self, name: str, data: str) -> None:
        if self._run is not None:
            self.check()
            self._run.event(name, data)
            return
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


async def _play(stream: _Stream) -> web.StreamResponse | None:
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
    return stream.response  # None for a resumable run: its connections have theirs


async def _read_params(request: web.Request) -> tuple[StreamParams, bytes]:
    raw: dict[str, object] = dict(request.query)
    body = await request.read()
    if request.method == "POST" and body.strip():
        try:
            decoded = json.loads(body)
        except ValueError:
            raise BadRequest("the body must be a JSON object") from None
        if not isinstance(decoded, dict):
            raise BadRequest("the body must be a JSON object")
        raw.update(decoded)
    return parse_params(raw), body


async def _handle_stream(request: web.Request) -> web.StreamResponse:
    target = resumable.resume_target(request)
    if target is not None:
        app = request.app
        return await resumable.serve_resume(
            request, target, app[RUNS], app[STATS], app[_SETTINGS].stopping.is_set
        )
    try:
        params, body = await _read_params(request)
    except BadRequest as exc:
        error = {"type": "invalid_request", "message": str(exc)}
        return web.json_response({"error": error}, status=400)
    stats = request.app[STATS]
    record = StreamRecord(
        request.method, request.path, request.query_string, request.headers, body, params.mode
    )
    stats._begin(record)
    if params.resumable:
        return await _start_run(request, params, record)
    stream = _Stream(request, params, request.app[_SETTINGS])
    outcome: Outcome = "client_gone"
    try:
        response = await _play(stream)
        assert response is not None
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


async def _start_run(
    request: web.Request, params: StreamParams, record: StreamRecord
) -> web.StreamResponse:
    """A resumable run: its answer goes on in a task of its own; this request follows it."""
    app = request.app
    runs = app[RUNS]
    run = RunLog(
        params.style, cut=params.cut, cuts=params.cuts, cut_how=params.cut_how, repeat=params.repeat
    )
    runs.add(run)
    stream = _Stream(request, params, app[_SETTINGS], run, lambda: runs.abandoned(run))
    task = asyncio.get_running_loop().create_task(_generate(stream, run, app[STATS], record))
    runs.tasks.add(task)
    task.add_done_callback(runs.tasks.discard)
    return await resumable.serve(request, run, 0, app[_SETTINGS].stopping.is_set)


async def _generate(
    stream: _Stream, run: RunLog, stats: ProducerStats, record: StreamRecord
) -> None:
    outcome: Outcome = "client_gone"  # nobody read it for RUN_KEEP
    try:
        await _play(stream)
        outcome = "finished"
    except _ClientGone:
        pass
    except _ServerStopping:
        outcome = "finished"
    finally:
        run.finish()
        stats._end(record, outcome)


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


async def _on_cleanup(app: web.Application) -> None:
    tasks = list(app[RUNS].tasks)  # resumable runs end within POLL_STEP of stopping
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(*, speed: float = 1.0) -> web.Application:
    """The example producer; ``speed`` divides every delay (100 = a hundred times faster)."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    app = web.Application()
    app[STATS] = ProducerStats()
    app[_SETTINGS] = _Settings(speed=speed, stopping=asyncio.Event())
    app[RUNS] = Runs()
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
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
