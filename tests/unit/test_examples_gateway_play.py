"""How the example gateway plays a run (sidecar/examples/gateway_play.py): its frames, in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError

from sidecar.examples.gateway_play import (
    ABORT_MESSAGE,
    ABORTED_BY_RPC,
    ERROR_MESSAGE,
    RunPlayer,
    RunRecord,
    send,
)
from sidecar.examples.gateway_text import final_text


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Connection:
    """The requesting connection: what it was sent, and whether it was cut."""

    def __init__(self, closed: bool = False) -> None:
        self.sent: list[Any] = []
        self.closed = closed
        self.transport = Transport()

    async def send(self, message: str) -> None:
        if self.closed:
            raise ConnectionClosedError(None, None)
        self.sent.append(json.loads(message))


class Stage:
    """What the gateway hands the player: every broadcast frame kept, no real waits."""

    def __init__(self, handshake: bool = True) -> None:
        self.frames: list[dict[str, Any]] = []
        self.notified = 0
        self.slept: list[float] = []
        self.player = RunPlayer(self.broadcast, self.sleep, self.notify, handshake=handshake)

    def broadcast(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)

    def notify(self) -> None:
        self.notified += 1

    def chat(self, state: str | None = None) -> list[dict[str, Any]]:
        return [
            f["payload"]
            for f in self.frames
            if f["event"] == "chat" and state in (None, f["payload"]["state"])
        ]

    def agent(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (f["payload"]["stream"], f["payload"]["data"])
            for f in self.frames
            if f["event"] == "agent"
        ]


def new_run(message: str) -> RunRecord:
    return RunRecord("run-1", "agent:main:main", message, connection_id=1)


def assembled(deltas: list[dict[str, Any]]) -> str:
    """The text a client builds from the deltas' deltaText, honouring replace."""
    text = ""
    for delta in deltas:
        text = delta["deltaText"] if delta.get("replace") else text + delta["deltaText"]
    return text


async def test_a_run_streams_its_answer_then_final_and_answers_who_asked() -> None:
    stage, ws, run = Stage(), Connection(), new_run("hello there")
    await stage.player.play(ws, "r1", run)  # type: ignore[arg-type]
    assert stage.agent()[0] == ("lifecycle", {"phase": "start"})
    assert stage.agent()[-1] == ("lifecycle", {"phase": "end"})
    assert assembled(stage.chat("delta")) == final_text("hello there") == run.text
    (final,) = stage.chat("final")
    assert final["message"]["content"] == [{"type": "text", "text": final_text("hello there")}]
    assert all(p["runId"] == "run-1" and p["sessionKey"] == "agent:main:main" for p in stage.chat())
    assert ws.sent == [
        {"type": "res", "id": "r1", "ok": True, "payload": {"runId": "run-1", "status": "ok"}}
    ]
    assert (run.state, stage.notified) == ("final", 1)


@pytest.mark.parametrize(
    ("marker", "state", "chat_state", "answer"),
    [
        ("[error]", "error", "error", {"ok": False, "error": {"code": "AGENT_ERROR",
                                                               "message": ERROR_MESSAGE}}),
        ("[abort]", "aborted", "aborted", {"ok": True, "payload": {"runId": "run-1",
                                                                    "status": "aborted"}}),
    ],
)  # fmt: skip
async def test_a_marked_run_ends_midway_as_the_marker_says(
    marker: str, state: str, chat_state: str, answer: dict[str, Any]
) -> None:
    stage, ws, run = Stage(), Connection(), new_run(f"{marker} tell me")
    await stage.player.play(ws, "r1", run)  # type: ignore[arg-type]
    assert run.state == state
    assert stage.chat("final") == []
    (ended,) = stage.chat(chat_state)
    assert ended["errorMessage"] == (ERROR_MESSAGE if marker == "[error]" else ABORT_MESSAGE)
    assert ws.sent == [{"type": "res", "id": "r1", **answer}]
    assert 0 < len(run.text) < len(final_text(run.message))  # cut a third of the way in


async def test_a_dying_run_cuts_its_connection_and_answers_nothing() -> None:
    stage, ws, run = Stage(), Connection(), new_run("[die] go")
    await stage.player.play(ws, "r1", run)  # type: ignore[arg-type]
    assert (run.state, ws.transport.aborted, ws.sent) == ("died", True, [])


async def test_a_tool_run_calls_its_tool_midway_and_still_finishes() -> None:
    stage, ws, run = Stage(), Connection(), new_run("[tool] weather")
    await stage.player.play(ws, "r1", run)  # type: ignore[arg-type]
    tools = [data for stream, data in stage.agent() if stream == "tool"]
    assert [t["phase"] for t in tools] == ["start", "result"]
    assert tools[0]["args"] == {"q": "weather"}
    assert run.state == "final"


async def test_a_slow_run_waits_five_times_longer_and_pauses() -> None:
    stage, plain = Stage(), Stage()
    await stage.player.play(Connection(), "r1", new_run("[slow] x"))  # type: ignore[arg-type]
    await plain.player.play(Connection(), "r1", new_run("x"))  # type: ignore[arg-type]
    assert stage.slept[0] == 5 * plain.slept[0]  # the first token
    assert 1.0 in stage.slept  # the pause midway


@pytest.mark.parametrize("handshake", [True, False])
async def test_a_rewritten_text_is_a_replace_retry_only_in_handshake_mode(handshake: bool) -> None:
    stage, run = Stage(handshake=handshake), new_run("[reset] tell me")
    await stage.player.play(Connection(), "r1", run)  # type: ignore[arg-type]
    deltas = stage.chat("delta")
    replaced = [d for d in deltas if d.get("replace")]
    assert bool(replaced) == handshake
    # Every delta's message is the whole text so far; the last one is the answer.
    assert deltas[-1]["message"]["content"][0]["text"] == final_text(run.message)
    if handshake:
        assert assembled(deltas) == final_text(run.message)


async def test_chat_abort_sends_the_partial_text_then_a_timeout_answer() -> None:
    stage, ws, run = Stage(), Connection(), new_run("a long question")
    task = asyncio.create_task(stage.player.play(ws, "r1", run))  # type: ignore[arg-type]
    while len(stage.chat("delta")) < 3:
        await asyncio.sleep(0)
    task.cancel(ABORTED_BY_RPC)
    await task
    (aborted,) = stage.chat("aborted")
    assert aborted["stopReason"] == "rpc"
    assert aborted["message"]["content"] == [{"type": "text", "text": run.text}]
    assert ws.sent[-1]["payload"] == {"runId": "run-1", "status": "timeout"}
    assert (run.state, stage.notified) == ("aborted", 1)


async def test_any_other_cancel_stops_the_run_and_propagates() -> None:
    stage, ws, run = Stage(), Connection(), new_run("a long question")
    task = asyncio.create_task(stage.player.play(ws, "r1", run))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (run.state, ws.sent, stage.chat("aborted")) == ("stopped", [], [])


async def test_send_to_a_connection_that_left_is_dropped_quietly() -> None:
    gone = Connection(closed=True)
    await send(gone, {"type": "res"})  # type: ignore[arg-type]
    assert gone.sent == []
