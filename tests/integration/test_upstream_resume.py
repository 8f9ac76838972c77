"""Upstream resume through the sidecar: the producer's connection is cut, the client sees nothing.

The example producer runs for real on loopback with resumable runs (its
answer goes on without the connection; ``Last-Event-ID`` gets the rest), and
the connection is cut three ways: a TCP reset, a half-close (FIN inside the
chunked body, no terminal event) and a relay between the two that drops it.
Each case runs on a plain route (the splice writing the client) and on a
resume route (the splice numbering into the run's log; the awaiting path's
cursor is held equal in tests/integration/test_stream_source.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from sidecar.examples.producer import ANSWER, STATS, ProducerStats, create_app
from sidecar.sse import Decoder, Event
from tests.conftest import Script, make_config, sse
from tests.e2e.relay import Relay
from tests.integration.streams import Received, read_stream

SPEED = 20.0
TOKENS = 12
FAST = {"backoff": "20ms", "max_backoff": "1s"}


@pytest.fixture
async def producer() -> AsyncIterator[tuple[str, ProducerStats]]:
    app = create_app(speed=SPEED)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app[STATS]
    finally:
        await runner.cleanup()


def config(
    upstream: str,
    kind: str,
    resume: dict[str, Any] | None = None,
    path: str = "/v1/chat",
    **route: Any,
) -> Any:
    """Route /s to ``upstream + path`` with upstream_resume on; ``kind`` resume: resume on too."""
    block = {"enabled": True, **FAST, **(resume or {})}
    if kind == "resume":
        route["resume"] = {"enabled": True, "grace": "5s"}
    return make_config(upstream + path, upstream_resume=block, **route)


def request_headers(kind: str) -> dict[str, str]:
    return {"X-Session-Key": "user-1"} if kind == "resume" else {}


def answer(tokens: int = TOKENS) -> str:
    return " ".join(ANSWER.split()[:tokens])


def assert_whole(got: Received, tokens: int = TOKENS) -> None:
    """Every token once, in order, then the producer's own terminal event, last."""
    assert got.status == 200
    kinds = [k for k in got.kinds() if k != "keepalive"]
    assert kinds == ["token"] * tokens + ["done"], kinds
    assert "".join(t["text"] for t in got.data("token")) == answer(tokens)
    ids = [e.id for e in got.events if e.event == "token"]
    assert len(set(ids)) == tokens  # no duplicate


def resumes(metrics: str) -> dict[str, float]:
    found = re.findall(r'sse_sidecar_upstream_resumes_total\{result="(\w+)",route="test"\} (\S+)',
                       metrics)  # fmt: skip
    return {result: float(value) for result, value in found}


ROUTES = pytest.mark.parametrize("kind", ["plain", "resume"])


@ROUTES
@pytest.mark.parametrize("cut_how", ["reset", "fin"])
async def test_a_cut_upstream_is_resumed_and_the_client_sees_nothing(
    producer, start_sidecar, kind, cut_how
):
    url, stats = producer
    sc = await start_sidecar(config(url, kind))
    query = f"resumable=1&tokens={TOKENS}&silence=0&cut=4&cuts=2&cut_how={cut_how}"
    got = await read_stream(sc.http, "GET", f"{sc.url}/s?{query}", headers=request_headers(kind))
    assert_whole(got)
    # One run, resumed twice: the producer never started over.
    assert (stats.started, stats.resumed) == (1, 2)
    asked = [r.headers.get("Last-Event-ID") for r in stats.records]
    run = asked[1].rsplit("-", 1)[0] if asked[1] else None
    assert asked == [None, f"{run}-4", f"{run}-8"]
    assert resumes(await sc.metrics()) == {"resumed": 2, "failed": 0, "no_id": 0, "exhausted": 0}


@ROUTES
async def test_a_relay_that_drops_the_connection_is_resumed_through(producer, start_sidecar, kind):
    url, stats = producer
    relay = Relay(int(url.rsplit(":", 1)[1]))
    await relay.start()
    try:
        sc = await start_sidecar(config(relay.url, kind, {"backoff": "200ms"}))
        query = f"resumable=1&tokens={TOKENS}&silence=0"
        async with sc.http.get(f"{sc.url}/s?{query}", headers=request_headers(kind)) as resp:
            raw = b""
            while raw.count(b"event: token") < 3:
                raw += await resp.content.readany()
            await relay.stop()  # the network drops the connection, both sides
            await relay.start()  # and comes back within the backoff
            raw += await resp.read()
        got = received_of(raw)
    finally:
        await relay.stop()
    assert_whole(got)
    assert (stats.started, stats.resumed) == (1, 1)
    assert relay.accepted == 2


def received_of(raw: bytes) -> Received:
    events = [i for i in Decoder().feed(raw) if isinstance(i, Event)]
    return Received(200, {}, raw, events, [])


