"""Resume during a Redis outage, against a real redis-server stopped, killed and restarted.

Two real sidecar processes share one Redis (the pair of test_resume_redis.py):
A runs the upstream request, B is the other replica. Whatever Redis does, a
client gets a defined answer about a second after it asks: the events its
process holds and then a terminal event, ``event: error``
``backend_unavailable`` with ``retry:``, or a 503 with ``Retry-After`` —
never a bare close, never heartbeats until ``limits.idle_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.conftest import Script
from tests.integration.streams import Received, read_stream
from tests.integration.test_resume import data_events, numbered, read_until
from tests.integration.test_resume_redis import Pair, pair_config, running_pair

pytestmark = pytest.mark.redis

#: The bound on "about a second" (the calls' own budget), with room for a loaded machine.
ANSWER_S = 1.0 + 2.0
#: Longer than any test here runs: a stream that ends by the idle timeout has hung.
IDLE_TIMEOUT = "120s"
TERMINALS = ("done", "error")


def outage_config(redis_server, upstream, on_outage: str = "reject") -> dict:
    config = pair_config(redis_server, upstream, lease="2s", on_outage=on_outage)
    config["routes"][0]["limits"] = {"idle_timeout": IDLE_TIMEOUT}
    return config


@pytest.fixture
async def pair(tmp_path, redis_server, upstream) -> AsyncIterator[Pair]:
    try:
        async for both in running_pair(tmp_path, outage_config(redis_server, upstream)):
            yield both
    finally:
        _resume(redis_server)


@pytest.fixture
async def allow_pair(tmp_path, redis_server, upstream) -> AsyncIterator[Pair]:
    config = outage_config(redis_server, upstream, on_outage="allow")
    try:
        async for both in running_pair(tmp_path, config):
            yield both
    finally:
        _resume(redis_server)


def _resume(redis_server) -> None:
    """A SIGSTOPped Redis must not outlive its test stopped (its kill would hang)."""
    if redis_server.process is not None:
        redis_server.process.send_signal(signal.SIGCONT)


def outage(redis_server, kind: str) -> Callable[[], None]:
    """Take Redis away (``stall``: SIGSTOP, ``kill``: SIGKILL); return what brings it back."""
    assert redis_server.process is not None
    if kind == "stall":
        redis_server.process.send_signal(signal.SIGSTOP)
        return lambda: _resume(redis_server)
    redis_server.kill()
    return redis_server.start  # an empty Redis on the same port: everything it held is gone


def blocks(raw: bytes) -> list[str]:
    return [b for b in raw.decode().replace("\r\n", "\n").split("\n\n") if b.strip()]


def assert_unavailable(block: str) -> None:
    """``event: error`` ``backend_unavailable``, with a ``retry:`` that brings EventSource back."""
    lines = block.strip().split("\n")
    assert "event: error" in lines, block
    assert any(line.startswith("retry: ") for line in lines), block
    data = json.loads("".join(line[6:] for line in lines if line.startswith("data: ")))
    assert data["code"] == "backend_unavailable", data


def assert_defined_end(got: Received) -> None:
    """The stream ended with exactly one terminal event, the last thing in it."""
    assert got.status == 200
    kinds = got.kinds()
    assert kinds, got.raw
    assert kinds[-1] in TERMINALS, kinds
    assert sum(k in TERMINALS for k in kinds) == 1, kinds
    if kinds[-1] == "error" and got.error()["code"] == "backend_unavailable":
        assert_unavailable(blocks(got.raw)[-1])


async def first_block(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[float, Received]:
    """Seconds until the response's first event (or its end), and the whole response."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    got = await read_stream(http, "GET", url, limit_s=30.0, **kwargs)
    first = got.times[0] if got.times else loop.time()
    return first - asked, got


async def started_then_dropped(pair: Pair, key: str, count: int = 3) -> str:
    """A run on A whose client read ``count`` events and dropped; the last id it has."""
    async with pair.http.get(pair.a.url + f"/s?s={key}") as resp:
        first = await read_until(resp, count)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    # Appends reach Redis a round after the local client has them.
    await asyncio.sleep(0.3)
    return first[-1][0]


