"""profile: openclaw against the bundled example gateway (the real protocol), in process
and as a real process killed mid-run.

The real gateway is tested in tests/e2e/test_openclaw.py; these run in a
second and cover what that one cannot do cheaply: many runs, a refused
connect of each kind, chat.abort as the gateway sees it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.errors import GatewayRefused, UpstreamDisconnected
from sidecar.examples.gateway import Gateway, final_text
from sidecar.upstream.gateway import GatewayConnection
from sidecar.upstream.gateway_runs import GatewayRunSource
from sidecar.upstream.openclaw import Handshake
from sidecar.upstream.ws_profile import WebSocketProfile
from tests.conftest import make_config
from tests.integration.processes import free_port
from tests.integration.streams import read_stream

SPEED = 10.0
TOKEN = "s3cret"


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(speed=SPEED, token=TOKEN)
    await gw.start("127.0.0.1", 0)
    yield gw
    await gw.stop()


@pytest.fixture
async def slow_gateway() -> AsyncIterator[Gateway]:
    """At speed 1 a "[slow]" run takes over ten seconds: it is still going when we check."""
    gw = Gateway(speed=1.0, token=TOKEN)
    await gw.start("127.0.0.1", 0)
    yield gw
    await gw.stop()


def profile(**kwargs: object) -> WebSocketProfile:
    return WebSocketProfile(profile="openclaw", token=TOKEN, **kwargs)  # type: ignore[arg-type]


def run_on(conn: GatewayConnection, message: str, session: str = "main") -> GatewayRunSource:
    return GatewayRunSource(
        conn, body={"message": message}, session_key=session, request_id="r",
        idempotency_key=f"k-{message}-{session}",
    )  # fmt: skip


async def assemble(src: GatewayRunSource) -> tuple[str, list[str]]:
    text, kinds = "", []
    async with asyncio.timeout(10):
        while not src.done:
            for event in await src.read():
                kinds.append(event.event or "message")
                data = json.loads(event.data or "null")
                if event.event == "delta":
                    text += data["text"]
                elif event.event == "reset":
                    text = data["text"]
    return text, kinds


async def test_many_runs_share_one_connection_without_cross_talk(gateway: Gateway):
    conn = GatewayConnection(gateway.url, profile())
    messages = [f"question {i}" + (" [reset]" if i % 3 == 0 else "") for i in range(12)]
    sources = [run_on(conn, m, f"User{i}") for i, m in enumerate(messages)]
    try:
        for src in sources:
            await src.open()
        results = await asyncio.gather(*(assemble(s) for s in sources))
    finally:
        await conn.close()
    for message, (text, kinds) in zip(messages, results, strict=True):
        assert text == final_text(message)
        assert kinds[-1] == "done"
    assert gateway.opened == 1
    assert {r.session_key for r in gateway.runs} == {f"agent:main:user{i}" for i in range(12)}


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"token": "wrong"}, "AUTH_TOKEN_MISMATCH"),
        ({"token": None}, "NOT_PAIRED"),
        ({"handshake": Handshake(protocol=3)}, "INVALID_REQUEST"),
    ],
)
async def test_a_refused_connect_names_the_code(gateway: Gateway, kwargs, code):
    conn = GatewayConnection(
        gateway.url, WebSocketProfile(profile="openclaw", **{"token": TOKEN, **kwargs})
    )
    try:
        with pytest.raises(GatewayRefused) as info:
            await run_on(conn, "hi").open()
    finally:
        await conn.close()
    assert info.value.gateway_code == code


async def test_leaving_mid_run_sends_chat_abort(gateway: Gateway):
    conn = GatewayConnection(gateway.url, profile())
    src = run_on(conn, "a long answer [slow]")
    try:
        await src.open()
        await src.read()
        src.abort()
        async with asyncio.timeout(2):
            await gateway.wait_until(lambda g: g.runs[-1].state == "aborted")
    finally:
        await conn.close()


async def test_the_route_answers_a_refused_connect_with_502(gateway: Gateway, start_sidecar):
    ws = {"profile": "openclaw", "token": "wrong"}
    sc = await start_sidecar(make_config(gateway.url, websocket=ws))
    got = await read_stream(sc.http, "POST", sc.url + "/s", json={"message": "hi"})
    assert got.status == 502
    error = json.loads(got.raw)["error"]
    assert (error["code"], error["gateway_code"]) == ("upstream_refused", "AUTH_TOKEN_MISMATCH")
    assert "wrong" not in error["message"]


async def test_gateway_process_killed_mid_run():
    """The bundled gateway as a real process (python -m), killed with SIGKILL mid-run."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.examples.gateway", "--port", "0", "--speed", str(SPEED),
        "--token", TOKEN, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("example gateway listening on ws://127.0.0.1:"), line
        conn = GatewayConnection(line.split()[4], profile())
        src = run_on(conn, "a long answer [slow]")
        await src.open()
        await src.read()
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(UpstreamDisconnected):
            await assemble(src)
        assert time.monotonic() - killed < 1.0
        await conn.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _leave_after_first_delta(sc, session: str, message: str) -> None:
    async with sc.http.post(
        sc.url + "/s", json={"message": message}, headers={"X-Session-Key": session}
    ) as resp:
        async for line in resp.content:
            if line.startswith(b"event: delta"):
                return  # leaving the block closes the connection


