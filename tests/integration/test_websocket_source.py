"""WebSocketSource against real gateways on loopback: the bundled example and misbehaving ones."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from sidecar.errors import (
    EventTooLarge,
    UpstreamAborted,
    UpstreamDisconnected,
    UpstreamRunFailed,
    UpstreamUnreachable,
)
from sidecar.examples.gateway import (
    ABORT_MESSAGE,
    ERROR_MESSAGE,
    Gateway,
    cumulative_texts,
    final_text,
)
from sidecar.examples.gateway import main as gateway_main
from sidecar.sse import Event
from sidecar.upstream.websocket import CLOSE_TIMEOUT, WebSocketSource
from sidecar.upstream.ws_profile import WebSocketProfile

# At speed 10 a delta comes every 4 ms and a run of ~170 characters takes ~0.25 s;
# "[slow]" runs take over a second, long enough to act on mid-run.
SPEED = 10.0
SESSION = "agent:main:main"


@pytest.fixture(autouse=True)
def _no_server_errors(caplog):
    """websockets logs (rather than raises) handler errors; any of them fails the test."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(speed=SPEED, handshake=False)  # the generic profile: no connect
    await gw.start("127.0.0.1", 0)
    yield gw
    await gw.stop()


def source(
    url: str,
    message: str,
    *,
    session: str | None = SESSION,
    profile: WebSocketProfile | None = None,
    request_id: str = "req-1",
) -> WebSocketSource:
    return WebSocketSource(
        url,
        profile or WebSocketProfile(),
        body={"message": message, "agentId": "main"},
        session_key=session,
        request_id=request_id,
        terminal_event="done",
    )


class Assembled:
    """What a client assembles: deltas appended, resets replacing, the terminal text."""

    def __init__(self) -> None:
        self.text = ""
        self.final: str | None = None
        self.events: list[Event] = []

    def apply(self, events: list[Event]) -> None:
        assert events, "read() returns at least one event until the run is done"
        for event in events:
            self.events.append(event)
            data = json.loads(event.data or "null")
            if event.event == "delta":
                self.text += data["text"]
            elif event.event == "reset":
                self.text = data["text"]
            elif event.event == "done":
                self.final = data["text"]

    def count(self, name: str) -> int:
        return sum(e.event == name for e in self.events)


async def assemble(src: WebSocketSource, into: Assembled | None = None) -> Assembled:
    out = into or Assembled()
    async with asyncio.timeout(10):
        while not src.done:
            out.apply(await src.read())
    assert await src.read() == []
    return out


async def run_to_end(src: WebSocketSource) -> Assembled:
    async with src:
        return await assemble(src)


# --- the example gateway's text ---------------------------------------------------------------


@pytest.mark.parametrize("message", ["hi", "déjà vu 🙂 [slow]", "", "x [reset] [tool]"])
def test_generated_texts_grow_to_the_final_text(message: str):
    texts = cumulative_texts(message)
    assert texts == cumulative_texts(message)  # deterministic
    assert texts[-1] == final_text(message)
    rewrites = [b for a, b in itertools.pairwise(texts) if not b.startswith(a)]
    assert len(rewrites) == ("[reset]" in message)
    assert all(len(b) < len(a) for a, b in itertools.pairwise(texts) if b in rewrites)


def test_gateway_cli_rejects_a_bad_speed(capsys):
    with pytest.raises(SystemExit) as info:
        gateway_main(["--speed", "0"])
    assert info.value.code == 2
    assert "positive number" in capsys.readouterr().err


# --- the happy path ------------------------------------------------------------------------


async def test_one_run_assembles_the_generated_text(gateway: Gateway):
    message = "what is a sidecar?"
    got = await run_to_end(source(gateway.url, message))
    assert got.text == got.final == final_text(message)
    assert got.events[-1].event == "done"
    assert got.count("reset") == 0
    assert got.count("delta") == len(cumulative_texts(message))


async def test_two_runs_on_one_session_each_get_exactly_their_own_text(gateway: Gateway):
    messages = ["first question about tides", "second question about moons"]
    # A third run on another session key: the gateway broadcasts to it too.
    async with source(gateway.url, "watcher [slow]", session="agent:main:other") as watcher:
        watching = asyncio.create_task(assemble(watcher))
        sources = [source(gateway.url, m, request_id=f"req-{i}") for i, m in enumerate(messages)]
        results = await asyncio.gather(*(run_to_end(s) for s in sources))
        for message, src, got in zip(messages, sources, results, strict=True):
            assert got.text == got.final == final_text(message)
            assert src.tracker.malformed == {}
            # Interleaved on one session key: each socket also carried the other's run.
            assert src.tracker.dropped["other_run"] > 0
        await asyncio.sleep(0.05)
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching
        assert watcher.tracker.dropped["other_session"] > 0
    runs = {r.message: r for r in gateway.runs}
    assert {runs[m].session_key for m in messages} == {SESSION}
    assert all(runs[m].state == "final" for m in messages)


