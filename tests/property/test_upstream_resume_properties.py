"""Upstream resume, property-tested end to end: a cut anywhere, a resume that repeats, one stream.

Strategy: one real upstream and one real sidecar on loopback per test; each
hypothesis example is one request. The upstream sends a numbered answer cut
into reads, and kills the connection at a byte offset the example picks
(often inside an event); the resume request (``Last-Event-ID``) gets the
rest from an earlier event the example picks too, as a producer that
repeats a little does. Whatever the cut and the repeat, the client must get
every event once, in order, then the terminal event: what one unbroken
connection gives. And with upstream_resume on and nothing cut, a route
forwards what it forwards with it off (the splice's property, with the
cursor in the way).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.normalize import Normalizer
from sidecar.sse import Decoder, Event, Item
from tests.budget import examples
from tests.conftest import Running, Script, ScriptedUpstream, make_config
from tests.property.test_splice_properties import Case, cases, merged, reference

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GAP = 0.001
DONE = b"event: done\ndata: [DONE]\n\n"


def event(n: int, text: str) -> bytes:
    return f"id: run-{n}\nevent: token\ndata: {text}\n\n".encode()


@dataclass(frozen=True)
class Cut:
    """An answer of ``len(texts)`` events; the first connection dies after ``at`` bytes."""

    texts: list[str]
    at: int
    #: Events before the last one the client got that the resume sends again.
    repeat: int
    #: Where the first connection's bytes are split into reads.
    splits: list[int]
    comments: bool

    def blocks(self) -> list[bytes]:
        out = []
        for n, text in enumerate(self.texts, 1):
            if self.comments and n % 3 == 0:
                out.append(b": ping\n\n")
            out.append(event(n, text))
        return [*out, DONE]

    def first(self) -> list[bytes | float | str]:
        body = b"".join(self.blocks())[: self.at]
        bounds = sorted({0, len(body), *(s for s in self.splits if s < len(body))})
        steps: list[bytes | float | str] = []
        for a, b in itertools.pairwise(bounds):
            steps += [body[a:b], GAP]
        return [*steps, "abort"]

    def rest(self, last_id: str) -> list[bytes | float | str]:
        after = int(last_id.rsplit("-", 1)[1])
        start = max(after - self.repeat, 0)
        return [*(event(n, t) for n, t in enumerate(self.texts, 1) if n > start), DONE]


@st.composite
def cuts(draw: st.DrawFn) -> Cut:
    texts = draw(st.lists(st.text("abc xyz", min_size=1, max_size=5), min_size=2, max_size=10))
    comments = draw(st.booleans())
    whole = len(b"".join(Cut(texts, 0, 0, [], comments).blocks()))
    # After the first event (else there is no id to resume from), before the terminal.
    first = len(event(1, texts[0]))
    at = draw(st.integers(first, whole - len(DONE)))
    splits = draw(st.lists(st.integers(1, whole), max_size=5))
    return Cut(texts, at, draw(st.integers(0, 4)), splits, comments)


@dataclass
class Harness:
    upstream: ScriptedUpstream
    sidecar: Running
    headers: dict[str, str]
    counter: itertools.count[int]

    async def receive(self, case: Cut) -> list[Item]:
        first = True

        def script(request: web.Request) -> Script:
            nonlocal first
            last = request.headers.get("Last-Event-ID")
            if first:
                first = False
                assert last is None
                return Script(case.first())
            assert last is not None
            return Script(case.rest(last))

        self.upstream.script = script
        decoder = Decoder()
        items: list[Item] = []
        http = self.sidecar.http
        name = next(self.counter)
        url = f"{self.sidecar.url}/s?case={name}"
        async with asyncio.timeout(10), http.get(url, headers=self.headers) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                items += decoder.feed(chunk)
        return [*items, *decoder.close()]


QUIET = {"heartbeat": {"interval": "1h"}}
RESUME = {"enabled": True, "backoff": "1ms", "max_backoff": "1ms"}


@pytest.fixture(params=["plain", "resume"])
async def cutting(request, upstream, start_sidecar) -> Harness:
    route: dict[str, Any] = {"comments": "drop", "upstream_resume": RESUME, **QUIET}
    headers = {}
    if request.param == "resume":
        route["resume"] = {"enabled": True, "grace": "5s"}
        headers["X-Session-Key"] = "k"
    sidecar = await start_sidecar(make_config(upstream.url, **route))
    return Harness(upstream, sidecar, headers, itertools.count())


@settings(SETTINGS, max_examples=examples(0.2))
@given(case=cuts())
@example(case=Cut(["a", "b", "c"], at=len(event(1, "a")), repeat=0, splits=[], comments=False))
@example(case=Cut(["a", "b", "c"], at=len(event(1, "a")) + 3, repeat=4, splits=[5], comments=True))
async def test_any_cut_and_repeat_give_every_event_once(cutting: Harness, case: Cut) -> None:
    got = [i for i in await cutting.receive(case) if isinstance(i, Event)]
    assert [(e.id, e.data) for e in got[:-1]] == [
        (f"run-{n}", t) for n, t in enumerate(case.texts, 1)
    ]
    assert (got[-1].event, got[-1].data) == ("done", "[DONE]")
    assert len(cutting.upstream.requests) >= 2


@pytest.fixture
async def resuming(upstream, start_sidecar) -> tuple[ScriptedUpstream, Running, Any]:
    config = make_config(upstream.url, comments="convert", upstream_resume=RESUME, **QUIET)
    return upstream, await start_sidecar(config), config.routes[0]


@settings(SETTINGS, max_examples=examples(0.25))
@given(case=cases)
async def test_with_nothing_cut_the_cursor_changes_nothing(resuming: Any, case: Case) -> None:
    upstream, sidecar, route = resuming
    normalizer = Normalizer(route.comments, route.keepalive, route.terminal)
    (keepalive,) = Decoder().feed(normalizer.keepalive)
    steps: list[bytes | float] = []
    for piece in case.pieces:
        steps += [piece, GAP]
    upstream.script = Script(steps)
    decoder = Decoder()
    got: list[Item] = []
    async with asyncio.timeout(10), sidecar.http.get(f"{sidecar.url}/s") as resp:
        async for chunk in resp.content.iter_any():
            got += decoder.feed(chunk)
    got += decoder.close()
    expected = reference(case.body, route, normalizer)
    assert merged(got, keepalive) == merged(expected, keepalive)
