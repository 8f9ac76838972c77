"""Tested clients: httpx-sse and curl, directly and through the sidecar, against real producers.

Producers: sse-starlette (CRLF lines, comment pings) served by uvicorn, and a
raw scripted producer (CRLF, CR-only, split writes, comment pings, a crash,
a 500). Each case asserts what the client itself sees: every producer event,
no spurious one (an empty event, say, from a ``retry:`` block), exactly one
terminal event, last, and a clear error on a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from httpx_sse import aconnect_sse
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from sidecar.sse import Decoder, Event
from tests.conftest import Script, make_config

WORDS = ["Hel", "lo", " wor", "ld"]
TOKENS = [("token", w) for w in WORDS]
DONE = ("done", "[DONE]")
TERMINAL = {"done", "error", "end"}


def _blocks(nl: bytes) -> list[bytes]:
    out = [b"event: token" + nl + b"data: " + w.encode() + nl + nl for w in WORDS]
    return [*out, b"event: done" + nl + b"data: [DONE]" + nl + nl]


RAW = {
    "crlf": Script(_blocks(b"\r\n")),
    "cr": Script(_blocks(b"\r")),
    "split": Script(
        [piece for b in _blocks(b"\n") for piece in (b[:7], 0.02, b[7:11], 0.02, b[11:])]
    ),
    "pings": Script([step for b in _blocks(b"\n") for step in (b": ping\n\n", 0.02, b)]),
    "crash": Script([*_blocks(b"\n")[:2], 0.05, "abort"]),
    "e500": Script([b'{"error":{"message":"boom"}}'], status=500, content_type="application/json"),
}


@dataclass
class Seen:
    status: int
    events: list[tuple[str, str]]
    #: The exception the client raised, if any (a crash seen directly).
    raised: str | None = None


def producer_events(seen: Seen) -> list[tuple[str, str]]:
    """What the app acts on: every event but the sidecar's keepalives."""
    return [e for e in seen.events if e[0] != "keepalive"]


def check_contract(seen: Seen) -> None:
    """Through the sidecar: no empty event, exactly one terminal event, last."""
    assert seen.raised is None
    assert all(data for _, data in seen.events), seen.events  # nothing empty
    terminals = [i for i, (kind, _) in enumerate(seen.events) if kind in TERMINAL]
    assert terminals == [len(seen.events) - 1], seen.events


async def httpx_sse_client(url: str) -> Seen:
    events: list[tuple[str, str]] = []
    async with httpx.AsyncClient() as client:  # httpx's defaults: 5 s timeouts
        try:
            async with aconnect_sse(client, "GET", url) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    return Seen(source.response.status_code, [])
                async for sse in source.aiter_sse():
                    events.append((sse.event, sse.data))
        except httpx.HTTPError as exc:
            return Seen(200, events, type(exc).__name__)
    return Seen(200, events)


async def curl_client(url: str) -> Seen:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", "20", "-w", "\n%{http_code}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    body, _, status = out.rpartition(b"\n")
    raised = None if proc.returncode == 0 else f"curl exit {proc.returncode}"
    if int(status) != 200:
        return Seen(int(status), [], raised)
    decoder = Decoder()
    items = [*decoder.feed(body), *decoder.close()] if raised is None else decoder.feed(body)
    events = [(i.event or "message", i.data or "") for i in items if isinstance(i, Event)]
    return Seen(200, events, raised)


ROOT = Path(__file__).resolve().parents[2]
#: npm clients are installed here by the test setup (gitignored).
NPM_CACHE = ROOT / ".cache" / "npm-clients"
NPM_PACKAGES = ["eventsource@3", "@microsoft/fetch-event-source@2"]


def npm_clients() -> Path:
    """node_modules with the npm SSE clients, installed from the npm registry once."""
    modules = NPM_CACHE / "node_modules"
    if all((modules / p.rsplit("@", 1)[0]).is_dir() for p in NPM_PACKAGES):
        return modules
    if shutil.which("npm") is None:
        pytest.fail("npm not found (scripts/system-deps installs Debian's nodejs and npm)")
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    (NPM_CACHE / "package.json").write_text('{"private": true}\n')
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", *NPM_PACKAGES],
        cwd=NPM_CACHE, check=True, timeout=300,
    )  # fmt: skip
    return modules