async def test_reset_mid_run_is_replaced_not_appended(gateway: Gateway):
    message = "rewrite this [reset]"
    texts = cumulative_texts(message)
    assert any(not b.startswith(a) for a, b in itertools.pairwise(texts)), "no reset generated"
    src = source(gateway.url, message)
    got = await run_to_end(src)
    assert got.count("reset") == 1
    assert got.text == got.final == final_text(message)
    reset_at = next(i for i, e in enumerate(got.events) if e.event == "reset")
    assert json.loads(got.events[reset_at].data or "")["text"] == texts[reset_at]


async def test_tool_events_are_forwarded_when_enabled(gateway: Gateway):
    message = "look it up [tool]"
    got = await run_to_end(
        source(gateway.url, message, profile=WebSocketProfile(forward_tools=True))
    )
    tools = [json.loads(e.data or "") for e in got.events if e.event == "tool"]
    assert [t["data"]["phase"] for t in tools] == ["start", "result"]
    assert got.text == got.final == final_text(message)
    plain = await run_to_end(source(gateway.url, message))
    assert plain.count("tool") == 0


async def test_handshake_headers_and_request_frame_reach_the_gateway(gateway: Gateway):
    profile = WebSocketProfile(headers={"X-Tenant": "acme"}, token="s3cret")
    src = source(gateway.url, "hello", profile=profile, request_id="req-42")
    await run_to_end(src)
    record = gateway.connections[-1]
    assert record.headers["Authorization"] == "Bearer s3cret"
    assert record.headers["X-Tenant"] == "acme"
    (frame,) = record.requests
    assert frame == src.frame
    assert frame["id"] == "req-42"
    assert frame["params"]["sessionKey"] == SESSION
    assert len(frame["params"]["idempotencyKey"]) == 36  # a uuid4
    again = source(gateway.url, "hello")
    assert again.frame["params"]["idempotencyKey"] != frame["params"]["idempotencyKey"]


# --- how runs end badly ---------------------------------------------------------------------


async def test_error_state_raises_run_failed(gateway: Gateway):
    got = Assembled()
    async with source(gateway.url, "break [error]") as src:
        with pytest.raises(UpstreamRunFailed, match=re.escape(ERROR_MESSAGE)):
            await assemble(src, got)
    assert got.text  # the part before the error was delivered
    assert final_text("break [error]").startswith(got.text)


async def test_aborted_state_raises_aborted(gateway: Gateway):
    async with source(gateway.url, "stop [abort]") as src:
        with pytest.raises(UpstreamAborted) as info:
            await assemble(src)
    assert str(info.value) == ABORT_MESSAGE


async def test_failed_response_raises_run_failed(gateway: Gateway):
    src = WebSocketSource(
        gateway.url, WebSocketProfile(), body=b"{}", session_key=None, request_id="r"
    )
    async with src:
        with pytest.raises(UpstreamRunFailed, match=r"params\.message is required"):
            await assemble(src)


async def test_die_mid_run_is_an_immediate_disconnect(gateway: Gateway):
    async with source(gateway.url, "vanish [die]") as src:
        got = Assembled()
        reader = asyncio.create_task(assemble(src, got))
        await asyncio.wait_for(
            gateway.wait_until(lambda g: any(r.state == "died" for r in g.runs)), 5
        )
        cut = time.monotonic()
        with pytest.raises(UpstreamDisconnected, match="no close frame"):
            await reader
        assert time.monotonic() - cut < 1.0
        assert got.text
        assert got.final is None


async def test_gateway_killed_mid_run_is_an_immediate_disconnect(gateway: Gateway):
    async with source(gateway.url, "long one [slow]") as src:
        got = Assembled()
        got.apply(await src.read())
        reader = asyncio.create_task(assemble(src, got))
        await asyncio.sleep(0.05)
        killed = time.monotonic()
        gateway.kill()
        with pytest.raises(UpstreamDisconnected):
            await reader
        assert time.monotonic() - killed < 1.0


async def test_gateway_process_stops_cleanly_on_sigterm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.examples.gateway", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()[4]
    async with aiohttp.ClientSession() as http:
        async with http.get(url.replace("ws://", "http://") + "healthz") as resp:
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 5) == 0


# --- the client leaves ----------------------------------------------------------------------


async def test_close_mid_run_closes_the_socket_on_the_gateway_side(gateway: Gateway):
    src = source(gateway.url, "tell me everything [slow]")
    await src.open()
    await src.read()
    record = gateway.connections[-1]
    assert not record.closed.is_set()
    started = time.monotonic()
    await src.close()
    assert time.monotonic() - started < 0.5
    await asyncio.wait_for(record.closed.wait(), 1.0)
    assert record.close_code == 1000
    assert gateway.closed == gateway.opened == 1
    await src.close()  # idempotent


