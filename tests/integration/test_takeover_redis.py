"""Run takeover across two real sidecar processes on one real Redis, in front of a real producer.

Replica A runs the upstream request; it dies (SIGKILL) or stalls (SIGSTOP)
mid-stream. The client reconnects to replica B with ``Last-Event-ID`` (or
already follows the run there): B takes the run over, resumes the producer
after the last logged id and appends to the same log, so the client gets
every event once and the producer's own ``done``. The example producer
(resumable runs: its answer goes on without the connection) plays the
producer; a scripted one stands in where a test needs a producer that cannot
resume, or one that says which connection sent each event.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from aiohttp import web
from redis.asyncio import Redis

from sidecar.examples.producer import ANSWER, create_app
from sidecar.replay.redis_scripts import Keys
from sidecar.sessions.redis_scripts import fence_key
from tests.integration.processes import SidecarProcess
from tests.integration.slowlink import SlowLink
from tests.integration.streams import read_stream
from tests.integration.test_resume import data_events, read_until
from tests.integration.test_resume_redis import Pair, pair_config, running_pair

pytestmark = pytest.mark.redis

LEASE = 1.0
EVENTS = 60
GAP = 0.05


@dataclass
class Producer:
    """A producer that numbers its events and goes on after ``Last-Event-ID``.

    Each event's data is ``n.c``: its number, and which of the producer's
    connections sent it (1, 2, …), so a log shows who appended what.
    """

    url: str = ""
    resumable: bool = True
    requests: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        last = request.headers.get("Last-Event-ID")
        self.requests.append(last)
        connection = len(self.requests)
        if last is not None and not self.resumable:
            return web.json_response({"error": "cannot resume"}, status=410)
        start = int(last.rsplit("-", 1)[1]) + 1 if last else 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(start, EVENTS + 1):
            await resp.write(f"id: ev-{i}\ndata: {i}.{connection}\n\n".encode())
            await asyncio.sleep(GAP)
        await resp.write(b"event: done\ndata: [DONE]\n\n")
        return resp

    @property
    def resumes(self) -> list[str]:
        return [r for r in self.requests if r is not None]


async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class Upstream:
    url: str


@pytest.fixture
async def example() -> AsyncIterator[Upstream]:
    """The example producer at real speed: a token every 50 ms."""
    async for url in serving(create_app(speed=1.0)):
        yield Upstream(url + "/v1/chat")


@pytest.fixture
async def example_pair(tmp_path, redis_server, example) -> AsyncIterator[Pair]:
    async for both in running_pair(tmp_path, takeover_config(redis_server, example)):
        yield both


TOKENS = 40
#: A resumable run of the example producer: its answer goes on without a connection.
RUN = f"resumable=1&tokens={TOKENS}&silence=0"


async def producer_stats(pair: Pair, example: Upstream) -> dict[str, Any]:
    """The example producer's own account (GET /_stats)."""
    async with pair.http.get(example.url.removesuffix("/v1/chat") + "/_stats") as resp:
        stats: dict[str, Any] = await resp.json()
    return stats


async def read_tokens(resp: Any, count: int) -> list[tuple[str, str]]:
    """Read ``count`` token events (id, text) from a live response, then stop."""
    got: list[tuple[str, str]] = []
    while len(got) < count:
        block = (await resp.content.readuntil(b"\n\n")).decode()
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n") if ": " in line)
        if fields.get("event") == "token":
            got.append((fields["id"], json.loads(fields["data"])["text"]))
    return got


