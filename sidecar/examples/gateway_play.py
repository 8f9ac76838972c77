"""How the example gateway (sidecar/examples/gateway.py) plays one run: its events, paced.

A run's ``chat`` events carry the CUMULATIVE text (what it is, and how it
grows, is sidecar/examples/gateway_text.py), between ``agent`` lifecycle
events; then ``final`` and a final ``res`` to the connection that asked.
Of the markers in the message (the gateway's module note lists them), those
that end a run or call a tool act a third of the way in; ``[slow]`` slows the
whole run and pauses there; ``[reset]``'s rewritten text goes out, in
handshake mode, as a ``replace: true`` retry. ``chat.abort`` cancels a run's
task with :data:`ABORTED_BY_RPC`.

Strategy: the player reaches the world only through what the gateway hands
it (broadcast, sleep, notify), so the gateway alone holds its connections,
its speed and its waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sidecar.examples.gateway_text import cumulative_texts, failed, finished, parts, topic

TOKEN_INTERVAL = 0.04
FIRST_TOKEN_DELAY = 0.3
SLOW_FACTOR = 5.0
SLOW_PAUSE = 1.0
TOOL_DELAY = 0.2
ERROR_MESSAGE = "the model backend failed ([error] requested)"
ABORT_MESSAGE = "the run was aborted ([abort] requested)"
#: The cancel message of a run stopped by chat.abort.
ABORTED_BY_RPC = "chat.abort"


@dataclass(slots=True)
class RunRecord:
    """One run: who asked, and how it ended (running, final, error, aborted, died, stopped)."""

    run_id: str
    session_key: str
    message: str
    connection_id: int
    state: str = "running"
    #: The cumulative text sent so far.
    text: str = ""


class RunPlayer:
    """Plays runs: their events to every operator, their answers to who asked.

    ``broadcast`` sends an event frame to every operator connection, ``sleep``
    waits (at the gateway's speed), ``notify`` wakes whoever waits on the
    gateway's state; ``handshake``: OpenClaw's protocol (a rewritten text is
    reported as a ``replace: true`` retry), else the bare generic one.
    """

    __slots__ = ("_broadcast", "_notify", "_sleep", "handshake")

    def __init__(
        self,
        broadcast: Callable[[dict[str, object]], None],
        sleep: Callable[[float], Awaitable[None]],
        notify: Callable[[], None],
        *,
        handshake: bool,
    ) -> None:
        self._broadcast = broadcast
        self._sleep = sleep
        self._notify = notify
        self.handshake = handshake

    async def play(self, ws: ServerConnection, request_id: object, run: RunRecord) -> None:
        """Play ``run``, asked for on ``ws`` by request ``request_id``, to its end."""
        message = run.message
        slow = SLOW_FACTOR if "[slow]" in message else 1.0
        texts = cumulative_texts(message)
        third = max(1, len(texts) // 3)
        try:
            self._agent(run, "lifecycle", {"phase": "start"})
            await self._sleep(FIRST_TOKEN_DELAY * slow)
            for i, text in enumerate(texts):
                if i == third:
                    outcome = await self._midway(ws, request_id, run)
                    if outcome is not None:
                        if outcome:  # {} when the connection was cut
                            await send(ws, outcome)
                        return
                self._delta(run, text)
                await self._sleep(TOKEN_INTERVAL * slow)
            self._agent(run, "lifecycle", {"phase": "end"})
            self._chat(run, "final", message={"role": "assistant", "content": parts(texts[-1])})
            run.state = "final"
            await send(ws, finished(request_id, run.run_id, "ok"))
        except asyncio.CancelledError as exc:
            if exc.args != (ABORTED_BY_RPC,):
                run.state = "stopped"
                raise
            # chat.abort: like the real gateway, an aborted event whose message
            # is an object with the partial text, then the final response.
            run.state = "aborted"
            partial = {"role": "assistant", "content": parts(run.text)}
            self._chat(run, "aborted", stopReason="rpc", message=partial)
            await send(ws, finished(request_id, run.run_id, "timeout"))
        finally:
            self._notify()

    async def _midway(
        self, ws: ServerConnection, request_id: object, run: RunRecord
    ) -> dict[str, object] | None:
        """Mid-run behaviours; the final response (or {}) when the run ended here."""
        message = run.message
        if "[tool]" in message:
            call = {"name": "search", "toolCallId": f"{run.run_id}-tool-1"}
            self._agent(run, "tool", {**call, "phase": "start", "args": {"q": topic(message)}})
            await self._sleep(TOOL_DELAY)
            self._agent(run, "tool", {**call, "phase": "result", "result": {"hits": 3}})
        if "[slow]" in message:
            await self._sleep(SLOW_PAUSE)
        if "[die]" in message:
            run.state = "died"
            ws.transport.abort()
            return {}
        if "[error]" in message:
            run.state = "error"
            self._chat(run, "error", errorMessage=ERROR_MESSAGE)
            return failed(request_id, "AGENT_ERROR", ERROR_MESSAGE)
        if "[abort]" in message:
            run.state = "aborted"
            self._chat(run, "aborted", errorMessage=ABORT_MESSAGE)
            return finished(request_id, run.run_id, "aborted")
        return None

    def _delta(self, run: RunRecord, text: str) -> None:
        if self.handshake and not text.startswith(run.text):
            # A provider retry, as OpenClaw reports it: empty text, replace: true.
            empty = {"role": "assistant", "content": parts("")}
            self._chat(run, "delta", deltaText="", replace=True, message=empty)
            run.text = ""
        delta = text[len(run.text) :] if text.startswith(run.text) else text
        run.text = text
        message = {"role": "assistant", "content": parts(text)}
        self._chat(run, "delta", deltaText=delta, message=message)

    def _chat(self, run: RunRecord, state: str, **extra: object) -> None:
        payload = {"runId": run.run_id, "sessionKey": run.session_key, "state": state, **extra}
        self._broadcast({"type": "event", "event": "chat", "payload": payload})

    def _agent(self, run: RunRecord, stream: str, data: dict[str, object]) -> None:
        payload = {"runId": run.run_id, "sessionKey": run.session_key, "stream": stream}
        self._broadcast({"type": "event", "event": "agent", "payload": {**payload, "data": data}})


async def send(ws: ServerConnection, frame: dict[str, object]) -> None:
    """Send ``frame`` to one connection, if it is still there."""
    with contextlib.suppress(ConnectionClosed):  # the client left: nobody to answer
        await ws.send(json.dumps(frame, ensure_ascii=False))
