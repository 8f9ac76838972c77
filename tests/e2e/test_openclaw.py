"""The sidecar in front of the real OpenClaw gateway (npm openclaw 2026.9.6).

One gateway process for the module (it takes ~11 s or more to start and
1.2 GB), with the model server of tests/e2e/openclaw_env.py behind it. Each
test starts its own sidecar with the five-line ``profile: openclaw`` route of
the README. The kill test runs last: it takes the gateway down.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.sync.client import connect as sync_connect

from sidecar.sse import Decoder, Event
from sidecar.upstream.openclaw import Handshake, connect_frame
from tests.conftest import make_config
from tests.e2e.openclaw_env import TOKEN, GatewayProcess, ModelServer, answer_for, install
from tests.integration.processes import free_port

pytestmark = pytest.mark.openclaw

#: A run's own time once the gateway is warm is 0.2-2 s; the machine is shared.
RUN_LIMIT = 60.0


class Env:
    def __init__(self, gateway: GatewayProcess, model: ModelServer) -> None:
        self.gateway = gateway
        self.model = model


@pytest.fixture(scope="module")
def openclaw() -> Iterator[Env]:
    reason = install()
    if reason is not None:
        pytest.skip(f"openclaw e2e: {reason}")
    model = ModelServer()
    model.start()
    root = Path(tempfile.mkdtemp(prefix="sse-sidecar-openclaw-"))
    gateway = GatewayProcess(root, free_port(), model.port)
    try:
        gateway.start()
        _warm_up(gateway)
        yield Env(gateway, model)
    finally:
        gateway.stop()
        model.stop()


def _warm_up(gateway: GatewayProcess) -> None:
    """The first run bootstraps the agent's workspace (seconds): do it before any test."""
    hello = connect_frame(Handshake(), TOKEN, "c-1", tools=False)
    with sync_connect(gateway.url, max_size=2**24, open_timeout=30) as ws:
        ws.send(json.dumps(hello))
        agent = {"message": "warm up tag:warm", "sessionKey": "warmup", "idempotencyKey": "w1"}
        ws.send(json.dumps({"type": "req", "id": "a-1", "method": "agent", "params": agent}))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=deadline - time.monotonic()))
            if frame.get("type") == "res" and frame.get("id") == "a-1":
                status = (frame.get("payload") or {}).get("status")
                if not frame.get("ok"):
                    raise RuntimeError(f"warm-up run failed: {frame}")
                if status != "accepted":
                    return
    raise RuntimeError(f"warm-up run did not end: {gateway.log_tail()}")


def route(env: Env, **websocket: Any) -> Any:
    block = {"profile": "openclaw", "token": TOKEN, **websocket}
    return make_config(env.gateway.url, session={"from": "header:X-Session-Key"}, websocket=block)


class Stream:
    """One client stream, read event by event."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.events: list[Event] = []
        self._decoder = Decoder()
        self._buffer: list[Event] = []

    async def next(self) -> Event | None:
        while not self._buffer:
            chunk = await self.resp.content.readany()
            if not chunk:
                return None
            self._buffer = [i for i in self._decoder.feed(chunk) if isinstance(i, Event)]
        event = self._buffer.pop(0)
        self.events.append(event)
        return event

    async def until(self, kind: str) -> Event:
        while (event := await self.next()) is not None:
            if event.event == kind:
                return event
        raise AssertionError(f"stream ended without {kind}: {self.kinds()}")

    async def rest(self) -> list[Event]:
        while await self.next() is not None:
            pass
        return self.events

    def kinds(self) -> list[str]:
        return [e.event or "message" for e in self.events if e.data is not None]

    def text(self) -> str:
        held = ""
        for e in self.events:
            if e.event == "delta":
                held += json.loads(e.data or "{}")["text"]
            elif e.event == "reset":
                held = json.loads(e.data or "{}")["text"]
        return held

    def terminal(self) -> tuple[str, dict[str, Any]]:
        last = [e for e in self.events if e.data is not None and e.event != "keepalive"][-1]
        return last.event or "message", json.loads(last.data or "{}")


async def post(sc: Any, message: str, session: str) -> aiohttp.ClientResponse:
    return await sc.http.post(
        sc.url + "/s",
        json={"message": message},
        headers={"X-Session-Key": session},
        timeout=aiohttp.ClientTimeout(total=RUN_LIMIT),
    )


async def full_run(sc: Any, message: str, session: str) -> Stream:
    resp = await post(sc, message, session)
    assert resp.status == 200, await resp.text()
    stream = Stream(resp)
    async with asyncio.timeout(RUN_LIMIT):
        await stream.rest()
    resp.release()
    return stream


def assert_whole(stream: Stream, tag: str) -> None:
    expected = answer_for(f"tag:{tag}")
    kind, data = stream.terminal()
    assert kind == "done", stream.kinds()
    assert stream.text() == expected
    assert data["text"] == expected
    assert [k for k in stream.kinds() if k in ("done", "error", "end")] == ["done"]


async def closed_within(model: ModelServer, tag: str, since: float, limit: float) -> float:
    """Seconds from ``since`` until the model's stream for ``tag`` was closed."""
    deadline = time.monotonic() + limit + 5
    while time.monotonic() < deadline:
        done = [c for c in model.with_prompt(f"tag:{tag}") if c.closed is not None]
        if done:
            assert done[0].closed is not None
            return done[0].closed - since
        await asyncio.sleep(0.02)
    raise AssertionError(f"the model stream of {tag} was never closed")