@pytest.mark.parametrize("kind", ["stall", "kill"])
@pytest.mark.parametrize("where", ["same", "other"])
async def test_a_reconnect_during_an_outage_gets_a_defined_answer_within_a_second(
    pair, upstream, redis_server, kind, where
):
    upstream.script = numbered(40, gap=0.05)  # 2 s: the run goes on through the outage
    last_id = await started_then_dropped(pair, f"re-{kind}-{where}")
    back = outage(redis_server, kind)
    try:
        process = pair.a if where == "same" else pair.b
        took, got = await first_block(
            pair.http, process.url + f"/s?s=re-{kind}-{where}", headers={"Last-Event-ID": last_id}
        )
    finally:
        back()
    assert took < ANSWER_S, took
    assert_defined_end(got)
    data = data_events(got)
    if where == "same":
        # The run's own process holds its events: all the client missed, then the end.
        assert data == [str(i) for i in range(4, 41)]
        assert got.kinds()[-1] == "done"
    else:
        # Nothing but Redis knows where the client is: it says so, and when to come back.
        assert data == []
        assert got.error()["code"] == "backend_unavailable"


@pytest.mark.parametrize("kind", ["stall", "kill", "kill-restart", "stall-resume"])
async def test_a_remote_follower_ends_with_a_terminal_event_through_an_outage(
    pair, upstream, redis_server, kind
):
    """B follows A's run live; Redis goes away (and maybe comes back): B's stream has an end."""
    upstream.script = numbered(120, gap=0.05)  # 6 s: longer than the outage
    last_id = await started_then_dropped(pair, f"live-{kind}")
    loop = asyncio.get_running_loop()
    headers = {"Last-Event-ID": last_id}
    async with pair.http.get(pair.b.url + f"/s?s=live-{kind}", headers=headers) as resp:
        assert resp.status == 200
        live = await read_until(resp, 3)
        back = outage(redis_server, kind.split("-")[0])
        went = loop.time()
        try:
            if kind.endswith(("restart", "resume")):
                await asyncio.sleep(0.5)
                back()
            async with asyncio.timeout(30):
                rest = await resp.content.read()
        finally:
            back()
        ended = loop.time()
    assert [int(d) for _, d in live] == [4, 5, 6]
    tail = blocks(rest)
    assert tail, "a bare close"
    last = tail[-1]
    assert "event: done" in last or "event: error" in last, last
    assert sum("event: error" in b or "event: done" in b for b in tail) == 1, tail
    if kind in ("stall", "kill"):
        # Redis stays away: B cannot follow, and says so within about a second.
        assert_unavailable(last)
        assert ended - went < ANSWER_S + 1.0  # plus one wait of the follower's read
    else:
        # Back within half a second: B goes on (or ends with a defined error), never idles out.
        assert ended - went < 20.0
        if "event: done" in last:
            numbers = [
                int(line[6:])
                for b in tail
                for line in b.split("\n")
                if line.startswith("data: ") and line[6:].isdigit()
            ]
            assert numbers == sorted(set(numbers)), "an event twice or out of order"


@pytest.mark.parametrize("kind", ["stall", "kill"])
async def test_a_new_resumable_stream_during_an_outage_gets_503_with_retry_after(
    pair, upstream, redis_server, kind
):
    upstream.script = numbered(3, gap=0.01)
    loop = asyncio.get_running_loop()
    back = outage(redis_server, kind)
    try:
        for process in (pair.a, pair.b):
            asked = loop.time()
            async with pair.http.get(process.url + f"/s?s=new-{kind}") as resp:
                body = await resp.json()
                took = loop.time() - asked
            assert took < ANSWER_S, took
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert body["error"]["code"] == "backend_unavailable"
    finally:
        back()
    assert upstream.requests == []  # refused before anything went upstream
    # Once Redis answers again, the same request streams.
    for _ in range(40):
        got = await read_stream(pair.http, "GET", pair.a.url + f"/s?s=new-{kind}-after")
        if got.status == 200:
            break
        await asyncio.sleep(0.25)
    assert got.status == 200
    assert data_events(got) == ["1", "2", "3"]


@pytest.mark.parametrize("kind", ["stall", "kill"])
async def test_a_new_stream_during_an_outage_streams_under_on_outage_allow(
    allow_pair, upstream, redis_server, kind
):
    pair = allow_pair
    upstream.script = Script([b"data: 1\n\n", 0.05, b"data: 2\n\n", b"event: done\ndata: x\n\n"])
    back = outage(redis_server, kind)
    try:
        took, got = await first_block(pair.http, pair.b.url + f"/s?s=allow-{kind}")
    finally:
        back()
    assert took < ANSWER_S, took
    assert_defined_end(got)
    assert data_events(got) == ["1", "2"]
    assert got.kinds()[-1] == "done"
