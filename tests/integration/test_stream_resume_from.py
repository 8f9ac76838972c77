"""A stream that starts from a cursor (a run taken over): its first request is already a resume.

The sidecar's own app serves the route, plus one handler that starts a
:class:`StreamRun` with ``resume_from`` and a kept request, as a replica
taking over a dead one's run does; the upstream is a real scripted server.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from sidecar.app import create_app
from sidecar.context import CONTEXT, StreamHandle
from sidecar.services import RouteServices
from sidecar.sse import Event
from sidecar.stream.run import StreamRun
from sidecar.upstream.resumption import KeptRequest, ResumeCursor
from tests.conftest import Script, make_config, sse
from tests.integration.streams import read_stream

Start = Callable[..., Any]


@pytest.fixture
async def serve_takeover(upstream) -> AsyncIterator[Start]:
    """Start an app whose /takeover resumes ``kept`` after ``cursor``; its base URL."""
    runners: list[web.AppRunner] = []

    async def start(kept: KeptRequest, cursor: ResumeCursor, **resume: Any) -> str:
        block = {"enabled": True, "backoff": "10ms", "max_backoff": "10ms", **resume}
        config = make_config(upstream.url, upstream_resume=block)
        app = create_app(config)
        services = RouteServices(config.routes[0], app[CONTEXT])

        async def takeover(request: web.Request) -> web.StreamResponse:
            handle = StreamHandle(secrets.token_hex(8), "test")
            url = URL(kept.url, encoded=True)
            run = StreamRun(services, request, handle, url, None, None,
                            resume_from=cursor, kept=kept)  # fmt: skip
            assert (run.kept, run.cursor) == (kept, cursor)
            response = await run.serve()
            assert response is not None
            return response

        app.router.add_get("/takeover", takeover)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/takeover"

    yield start
    for runner in runners:
        await runner.cleanup()


def token(n: int) -> bytes:
    return sse(f"id: run-{n}\nevent: token\ndata: {n}\n\n")


async def test_the_first_request_resumes_after_the_cursor(upstream, serve_takeover):
    upstream.script = Script([token(6), token(7), token(8), sse("event: done\ndata: [DONE]\n\n")])
    kept = KeptRequest("POST", upstream.url + "/v1/x?a=1", (("X-Trace", "t1"),), b'{"q": 1}')
    cursor = ResumeCursor()
    cursor.observe(Event("7", "token", "run-7"))
    url = await serve_takeover(kept, cursor)
    async with aiohttp.ClientSession() as http:
        got = await read_stream(http, "GET", url)
    assert [e.id for e in got.events] == ["run-8", None]  # the repeats 6 and 7 dropped
    assert got.kinds()[-1] == "done"
    (sent,) = upstream.requests
    assert (sent.method, sent.path, sent.query, sent.body) == ("POST", "/v1/x", "a=1", b'{"q": 1}')
    assert (sent.headers["Last-Event-ID"], sent.headers["X-Trace"]) == ("run-7", "t1")


async def test_a_resume_that_is_refused_ends_with_an_error_event_not_a_passthrough(
    upstream, serve_takeover
):
    upstream.script = Script([b'{"error": "gone"}'], status=404, content_type="application/json")
    cursor = ResumeCursor()
    cursor.observe(Event("1", None, "9"))
    url = await serve_takeover(KeptRequest("GET", upstream.url + "/v1/x", ()), cursor, attempts=2)
    async with aiohttp.ClientSession() as http:
        got = await read_stream(http, "GET", url)
    assert got.status == 200  # committed: its followers already have their headers
    assert got.error()["code"] == "upstream_disconnected"
    assert len(upstream.requests) == 2


async def test_a_cursor_without_an_id_cannot_resume(upstream, serve_takeover):
    url = await serve_takeover(KeptRequest("GET", upstream.url + "/v1/x", ()), ResumeCursor())
    async with aiohttp.ClientSession() as http:
        got = await read_stream(http, "GET", url)
    assert got.error()["code"] == "upstream_disconnected"
    assert upstream.requests == []
