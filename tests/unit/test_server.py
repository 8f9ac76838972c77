"""The stream port's guards (sidecar/server.py) that need no sockets."""

from __future__ import annotations

import inspect
import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.app import create_app
from sidecar.config import ServerLimits
from sidecar.metrics import Metrics
from sidecar.server import Guard, GuardedServer, Handler, HeadQueue, guard_heads
from tests.conftest import make_config


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="passed")


def _guarded(max_head: int) -> tuple[Guard, Handler]:
    limits = ServerLimits(max_request_head_bytes=max_head)
    guard = Guard(limits, Metrics())
    return guard, guard_heads(limits, guard, _ok)


async def test_a_head_within_the_cap_is_the_handlers_own_coroutine() -> None:
    _, guarded = _guarded(4096)
    request = make_mocked_request("GET", "/s", headers={"Accept": "text/event-stream"})
    awaitable = guarded(request)
    # Not wrapped in a coroutine of the guard's: the stream holds no frame of it.
    assert inspect.iscoroutine(awaitable)
    assert awaitable.cr_code is _ok.__code__
    response = await awaitable
    assert isinstance(response, web.Response)
    assert response.text == "passed"


async def test_a_head_over_the_cap_is_431_without_the_handler() -> None:
    guard, guarded = _guarded(200)
    request = make_mocked_request("GET", "/s", headers={"X-Pad": "p" * 300})
    response = await guarded(request)
    assert isinstance(response, web.Response)
    assert response.status == 431
    assert response.body is not None
    assert json.loads(bytes(response.body))["error"]["code"] == "request_head_too_large"
    text = guard.metrics.render().decode()
    assert 'sse_sidecar_bad_requests_total{reason="head_too_large"} 1.0' in text


def test_the_stream_app_has_no_middleware() -> None:
    # Each middleware is a coroutine frame (and aiohttp adds one more) held
    # for the whole of every stream; the head cap is the runner's instead.
    app = create_app(make_config("http://127.0.0.1:9/"))
    assert list(app.middlewares) == []


def test_the_head_queue_is_first_in_first_out() -> None:
    heads = HeadQueue()
    assert not heads
    heads.append("a")
    heads.append("b")
    assert len(heads) == 2
    assert heads.popleft() == "a"
    assert heads.popleft() == "b"
    assert not heads


async def test_a_connection_holds_no_dict_and_no_deque() -> None:
    limits = ServerLimits()
    guard = Guard(limits, Metrics())
    handler = GuardedServer(guard, _ok)()
    try:
        assert not hasattr(handler, "__dict__")
        assert isinstance(handler._messages, HeadQueue)
    finally:
        if handler._keepalive_handle is not None:
            handler._keepalive_handle.cancel()