@ROUTES
async def test_attempts_run_out_with_heartbeats_meanwhile_then_the_terminal_error(
    producer, start_sidecar, kind
):
    url, stats = producer
    relay = Relay(int(url.rsplit(":", 1)[1]))
    await relay.start()
    resume = {"attempts": 3, "backoff": "300ms", "max_backoff": "300ms"}
    sc = await start_sidecar(config(relay.url, kind, resume, heartbeat={"interval": "100ms"}))
    query = f"resumable=1&tokens={TOKENS}&silence=0"
    async with sc.http.get(f"{sc.url}/s?{query}", headers=request_headers(kind)) as resp:
        raw = b""
        while raw.count(b"event: token") < 2:
            raw += await resp.content.readany()
        await relay.stop()  # and it stays away: every attempt is refused
        raw += await resp.read()
    got = received_of(raw)
    error = got.error()
    assert (error["code"], error["partial"]) == ("upstream_disconnected", True)
    assert "3 resume attempts failed" in error["message"]
    # The client heard from the sidecar while it tried (three waits of 150-300 ms).
    after_cut = raw[raw.rindex(b"event: token") :]
    assert after_cut.count(b"event: keepalive") >= 2
    assert resumes(await sc.metrics()) == {"resumed": 0, "failed": 3, "no_id": 0, "exhausted": 1}
    assert stats.resumed == 0


@ROUTES
async def test_an_upstream_without_ids_ends_with_todays_error(producer, start_sidecar, kind):
    url, _ = producer
    sc = await start_sidecar(config(url, kind))
    got = await read_stream(sc.http, "GET", f"{sc.url}/s?mode=crash&tokens=6",
                            headers=request_headers(kind))  # fmt: skip
    assert got.error()["code"] == "upstream_disconnected"
    assert resumes(await sc.metrics())["no_id"] == 1


@ROUTES
async def test_an_idle_upstream_is_resumed(producer, start_sidecar, kind):
    url, stats = producer
    sc = await start_sidecar(config(url, kind, limits={"idle_timeout": "400ms"}))
    query = f"resumable=1&tokens={TOKENS}&silence=0&cut=5&cut_how=stall"
    got = await read_stream(sc.http, "GET", f"{sc.url}/s?{query}", headers=request_headers(kind))
    assert_whole(got)
    assert stats.resumed == 1


@ROUTES
async def test_events_the_producer_repeats_are_dropped(producer, start_sidecar, kind):
    url, stats = producer
    sc = await start_sidecar(config(url, kind))
    query = f"resumable=1&tokens={TOKENS}&silence=0&cut=6&repeat=3"
    got = await read_stream(sc.http, "GET", f"{sc.url}/s?{query}", headers=request_headers(kind))
    assert_whole(got)
    assert stats.resumed == 1


@ROUTES
async def test_the_openai_background_responses_form(producer, start_sidecar, kind):
    """POST /v1/responses, cut; GET /v1/responses/{id}?stream=true&starting_after=N."""
    url, stats = producer
    resume = {
        "method": "GET",
        "path": "/v1/responses/{data.response.id}",
        "query": {"stream": "true", "starting_after": "{data.sequence_number}"},
        "header": None,
        "body": "drop",
        "order": "data.sequence_number",
    }
    terminal = {"events": ["response.completed"]}
    sc = await start_sidecar(config(url, kind, resume, "/v1/responses", terminal=terminal))
    # Cut after sequence_number 3; the producer repeats 2 and 3 before going on.
    query = "resumable=1&style=responses&tokens=8&silence=0&cut=4&repeat=2"
    got = await read_stream(sc.http, "POST", f"{sc.url}/s?{query}", json={"model": "m"},
                            headers=request_headers(kind))  # fmt: skip
    kinds = [k for k in got.kinds() if k != "keepalive"]
    assert kinds == ["response.created", *["response.output_text.delta"] * 8, "response.completed"]
    sequence = [json.loads(e.data or "{}")["sequence_number"] for e in got.events
                if e.event and e.event.startswith("response.")]  # fmt: skip
    assert sequence == list(range(10))
    assert "".join(d["delta"] for d in got.data("response.output_text.delta")) == answer(8)
    resumed = stats.records[-1]
    assert resumed.resume_of is not None
    assert (resumed.method, resumed.path) == ("GET", f"/v1/responses/resp_{resumed.resume_of[0]}")
    assert resumed.query_string == "stream=true&starting_after=3"
    assert resumed.body == b""
    assert (stats.started, stats.resumed) == (1, 1)