# --- the tests -----------------------------------------------------------------------


async def test_a_streamed_answer_arrives_whole(openclaw: Env, start_sidecar):
    sc = await start_sidecar(route(openclaw))
    stream = await full_run(sc, "say it tag:whole", "e2e-whole")
    assert stream.kinds().count("delta") >= 1
    assert_whole(stream, "whole")


async def test_concurrent_runs_on_different_sessions_do_not_cross(
    openclaw: Env, start_sidecar, tmp_path
):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")  # a mounted Secret, with its trailing newline
    config = route(openclaw, token=None, token_file=str(secret))
    sc = await start_sidecar(config)
    tags = ["cross1", "cross2", "cross3"]
    streams = await asyncio.gather(*(full_run(sc, f"answer tag:{t}", f"e2e-{t}") for t in tags))
    for tag, stream in zip(tags, streams, strict=True):
        assert_whole(stream, tag)
    # One authenticated connection carried all three runs.
    conn = next(iter(sc.sidecar.ctx.gateways._connections.values()))
    assert conn.connects == 1


async def test_non_canonical_and_mixed_case_keys_are_followed(openclaw: Env, start_sidecar):
    sc = await start_sidecar(route(openclaw))
    plain, mixed = await asyncio.gather(
        full_run(sc, "plain key tag:plain", "plainkey"),
        full_run(sc, "mixed key tag:mixed", "agent:main:MixedCase"),
    )
    assert_whole(plain, "plain")
    assert_whole(mixed, "mixed")


async def test_a_client_that_leaves_stops_the_model_within_a_second(openclaw: Env, start_sidecar):
    sc = await start_sidecar(route(openclaw))
    resp = await post(sc, "a long one [slow] tag:leave", "e2e-leave")
    stream = Stream(resp)
    async with asyncio.timeout(RUN_LIMIT):
        await stream.until("delta")
    left = time.monotonic()
    resp.close()
    assert await closed_within(openclaw.model, "leave", left, 1.0) < 1.0
    [completion] = openclaw.model.with_prompt("tag:leave")
    assert not completion.finished
    # The session is free at once: the next run does not queue behind the old one.
    started = time.monotonic()
    assert_whole(await full_run(sc, "next tag:afterleave", "e2e-leave"), "afterleave")
    assert time.monotonic() - started < 15


async def test_a_replaced_stream_is_aborted_and_the_new_run_not_delayed(
    openclaw: Env, start_sidecar
):
    sc = await start_sidecar(route(openclaw))
    old_resp = await post(sc, "long [slow] tag:oldrun", "e2e-replace")
    old = Stream(old_resp)
    async with asyncio.timeout(RUN_LIMIT):
        await old.until("delta")
    replaced_at = time.monotonic()
    new = await full_run(sc, "short tag:newrun", "e2e-replace")
    took = time.monotonic() - replaced_at
    async with asyncio.timeout(10):
        await old.rest()
    kind, data = old.terminal()
    assert (kind, data["code"]) == ("error", "replaced")
    assert await closed_within(openclaw.model, "oldrun", replaced_at, 1.0) < 1.0
    assert_whole(new, "newrun")
    # The old run had ~20 s of words left: the new one did not wait for them.
    assert took < 15


async def test_tool_events_are_forwarded(openclaw: Env, start_sidecar):
    sc = await start_sidecar(route(openclaw, forward_tools=True))
    stream = await full_run(sc, "use a tool [tool] tag:tools", "e2e-tools")
    tools = [json.loads(e.data or "{}") for e in stream.events if e.event == "tool"]
    phases = [t.get("data", {}).get("phase") for t in tools]
    assert "start" in phases, tools
    assert "result" in phases, tools
    assert_whole(stream, "tools")


async def test_a_wrong_token_is_a_clear_error(openclaw: Env, start_sidecar, caplog):
    sc = await start_sidecar(route(openclaw, token="not-the-token"))
    started = time.monotonic()
    resp = await post(sc, "hi tag:denied", "e2e-denied")
    body = await resp.json()
    assert resp.status == 502
    assert body["error"]["code"] == "upstream_refused"
    assert body["error"]["gateway_code"] == "AUTH_TOKEN_MISMATCH"
    assert "AUTH_TOKEN_MISMATCH" in body["error"]["message"]
    assert time.monotonic() - started < 10
    assert "not-the-token" not in caplog.text


async def test_gateway_killed_mid_run_is_upstream_disconnected_at_once(
    openclaw: Env, start_sidecar
):
    # Last: the gateway does not come back.
    sc = await start_sidecar(route(openclaw))
    resp = await post(sc, "long [slow] tag:killed", "e2e-killed")
    stream = Stream(resp)
    async with asyncio.timeout(RUN_LIMIT):
        await stream.until("delta")
    killed = time.monotonic()
    openclaw.gateway.kill()
    async with asyncio.timeout(5):
        await stream.rest()
    kind, data = stream.terminal()
    assert (kind, data["code"]) == ("error", "upstream_disconnected")
    assert data["partial"] is True
    assert time.monotonic() - killed < 1.0