async def test_cancelled_read_then_close_like_a_departing_client(gateway: Gateway):
    src = source(gateway.url, "keep talking [slow]")
    await src.open()
    reader = asyncio.create_task(assemble(src))
    await asyncio.sleep(0.1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await src.close()
    await asyncio.wait_for(gateway.connections[-1].closed.wait(), 1.0)


async def test_close_is_prompt_even_if_the_gateway_never_answers():
    """A gateway that stops reading never answers our close frame: drop the TCP connection."""
    stalled: list[ServerConnection] = []
    gone = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        stalled.append(ws)
        ws.transport.pause_reading()
        await ws.wait_closed()
        gone.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        src = source(f"ws://127.0.0.1:{port}/", "hi")
        await src.open()
        await asyncio.sleep(0.05)
        assert stalled
        started = time.monotonic()
        await src.close()
        assert time.monotonic() - started < CLOSE_TIMEOUT + 0.2
        stalled[0].transport.resume_reading()  # now it finds the connection gone
        await asyncio.wait_for(gone.wait(), 1.0)


async def test_abort_drops_the_connection_without_awaiting(gateway: Gateway):
    src = source(gateway.url, "x [slow]")
    await src.open()
    src.abort()
    await asyncio.wait_for(gateway.connections[-1].closed.wait(), 1.0)
    await src.close()  # still fine afterwards


# --- cannot connect -------------------------------------------------------------------------


async def test_nothing_listening_is_unreachable(unused_tcp_port: int):
    with pytest.raises(UpstreamUnreachable):
        await source(f"ws://127.0.0.1:{unused_tcp_port}/", "hi").open()


async def test_refused_handshake_is_unreachable():
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(403, "no\n")

    async with serve(_never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(UpstreamUnreachable, match="403"):
            await source(f"ws://127.0.0.1:{port}/", "hi").open()


async def test_silent_server_times_out_within_connect_timeout():
    dropped = asyncio.Event()

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.read()  # until the client gives up and drops the connection
        writer.close()
        dropped.set()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        profile = WebSocketProfile(connect_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(UpstreamUnreachable, match="timed out"):
            await source(f"ws://127.0.0.1:{port}/", "hi", profile=profile).open()
        assert time.monotonic() - started < 1.0
        await asyncio.wait_for(dropped.wait(), 1.0)


async def _never(ws: ServerConnection) -> None:
    await ws.wait_closed()


# --- a misbehaving gateway ------------------------------------------------------------------


def scripted(
    frames: Callable[[dict[str, object]], list[str | bytes]],
) -> Callable[[ServerConnection], Awaitable[None]]:
    """A gateway that answers the request with ``frames(request)`` and then waits."""

    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        for frame in frames(request):
            await ws.send(frame)
        await ws.wait_closed()

    return handler


def event(state: str, text: str | None = None, run: str = "r1", **payload: object) -> str:
    body: dict[str, object] = {"runId": run, "sessionKey": SESSION, "state": state, **payload}
    if text is not None:
        body["message"] = {"content": [{"type": "text", "text": text}]}
    return json.dumps({"type": "event", "event": "chat", "payload": body})


async def test_malformed_frames_are_counted_not_fatal():
    def frames(request: dict[str, object]) -> list[str | bytes]:
        accepted = {"type": "res", "id": request["id"], "ok": True,
                    "payload": {"runId": "r1", "status": "accepted"}}  # fmt: skip
        return [
            "this is not json",
            b"\x00\x01binary",
            "[1, 2, 3]",
            json.dumps({"no": "type"}),
            json.dumps(accepted),
            event("delta", "Hel"),
            json.dumps({"type": "event", "event": "chat", "payload": {"state": "delta"}}),
            event("delta", "x" * 2000),  # over max_frame_bytes: skipped
            event("delta", "Hello"),
            '{"type": "event", "event": "chat", "payload": {"runId": "r1", "state": ',  # cut
            event("final", "Hello!"),
        ]

    async with serve(scripted(frames), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        profile = WebSocketProfile(max_frame_bytes=1024)
        src = source(f"ws://127.0.0.1:{port}/", "hi", profile=profile)
        got = await run_to_end(src)
    assert got.text == got.final == "Hello!"
    assert src.malformed == {
        "not_json": 2,
        "binary": 1,
        "not_object": 1,
        "missing_field": 2,
        "too_large": 1,
    }


async def test_frame_far_over_the_limit_fails_the_connection_promptly():
    def frames(request: dict[str, object]) -> list[str | bytes]:
        accepted = {"type": "res", "id": request["id"], "ok": True, "payload": {"runId": "r1"}}
        return [json.dumps(accepted), event("delta", "ok"), event("delta", "y" * 10_000)]

    async with serve(scripted(frames), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        src = source(
            f"ws://127.0.0.1:{port}/", "hi", profile=WebSocketProfile(max_frame_bytes=1024)
        )
        async with src:
            assert await src.read() == [Event('{"text": "ok"}', "delta")]
            with pytest.raises(EventTooLarge):
                await asyncio.wait_for(src.read(), 1.0)


async def test_clean_close_before_the_final_event_is_a_disconnect():
    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "res", "id": request["id"], "ok": True,
                                  "payload": {"runId": "r1", "status": "accepted"}}))  # fmt: skip
        await ws.send(event("delta", "partial"))
        await ws.close(1001, "restarting")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with source(f"ws://127.0.0.1:{port}/", "hi") as src:
            assert len(await src.read()) == 1
            with pytest.raises(UpstreamDisconnected, match="code 1001: restarting"):
                await src.read()