def texts_of(raw: bytes | str) -> list[str]:
    """The token texts of a stream's raw bytes, in order."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    found = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        if "event: token" in lines:
            (data,) = [line[6:] for line in lines if line.startswith("data: ")]
            found.append(json.loads(data)["text"])
    return found


def whole(texts: list[str]) -> bool:
    """Every token of the answer once, in order."""
    return "".join(texts).split() == ANSWER.split()[:TOKENS]


@pytest.fixture
async def producer() -> AsyncIterator[Producer]:
    made = Producer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", made.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    made.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield made
    await runner.cleanup()


def takeover_config(redis_server, producer: Producer | Upstream) -> dict:
    config = pair_config(redis_server, producer, lease=f"{LEASE:g}s")
    config["routes"][0]["upstream_resume"] = {"enabled": True, "attempts": 1, "backoff": "50ms"}
    return config


@pytest.fixture
async def pair(tmp_path, redis_server, producer) -> AsyncIterator[Pair]:
    async for both in running_pair(tmp_path, takeover_config(redis_server, producer)):
        yield both


def number(data: str) -> int:
    return int(data.split(".", maxsplit=1)[0])


def numbers(got) -> list[int]:
    return [number(d) for d in data_events(got)]


def numbers_in(raw: str) -> list[int]:
    """The event numbers in a stream's raw text."""
    lines = (line for block in raw.split("\n\n") for line in block.split("\n"))
    return [number(line[6:]) for line in lines if line.startswith("data: ") and line[6].isdigit()]


async def test_a_reconnect_after_the_runs_replica_was_killed_gets_every_event_once(
    example_pair, example
):
    pair = example_pair
    async with pair.http.get(pair.a.url + f"/s?s=kate&{RUN}") as resp:
        first = await read_tokens(resp, 10)
        pair.a.kill()  # SIGKILL mid-stream: no terminal, no release, no last append round
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=kate",
        headers={"Last-Event-ID": first[-1][0]}, limit_s=20.0,
    )  # fmt: skip
    assert got.status == 200
    assert whole([t for _, t in first] + texts_of(got.raw))
    assert [k for k in got.kinds() if k != "keepalive"][-1] == "done"  # the producer's own
    ids = [i for i, _ in first] + [e.id for e in got.events if e.event == "token"]
    assert len(set(ids)) == TOKENS
    # The producer was asked once more, to resume its run: no restart.
    stats = await producer_stats(pair, example)
    assert (stats["started"], stats["resumed"], stats["resume_misses"]) == (1, 1, 0)
    taken = {"route": "test", "result": "taken"}
    assert await pair.metric(pair.b, "sse_sidecar_run_takeovers_total", **taken) == 1


async def test_without_a_resumable_producer_the_buffered_events_then_a_terminal_error(
    pair, producer
):
    producer.resumable = False
    async with pair.http.get(pair.a.url + "/s?s=kate") as resp:
        first = await read_until(resp, 5)
        await asyncio.sleep(0.3)  # the events reach Redis: the reconnect replays them
        pair.a.kill()
    loop = asyncio.get_running_loop()
    died = loop.time()
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=kate",
        headers={"Last-Event-ID": first[2][0]}, limit_s=10.0,
    )  # fmt: skip
    ended = loop.time()
    data = numbers(got)
    assert data[:2] == [4, 5]
    assert data == list(range(4, 4 + len(data)))
    assert got.kinds()[-1] == "error"
    assert got.error()["code"] == "upstream_disconnected"
    assert ended - died < LEASE + 1.0 + 1.0  # lease + 1 s, and a margin for a loaded machine
    assert producer.resumes == [f"ev-{data[-1]}"]  # it was asked, and said no


async def test_a_run_whose_upstream_set_no_id_ends_as_before(example_pair, example):
    """Nothing to resume from (the sidecar numbered the events): what was logged, then the end."""
    pair = example_pair
    async with pair.http.get(pair.a.url + f"/s?s=noid&tokens={TOKENS}&silence=0") as resp:
        first = await read_tokens(resp, 5)
        await asyncio.sleep(0.3)  # the events reach Redis: the reconnect replays them
        pair.a.kill()
    loop = asyncio.get_running_loop()
    died = loop.time()
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=noid",
        headers={"Last-Event-ID": first[2][0]}, limit_s=10.0,
    )  # fmt: skip
    ended = loop.time()
    assert texts_of(got.raw)[:2] == [t for _, t in first[3:5]]
    assert got.error()["code"] == "upstream_disconnected"
    assert ended - died < LEASE + 1.0 + 1.0  # lease + 1 s, and a margin for a loaded machine
    stats = await producer_stats(pair, example)
    assert (stats["started"], stats["resumed"], stats["resume_misses"]) == (1, 0, 0)
    impossible = {"route": "test", "result": "impossible"}
    assert await pair.metric(pair.b, "sse_sidecar_run_takeovers_total", **impossible) >= 1