async def test_a_client_that_leaves_gets_its_run_aborted(slow_gateway: Gateway, start_sidecar):
    ws = {"profile": "openclaw", "token": TOKEN}
    sc = await start_sidecar(make_config(slow_gateway.url, websocket=ws))
    await _leave_after_first_delta(sc, "leaver", "a long answer [slow]")
    async with asyncio.timeout(1):
        await slow_gateway.wait_until(lambda g: g.runs[-1].state == "aborted")
    assert slow_gateway.runs[-1].session_key == "agent:main:leaver"


async def test_with_resume_the_run_is_aborted_only_when_the_grace_ends(
    slow_gateway: Gateway, start_sidecar
):
    ws = {"profile": "openclaw", "token": TOKEN}
    resume = {"enabled": True, "grace": "0.5s"}
    sc = await start_sidecar(make_config(slow_gateway.url, websocket=ws, resume=resume))
    await _leave_after_first_delta(sc, "held", "a long answer [slow]")
    left = time.monotonic()
    await asyncio.sleep(0.3)
    assert slow_gateway.runs[-1].state == "running"  # resume holds it for the grace period
    async with asyncio.timeout(2):
        await slow_gateway.wait_until(lambda g: g.runs[-1].state == "aborted")
    assert time.monotonic() - left >= 0.5


async def test_a_limit_that_ends_the_stream_aborts_the_run(slow_gateway: Gateway, start_sidecar):
    ws = {"profile": "openclaw", "token": TOKEN}
    config = make_config(slow_gateway.url, websocket=ws, limits={"max_duration": "1s"})
    sc = await start_sidecar(config)
    got = await read_stream(
        sc.http, "POST", sc.url + "/s", json={"message": "long [slow]"},
        headers={"X-Session-Key": "limited"},
    )  # fmt: skip
    assert got.error()["code"] == "upstream_timeout"
    async with asyncio.timeout(1):
        await slow_gateway.wait_until(lambda g: g.runs[-1].state == "aborted")


async def test_sidecar_shutdown_aborts_running_runs(slow_gateway: Gateway, start_sidecar):
    ws = {"profile": "openclaw", "token": TOKEN}
    sc = await start_sidecar(
        make_config(slow_gateway.url, websocket=ws, top={"drain_timeout": "0.2s"})
    )
    reader = asyncio.ensure_future(
        read_stream(
            sc.http, "POST", sc.url + "/s", json={"message": "long [slow]"},
            headers={"X-Session-Key": "draining"},
        )
    )  # fmt: skip
    async with asyncio.timeout(5):
        await slow_gateway.wait_until(lambda g: bool(g.runs))
    await asyncio.sleep(0.6)  # past the first delta (0.3 s): the stream is committed
    await sc.sidecar.drain()
    got = await reader
    assert got.error()["code"] == "shutdown"
    async with asyncio.timeout(1):
        await slow_gateway.wait_until(lambda g: g.runs[-1].state == "aborted")


async def test_a_refusal_after_the_commit_is_an_error_event(gateway: Gateway, start_sidecar):
    ws = {"profile": "openclaw", "token": "wrong"}
    sc = await start_sidecar(make_config(gateway.url, websocket=ws, stream={"commit_after": 0}))
    got = await read_stream(sc.http, "POST", sc.url + "/s", json={"message": "hi"})
    assert got.status == 200
    error = got.error()
    assert error["code"] == "upstream_refused"
    assert "AUTH_TOKEN_MISMATCH" in error["message"]


async def test_new_streams_wait_for_the_reconnect(start_sidecar):
    port = free_port()
    first = Gateway(speed=SPEED, token=TOKEN)
    await first.start("127.0.0.1", port)
    ws = {"profile": "openclaw", "token": TOKEN, "connect_timeout": "5s"}
    sc = await start_sidecar(make_config(first.url, websocket=ws))
    body = {"json": {"message": "one"}, "headers": {"X-Session-Key": "a"}}
    assert (await read_stream(sc.http, "POST", sc.url + "/s", **body)).kinds()[-1] == "done"
    first.kill()
    second = Gateway(speed=SPEED, token=TOKEN)
    # The gateway comes back a moment after the next stream started.
    later = asyncio.get_running_loop().call_later(
        0.5, lambda: asyncio.ensure_future(second.start("127.0.0.1", port))
    )
    try:
        got = await read_stream(sc.http, "POST", sc.url + "/s", json={"message": "two"})
        assert got.kinds()[-1] == "done", got.kinds()
        assert json.loads(got.events[-1].data or "")["text"] == final_text("two")
    finally:
        later.cancel()
        await second.stop()