def node_client(name: str) -> Callable[[str], Awaitable[Seen]]:
    async def run(url: str) -> Seen:
        modules = npm_clients()
        proc = await asyncio.create_subprocess_exec(
            "node", str(Path(__file__).parent / "node_clients.cjs"), name, url,
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)},
        )  # fmt: skip
        out, _ = await proc.communicate()
        report = json.loads(out)
        note: str = report["note"]
        events = [(k, d) for k, d in report["events"]]
        if note.startswith("status "):
            return Seen(int(note.split()[1]), events)
        return Seen(200, events, None if note in ("terminal", "closed") else note)

    return run


CLIENTS = {
    "httpx-sse": httpx_sse_client,
    "curl": curl_client,
    "npm-eventsource": node_client("eventsource"),
    "fetch-event-source": node_client("fetch-event-source"),
}


@pytest.fixture(params=sorted(CLIENTS))
def client_name(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def client(client_name: str):
    return CLIENTS[client_name]


#: What a client gets wrong straight from a producer, and gets right through
#: the sidecar (which writes LF lines and turns comments into keepalive events):
#: fetch-event-source dispatches a comment block as an empty message, and
#: eventsource-parser holds a final CR waiting for an LF that never comes.
DIRECT_QUIRKS = {
    ("fetch-event-source", "pings"),
    ("fetch-event-source", "starlette"),
    ("npm-eventsource", "cr"),
}


def check_direct(seen: Seen, client_name: str, case: str) -> None:
    if (client_name, case) in DIRECT_QUIRKS:
        assert producer_events(seen) != [*TOKENS, DONE]  # the quirk is real
    else:
        assert seen.raised is None
        assert producer_events(seen) == [*TOKENS, DONE]


def through(upstream_url: str, **route: object):
    return make_config(upstream_url, stream={"retry": "1s"}, **route)


@pytest.mark.parametrize("case", ["crlf", "cr", "split", "pings"])
async def test_raw_producer_every_event_once(upstream, start_sidecar, client_name, client, case):
    upstream.script = RAW[case]
    check_direct(await client(upstream.url + "/x"), client_name, case)
    sc = await start_sidecar(through(upstream.url))
    seen = await client(sc.url + "/s/x")
    check_contract(seen)
    assert producer_events(seen) == [*TOKENS, DONE]


async def test_raw_producer_crash_is_a_clear_error(upstream, start_sidecar, client):
    upstream.script = RAW["crash"]
    direct = await client(upstream.url + "/x")
    assert direct.raised is not None  # directly: a broken transfer, no reason given
    sc = await start_sidecar(through(upstream.url))
    seen = await client(sc.url + "/s/x")
    check_contract(seen)
    assert producer_events(seen)[:2] == TOKENS[:2]
    kind, data = seen.events[-1]
    assert kind == "error"
    assert json.loads(data)["code"] == "upstream_disconnected"
    assert json.loads(data)["partial"] is True


async def test_raw_producer_500_is_passed_through(upstream, start_sidecar, client):
    upstream.script = RAW["e500"]
    assert (await client(upstream.url + "/x")).status == 500
    sc = await start_sidecar(through(upstream.url))
    assert (await client(sc.url + "/s/x")).status == 500


# --- sse-starlette --------------------------------------------------------------


async def _tokens(request: Request) -> EventSourceResponse:
    crash = request.query_params.get("crash") == "1"

    async def gen() -> AsyncIterator[dict[str, str]]:
        for i, w in enumerate(WORDS):
            yield {"event": "token", "data": w}
            await asyncio.sleep(0.06)  # sse-starlette's comment pings land in between
            if crash and i == 1:
                raise RuntimeError("producer crashed")
        yield {"event": "done", "data": "[DONE]"}

    return EventSourceResponse(gen(), ping=0.05)


@pytest.fixture
async def starlette_url() -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=[Route("/events", _tokens)])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_sse_starlette_every_event_once(starlette_url, start_sidecar, client_name, client):
    check_direct(await client(starlette_url + "/events"), client_name, "starlette")
    sc = await start_sidecar(through(starlette_url))
    seen = await client(sc.url + "/s/events")
    check_contract(seen)
    assert producer_events(seen) == [*TOKENS, DONE]


async def test_sse_starlette_crash_is_a_clear_error(starlette_url, start_sidecar, client):
    direct = await client(starlette_url + "/events?crash=1")
    assert not any(kind in TERMINAL for kind, _ in direct.events)  # directly: no reason
    sc = await start_sidecar(through(starlette_url))
    seen = await client(sc.url + "/s/events?crash=1")
    check_contract(seen)
    assert producer_events(seen)[:2] == TOKENS[:2]
    kind, data = seen.events[-1]
    assert kind == "error"
    assert json.loads(data)["code"] == "upstream_disconnected"
