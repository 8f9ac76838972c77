"""WebSocket routes through the sidecar, against the bundled example gateway."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import serve

from sidecar.examples.gateway import Gateway, final_text
from tests.conftest import make_config
from tests.integration.streams import Received, read_stream

SPEED = 10.0
SESSION = "agent:main:main"


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(speed=SPEED, handshake=False)  # the generic profile: no connect
    await gw.start("127.0.0.1", 0)
    yield gw
    await gw.stop()


def ws_config(url: str, **route):
    return make_config(url, session={"from": "header:X-Session-Key"}, **route)


def assembled(got: Received) -> str:
    """What a client holds after applying every delta and reset."""
    text = ""
    for event in got.events:
        if event.event == "delta":
            text += json.loads(event.data or "{}")["text"]
        elif event.event == "reset":
            text = json.loads(event.data or "{}")["text"]
    return text


async def run(sc, message: str, session: str = SESSION, **kwargs) -> Received:
    return await read_stream(
        sc.http,
        "POST",
        sc.url + "/s",
        json={"message": message, "agentId": "main"},
        headers={"X-Session-Key": session},
        **kwargs,
    )


async def test_two_clients_on_one_agent_session_each_get_their_own_text(gateway, start_sidecar):
    # Two sessions keys for the sidecar (one stream each), one agent session
    # on the gateway: it broadcasts both runs' frames to both sockets.
    profile = {"request": {
        "type": "req", "id": "{request_id}", "method": "agent",
        "params": {"message": "{body.message}", "agentId": "{body.agentId}",
                   "sessionKey": SESSION, "idempotencyKey": "{idempotency_key}"},
    }, "event": {"session_key": "payload.sessionKey"}}  # fmt: skip
    sc = await start_sidecar(ws_config(gateway.url, websocket=profile))
    messages = ["tell me about otters", "and about the sea [slow]"]
    results = await asyncio.gather(
        *(run(sc, m, session=f"user-{i}") for i, m in enumerate(messages))
    )
    for message, got in zip(messages, results, strict=True):
        assert got.status == 200
        assert got.kinds()[-1] == "done"
        assert assembled(got) == final_text(message)
        assert json.loads(got.events[-1].data or "")["text"] == final_text(message)
    assert len(gateway.runs) == 2


async def test_reset_mid_run_loses_and_doubles_nothing(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url))
    message = "rethink this [reset]"
    got = await run(sc, message)
    assert "reset" in got.kinds()
    assert assembled(got) == final_text(message)


async def test_gateway_killed_mid_run_is_an_immediate_disconnect(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url, limits={"idle_timeout": "30s"}))
    loop = asyncio.get_running_loop()
    reader = asyncio.ensure_future(run(sc, "a long answer [slow]"))
    await asyncio.wait_for(gateway.wait_until(lambda g: bool(g.runs)), 5)
    await asyncio.sleep(0.3)
    killed = loop.time()
    gateway.kill()
    got = await asyncio.wait_for(reader, 5)
    assert loop.time() - killed < 1.0
    err = got.error()
    assert err["code"] == "upstream_disconnected"


@pytest.mark.parametrize(
    ("marker", "code"), [("[error]", "upstream_error"), ("[abort]", "upstream_aborted")]
)
async def test_error_and_aborted_states(gateway, start_sidecar, marker, code):
    sc = await start_sidecar(ws_config(gateway.url))
    got = await run(sc, f"fail please {marker}")
    err = got.error()
    assert err["code"] == code
    assert marker in err["message"]
    metrics = await sc.metrics()
    assert f'sse_sidecar_streams_total{{outcome="{code}",route="test"}} 1.0' in metrics


async def test_die_marker_gives_upstream_disconnected(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url))
    got = await run(sc, "vanish [die]")
    assert got.error()["code"] == "upstream_disconnected"


async def test_client_disconnect_closes_the_gateway_socket(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url))
    loop = asyncio.get_running_loop()
    async with sc.http.post(
        sc.url + "/s",
        json={"message": "talk slowly [slow]", "agentId": "main"},
        headers={"X-Session-Key": SESSION},
    ) as resp:
        await resp.content.readuntil(b"\n\n")
        resp.connection.transport.abort()  # type: ignore[union-attr]
        left = loop.time()
    record = gateway.connections[-1]
    await asyncio.wait_for(record.closed.wait(), 1.0)
    assert loop.time() - left < 1.0


async def test_replace_and_metrics_apply_to_websocket_routes(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url))
    first = asyncio.ensure_future(run(sc, "first [slow]"))
    await asyncio.wait_for(gateway.wait_until(lambda g: bool(g.runs)), 5)
    second = await run(sc, "second")
    old = await asyncio.wait_for(first, 2)
    assert old.error()["code"] == "replaced"
    assert assembled(second) == final_text("second")
    await asyncio.wait_for(gateway.connections[0].closed.wait(), 1.0)
    metrics = await sc.metrics()
    assert 'sse_sidecar_session_conflicts_total{policy="replace",route="test"} 1.0' in metrics
    assert 'sse_sidecar_streams_total{outcome="completed",route="test"} 1.0' in metrics


async def test_resume_applies_to_websocket_routes(gateway, start_sidecar):
    sc = await start_sidecar(ws_config(gateway.url, resume={"enabled": True, "grace": "5s"}))
    message = "resume me [slow]"
    async with sc.http.post(
        sc.url + "/s",
        json={"message": message, "agentId": "main"},
        headers={"X-Session-Key": SESSION},
    ) as resp:
        block = (await resp.content.readuntil(b"\n\n")).decode()
        resp.connection.transport.abort()  # type: ignore[union-attr]
    first = dict(line.split(": ", 1) for line in block.strip().split("\n"))
    assert first["event"] == "delta"
    got = await read_stream(
        sc.http,
        "POST",
        sc.url + "/s",
        json={"message": message, "agentId": "main"},
        headers={"X-Session-Key": SESSION, "Last-Event-ID": first["id"]},
    )
    held = json.loads(first["data"])["text"] + assembled(got)
    assert held == final_text(message)
    assert len(gateway.runs) == 1


async def test_malformed_frames_are_counted_not_fatal(start_sidecar):
    async def misbehave(ws) -> None:
        request = json.loads(await ws.recv())
        rid = request["id"]
        await ws.send("not json")
        await ws.send(b"\x00\x01binary")
        await ws.send(json.dumps(["not", "an", "object"]))
        await ws.send(json.dumps({"type": "event", "event": "chat"}))  # no payload
        await ws.send(json.dumps({"type": "res", "id": rid, "ok": True,
                                  "payload": {"runId": "r1", "status": "accepted"}}))  # fmt: skip
        for state, text in (("delta", "Hi"), ("final", "Hi there")):
            await ws.send(json.dumps({"type": "event", "event": "chat", "payload": {
                "sessionKey": SESSION, "runId": "r1", "state": state,
                "message": {"content": [{"type": "text", "text": text}]}}}))  # fmt: skip
        await asyncio.sleep(0.5)

    async with serve(misbehave, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        sc = await start_sidecar(ws_config(f"ws://127.0.0.1:{port}"))
        got = await run(sc, "hello")
    assert assembled(got) == "Hi there"
    assert got.kinds()[-1] == "done"
    metrics = await sc.metrics()
    for kind in ("not_json", "binary", "not_object", "missing_field"):
        assert (
            f'sse_sidecar_upstream_protocol_errors_total{{kind="{kind}",route="test"}} 1.0'
            in metrics
        )


async def test_unreachable_gateway(start_sidecar):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = await start_sidecar(ws_config(f"ws://127.0.0.1:{port}"))
    got = await run(sc, "hello")
    assert got.status == 502
    assert json.loads(got.raw)["error"]["code"] == "upstream_unreachable"