async def test_a_live_follower_on_the_other_replica_takes_the_run_over(example_pair, example):
    pair = example_pair
    async with pair.http.get(pair.a.url + f"/s?s=erin&{RUN}") as resp:
        first = await read_tokens(resp, 3)
        resp.connection.transport.abort()
    headers = {"Last-Event-ID": first[-1][0]}
    async with pair.http.get(pair.b.url + "/s?s=erin", headers=headers) as resp:
        live = await read_tokens(resp, 3)  # B follows the run A goes on with
        pair.a.kill()
        async with asyncio.timeout(20):
            rest = (await resp.content.read()).decode()
    assert whole([t for _, t in first + live] + texts_of(rest))
    assert "event: done" in rest.strip().split("\n\n")[-1]
    stats = await producer_stats(pair, example)
    assert (stats["started"], stats["resumed"]) == (1, 1)


async def test_two_replicas_with_followers_race_and_one_takes_the_run_over(
    tmp_path, redis_server, example
):
    """A dies with followers on B and C: one of them resumes the producer, the other follows."""
    config = takeover_config(redis_server, example)
    c = SidecarProcess(tmp_path, config, "c")
    await c.start()
    try:
        async for pair in running_pair(tmp_path, config):
            async with pair.http.get(pair.a.url + f"/s?s=race&{RUN}") as resp:
                first = await read_tokens(resp, 3)
                resp.connection.transport.abort()
            headers = {"Last-Event-ID": first[-1][0]}
            async with (
                pair.http.get(pair.b.url + "/s?s=race", headers=headers) as on_b,
                pair.http.get(c.url + "/s?s=race", headers=headers) as on_c,
            ):
                await read_tokens(on_b, 2)
                await read_tokens(on_c, 2)
                pair.a.kill()
                async with asyncio.timeout(20):
                    rest = await asyncio.gather(on_b.content.read(), on_c.content.read())
            for got in rest:
                texts = texts_of(got)
                assert "".join(texts).split() == ANSWER.split()[5:TOKENS]  # each once, in order
                assert b"event: done" in got.strip().split(b"\n\n")[-1]
            stats = await producer_stats(pair, example)
            assert (stats["started"], stats["resumed"]) == (1, 1)  # one resume request
            results = [
                {r: await pair.metric(p, "sse_sidecar_run_takeovers_total", result=r)
                 for r in ("taken", "followed")}
                for p in (pair.b, c)
            ]  # fmt: skip
            assert sorted(r["taken"] for r in results) == [0.0, 1.0]
    finally:
        c.kill()


async def test_a_stale_owner_never_writes_to_the_log_again(pair, producer, redis_server):
    raw = Redis.from_url(redis_server.url)
    try:
        async with pair.http.get(pair.a.url + "/s?s=sam") as resp:
            first = await read_until(resp, 5)
            await asyncio.sleep(0.3)
            pair.a.signal(signal.SIGSTOP)  # A stalls past its lease, its run unfinished
            try:
                await asyncio.sleep(LEASE + 0.5)
                headers = {"Last-Event-ID": first[-1][0]}
                async with pair.http.get(pair.b.url + "/s?s=sam", headers=headers) as taken:
                    # Well past what A logged: B has taken over and goes on.
                    seen = await read_until(taken, 20)
                    # A wakes with the producer's output of meanwhile in its socket,
                    # while B still appends.
                    pair.a.signal(signal.SIGCONT)
                    async with asyncio.timeout(20):
                        more = (await taken.content.read()).decode()
            finally:
                pair.a.signal(signal.SIGCONT)
            async with asyncio.timeout(10):
                rest = (await resp.content.read()).decode()
        # B ran the stream to its end, every event once.
        got = [number(d) for _, d in first + seen] + numbers_in(more)
        assert got == list(range(1, EVENTS + 1))
        assert "event: done" in more.strip().split("\n\n")[-1]
        # A's own client got a terminal event: replaced (or the producer's own, had it
        # relayed everything first).
        last_block = rest.strip().split("\n\n")[-1]
        assert "event: done" in last_block or '"code":"replaced"' in last_block.replace(" ", "")
        # The log: every event once, in order, and after the id B resumed from,
        # only what B's connection to the producer sent (nothing of A's).
        (stream,) = [k async for k in raw.scan_iter(match=f"{pair_prefix(pair)}replay:*")]
        logged = [f[b"d"].decode() for _, f in await raw.xrange(stream)]
        events = [d for d in logged if d.startswith("id: ev-")]
        sent = [d.split("data: ")[1].strip() for d in events]
        assert [number(d) for d in sent] == list(range(number(sent[0]), EVENTS + 1))
        (resumed_after,) = producer.resumes
        after = int(resumed_after.rsplit("-", 1)[1])
        assert all(d.endswith(".2") for d in sent if number(d) > after)
        assert not any("replaced" in d for d in logged)
        assert len(producer.resumes) == 1
    finally:
        await raw.aclose()


