"""A real browser resumes a stream: headless Chromium, EventSource, a cut connection.

The page (served through the sidecar, so it is same-origin with the stream)
assembles an LLM-like answer from `token` events. The browser reaches the
sidecar through a loopback relay; the test cuts every relayed connection
mid-stream and brings the relay back a second later. EventSource reconnects
by itself with Last-Event-ID, and the page must end up with exactly the
producer's text, from one upstream request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import Config, from_mapping
from tests.conftest import Script, ScriptedUpstream
from tests.e2e.conftest import Browser
from tests.e2e.relay import Relay

PAGE = (Path(__file__).parent / "page.html").read_bytes()

# ~40 tokens as an LLM would stream them: leading spaces, a token with a
# space inside, multi-byte UTF-8 (2, 3 and 4 bytes), a newline.
TOKENS = (
    "Sure! ",
    "Here is",
    " a short",
    " answer",
    " about",
    " café",
    " culture",
    " —",
    " from",
    " Paris",
    " to",
    " 日本",
    ".",
    "\n\n",
    "In",
    " Kyoto",
    ",",
    " a",
    " kissaten",
    " (喫茶店)",
    " serves",
    " pour-over",
    " coffee",
    " slowly",
    ";",
    " in",
    " Lyon",
    ",",
    " a",
    " bouchon",
    " serves",
    " crème",
    " brûlée",
    " — ",
    "naïvely",
    " sweet",
    ".",
    " Enjoy",
    " ☕🚀",
    " Done.",
)
TEXT = "".join(TOKENS)
GAP = 0.1  # between tokens: the whole answer takes about 5 s
THINKING = 1.0  # silence before the first token, filled by the sidecar's heartbeats
CUT_AFTER = 10  # tokens relayed to the browser before the connection is cut
OUTAGE = 1.0  # seconds the relay stays down
SPLIT_TOKEN = TOKENS.index(" 日本")
TIMEOUT = 60.0
KEY = "browser-1"


def token_event(text: str) -> bytes:
    data = json.dumps({"text": text}, ensure_ascii=False)
    return f"event: token\ndata: {data}\n\n".encode()


def answer_steps() -> list[bytes | float | str]:
    # Time to first token, as with a real model. The comment is not relied on:
    # on a resume route the sidecar keeps keepalives out of the replay log, so
    # only its own heartbeats (every 300 ms of silence) reach the page.
    steps: list[bytes | float | str] = [b": thinking\n\n", THINKING]
    for i, token in enumerate(TOKENS):
        event = token_event(token)
        if i == SPLIT_TOKEN:
            # One event in two TCP writes, split inside a UTF-8 sequence.
            cut = event.index("日".encode()) + 1
            steps += [event[:cut], 0.05, event[cut:]]
        else:
            steps.append(event)
        steps.append(GAP)
    steps.append(b"event: done\ndata: [DONE]\n\n")
    return steps


def producer(request: web.Request) -> Script:
    """The upstream: the page, the place the page reports to, and the answer stream."""
    if request.path == "/page.html":
        return Script([PAGE], content_type="text/html")
    if request.path == "/collect":
        return Script([b'{"ok":true}'], content_type="application/json")
    if request.path == "/stream":
        return Script(answer_steps())
    return Script([b"not found"], status=404, content_type="text/plain")


def sidecar_config(upstream_url: str) -> Config:
    return from_mapping(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            # If the test fails with a stream still open, teardown is quick.
            "drain_timeout": "1s",
            "routes": [
                # Not a stream: page and report pass through unchanged.
                {"name": "page", "path": "/app", "upstream": upstream_url},
                {
                    "name": "chat",
                    "path": "/stream",
                    "upstream": upstream_url + "/stream",
                    "session": {"from": "query:s"},
                    "resume": {"enabled": True, "grace": "30s"},
                    "stream": {"retry": "500ms"},
                    "heartbeat": {"interval": "300ms"},
                },
            ],
        }
    )


def tokens_relayed(relay: Relay) -> int:
    return relay.downstream.count(b"event: token\n")


def collected(upstream: ScriptedUpstream) -> dict[str, Any] | None:
    """The page's report: the body of its POST to /collect, as the upstream got it."""
    for record in upstream.requests:
        if record.path == "/collect":
            report: dict[str, Any] = json.loads(record.body)
            return report
    return None


async def until(condition: Callable[[], object], browser: Browser) -> None:
    """Poll ``condition`` (the relay and the upstream record as they go); fail at
    once if Chromium died instead of waiting for the overall timeout."""
    while not condition():
        if not browser.alive():
            pytest.fail(f"chromium exited early:\n{browser.log_tail()}")
        await asyncio.sleep(0.02)


def resume_hits(metrics: str, route: str) -> float:
    pattern = rf'^sse_sidecar_resume_total\{{result="hit",route="{route}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.browser
async def test_eventsource_resumes_the_answer_after_a_cut(upstream, start_sidecar, launch_browser):
    upstream.script = producer
    sc = await start_sidecar(sidecar_config(upstream.url))
    relay = Relay(sc.sidecar.port)
    await relay.start()
    browser = None
    stage = "loading the page and the first tokens"
    try:
        async with asyncio.timeout(TIMEOUT):
            browser = launch_browser(f"{relay.url}/app/page.html?s={KEY}")
            # Cut once the browser has been sent some tokens, well before the end.
            await until(lambda: tokens_relayed(relay) >= CUT_AFTER, browser)
            await relay.stop()
            relayed_before_cut = tokens_relayed(relay)
            accepted_before_cut = relay.accepted
            assert b"event: done" not in relay.downstream, "the cut came after the end"
            await asyncio.sleep(OUTAGE)
            await relay.start()
            stage = "waiting for the page's report after the cut"
            await until(lambda: collected(upstream), browser)
    except TimeoutError:
        log = browser.log_tail() if browser is not None else ""
        pytest.fail(f"timed out {stage}; chromium log:\n{log}")
    finally:
        await relay.stop()

    report = collected(upstream)
    assert report is not None
    assert report["end"] == "done", report
    assert report["serverError"] is None
    assert report["unexpected"] == []
    assert report["text"] == TEXT
    assert report["tokens"] == len(TOKENS)
    assert len(set(report["ids"])) == len(TOKENS)  # every event once, each with its id
    assert report["opens"] >= 2, "EventSource did not reconnect"
    assert report["drops"] >= 1
    assert report["keepalives"] >= 1  # heartbeats while "thinking": seen, kept out of the text
    assert relay.accepted > accepted_before_cut
    assert CUT_AFTER <= relayed_before_cut < len(TOKENS)
    streams = [r for r in upstream.requests if r.path == "/stream"]
    assert len(streams) == 1, "the reconnect reached the upstream again"
    assert resume_hits(await sc.metrics(), "chat") >= 1