@ROUTES
async def test_an_answer_that_is_no_stream_is_a_failed_attempt(upstream, start_sidecar, kind):
    def event(n: int) -> bytes:
        return sse(f'id: {n}\nevent: token\ndata: {{"text": "{n}"}}\n\n')

    answers = iter(
        [
            Script([event(1), event(2), 0.05, "abort"]),
            Script([b'{"error": "busy"}'], status=503, content_type="application/json"),
            Script([b"<html>"], content_type="text/html"),
            Script([event(2), event(3), sse("event: done\ndata: [DONE]\n\n")]),
        ]
    )
    upstream.script = lambda _request: next(answers)
    sc = await start_sidecar(
        make_config(upstream.url, upstream_resume={"enabled": True, **FAST},
                    **({"resume": {"enabled": True}} if kind == "resume" else {}))
    )  # fmt: skip
    got = await read_stream(sc.http, "POST", f"{sc.url}/s", data=b'{"q": 1}',
                            headers=request_headers(kind))  # fmt: skip
    assert [e.data for e in got.events if e.event == "token"] == ['{"text": "1"}',
            '{"text": "2"}', '{"text": "3"}']  # fmt: skip
    assert got.kinds()[-1] == "done"
    assert [r.headers.get("Last-Event-ID") for r in upstream.requests] == [None, "2", "2", "2"]
    assert {r.body for r in upstream.requests} == {b'{"q": 1}'}  # the body kept for each
    assert resumes(await sc.metrics()) == {"resumed": 1, "failed": 2, "no_id": 0, "exhausted": 0}


async def test_off_by_default_a_cut_is_todays_error(producer, start_sidecar):
    url, stats = producer
    sc = await start_sidecar(make_config(url + "/v1/chat"))
    got = await read_stream(sc.http, "GET", f"{sc.url}/s?resumable=1&tokens=6&silence=0&cut=2")
    assert got.error()["code"] == "upstream_disconnected"
    assert stats.resumed == 0


async def test_a_client_that_leaves_during_a_resume_ends_it_there(producer, start_sidecar):
    url, _ = producer
    relay = Relay(int(url.rsplit(":", 1)[1]))
    await relay.start()
    try:
        sc = await start_sidecar(config(relay.url, "plain", {"backoff": "4s", "max_backoff": "4s"}))
        async with sc.http.get(f"{sc.url}/s?resumable=1&tokens=6&silence=0") as resp:
            await resp.content.readuntil(b"event: token")
            await relay.stop()
            await relay.start()  # a resume would get through: none must be sent
            await asyncio.sleep(0.2)  # inside the first backoff (2-4 s)
        async with asyncio.timeout(5):
            while 'outcome="client_disconnected",route="test"} 1.0' not in await sc.metrics():
                await asyncio.sleep(0.05)
        assert resumes(await sc.metrics())["resumed"] == 0
        assert relay.accepted == 1
    finally:
        await relay.stop()


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_both_ends_drop_and_the_client_still_gets_every_event_once(
    producer, start_sidecar, request, backend
):
    """The upstream is cut (resumed by the sidecar), then the client leaves and comes back."""
    url, stats = producer
    top: dict[str, Any] = {}
    if backend == "redis":
        top["backend"] = {"kind": "redis", "url": request.getfixturevalue("redis_server").url}
    sc = await start_sidecar(config(url, "resume", top=top))
    headers = request_headers("resume")
    query = f"resumable=1&tokens={TOKENS}&silence=0&cut=3&cut_how=reset"
    async with sc.http.get(f"{sc.url}/s?{query}", headers=headers) as resp:
        raw = b""
        while raw.count(b"event: token") < 6:  # past the upstream's cut and resume
            raw += await resp.content.readany()
    first = [e for e in received_of(raw).events if e.event == "token"]
    last_id = first[-1].id
    assert last_id is not None
    again = await read_stream(sc.http, "GET", f"{sc.url}/s?{query}",
                              headers={**headers, "Last-Event-ID": last_id})  # fmt: skip
    rest = [e for e in again.events if e.event == "token"]
    texts = [json.loads(e.data or "")["text"] for e in first + rest]
    assert "".join(texts) == answer()
    assert again.kinds()[-1] == "done"
    assert (stats.started, stats.resumed) == (1, 1)  # one run, one upstream resume


@ROUTES
async def test_a_stop_during_a_resume_ends_the_stream_at_once(producer, start_sidecar, kind):
    url, _ = producer
    relay = Relay(int(url.rsplit(":", 1)[1]))
    await relay.start()
    try:
        sc = await start_sidecar(config(relay.url, kind, {"backoff": "4s", "max_backoff": "4s"}))
        headers = {"X-Session-Key": "user-1"}
        async with sc.http.get(
            f"{sc.url}/s?resumable=1&tokens=6&silence=0", headers=headers
        ) as resp:
            raw = await resp.content.readuntil(b"event: token")
            await relay.stop()
            await relay.start()
            await asyncio.sleep(0.2)  # the sidecar waits out its first backoff (2-4 s)
            async with sc.http.delete(f"{sc.url}/s", headers=headers) as stop:
                assert stop.status == 202
            async with asyncio.timeout(10):
                raw += await resp.read()
        got = received_of(raw)
        assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
        assert relay.accepted == 1
        assert resumes(await sc.metrics())["resumed"] == 0
    finally:
        await relay.stop()