def pair_prefix(pair: Pair) -> str:
    config = yaml.safe_load(pair.a.config_path.read_text())
    return config["backend"]["prefix"]


@pytest.mark.parametrize("policy", ["reject", "replace"])
async def test_a_takeover_whose_session_claim_is_refused_ends_the_stream(
    tmp_path, redis_server, producer, policy
):
    """A new stream claims the session between B's takeover and B's claim (either policy).

    The new stream (on C) goes on; B's client gets a terminal error, the
    producer is asked no resume: one run for the session, never two.
    """
    link = SlowLink(redis_server.port, delay=0.1)
    await link.start()
    config = takeover_config(redis_server, producer)
    config["routes"][0]["session"]["policy"] = policy
    slow = {**config, "backend": {**config["backend"], "url": link.url}}
    a = SidecarProcess(tmp_path, config, "a")
    b = SidecarProcess(tmp_path, slow, "b")
    c = SidecarProcess(tmp_path, config, "c")
    raw = Redis.from_url(redis_server.url)
    notes = raw.pubsub()
    pair = Pair(a, b)
    try:
        await asyncio.gather(a.start(), b.start(), c.start())
        prefix = config["backend"]["prefix"]
        await raw.config_set("notify-keyspace-events", "K$")
        async with pair.http.get(a.url + "/s?s=zed") as resp:
            first = await read_until(resp, 5)
            # From after A's own claim (which drew a token too) on.
            await notes.subscribe(f"__keyspace@0__:{fence_key(prefix, 'test', 'zed')}")
            await asyncio.sleep(0.3)  # the events reach Redis: the reconnect replays them
            a.kill()
        reconnect = asyncio.ensure_future(
            read_stream(
                pair.http,
                "GET",
                b.url + "/s?s=zed",
                headers={"Last-Event-ID": first[-1][0]},
                limit_s=15.0,
            )
        )
        # B's takeover script draws a fresh fencing token (INCR): the session is
        # free from then until B's claim lands, two delays later.
        async with asyncio.timeout(10):
            while (await notes.get_message(ignore_subscribe_messages=True, timeout=1.0)) is None:
                pass
        async with pair.http.get(c.url + "/s?s=zed") as new:
            assert new.status == 200
            fresh = await read_until(new, 3)
            got = await reconnect
            rest = (await new.content.read()).decode()
        assert [number(d) for _, d in fresh] == [1, 2, 3]  # a run of its own, from the start
        assert "event: done" in rest.strip().split("\n\n")[-1]
        assert got.status == 200
        logged = numbers(got)  # what A logged after the client's id, then the end
        assert logged == list(range(6, 6 + len(logged)))
        assert got.kinds()[-1] == "error"
        assert got.error()["code"] == "upstream_disconnected"
        assert "its session is taken" in got.error()["message"]
        assert producer.requests == [None, None]  # A's run and C's: no resume request
        # The old run's log (its events went when C's run replaced it) holds that
        # end, so its followers on any replica read the same event.
        run_id = got.events[-1].id.rsplit("-", 1)[0]
        old = Keys.of(prefix, "test", "zed", run_id)
        (end,) = [f[b"d"].decode() for _, f in await raw.xrange(old.stream)]
        assert '"code":"upstream_disconnected"' in end
        assert "its session is taken" in end
        assert "Traceback" not in b.log()
    finally:
        await notes.aclose()
        await raw.aclose()
        await pair.http.close()
        for process in (a, b, c):
            process.kill()
        await link.close()
