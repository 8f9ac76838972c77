"""Resume across two real sidecar processes sharing one Redis: the reconnect lands on the other one.

Process A runs the upstream request; the client drops and reconnects to
process B with ``Last-Event-ID``. B replays from the run's Redis Stream and
follows it live, and its follow lease keeps A from abandoning the run.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal

import aiohttp
import pytest

from tests.conftest import Script, make_config
from tests.integration.processes import SidecarProcess
from tests.integration.streams import read_stream
from tests.integration.test_resume import data_events, numbered, read_until

pytestmark = pytest.mark.redis

GRACE = 2.0


class Pair:
    def __init__(self, a: SidecarProcess, b: SidecarProcess) -> None:
        self.a, self.b = a, b
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def metric(
        self, process: SidecarProcess, name: str, *, until: float | None = None, **labels: str
    ) -> float:
        """One sample of ``name`` from the process's /metrics (0 when absent).

        ``until``: poll up to 2 s for the sample to reach that value.
        """
        value = 0.0
        for _ in range(40):
            async with self.http.get(process.admin_url + "/metrics") as resp:
                text = await resp.text()
            value = _sample(text, name, labels)
            if until is None or value == until:
                break
            await asyncio.sleep(0.05)
        return value


def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            return float(match[2])
    return 0.0


def pair_config(redis_server, upstream, **backend) -> dict:
    return {
        "backend": {
            "kind": "redis",
            "url": redis_server.url,
            "prefix": f"test-{secrets.token_hex(4)}:",
            **backend,
        },
        "routes": [
            {
                "name": "test",
                "path": "/s",
                "upstream": upstream.url,
                "session": {"from": "query:s"},
                "resume": {"enabled": True, "grace": f"{GRACE:g}s"},
                "heartbeat": {"interval": "500ms"},
            }
        ],
    }


async def running_pair(tmp_path, config):
    both = Pair(SidecarProcess(tmp_path, config, "a"), SidecarProcess(tmp_path, config, "b"))
    try:
        await asyncio.gather(both.a.start(), both.b.start())
        yield both
    finally:
        await both.http.close()
        both.a.kill()
        both.b.kill()


@pytest.fixture
async def pair(tmp_path, redis_server, upstream):
    async for both in running_pair(tmp_path, pair_config(redis_server, upstream)):
        yield both


@pytest.fixture
async def short_lease_pair(tmp_path, redis_server, upstream):
    config = pair_config(redis_server, upstream, lease="1s")
    async for both in running_pair(tmp_path, config):
        yield both


async def test_reconnect_to_the_other_process_gets_exactly_the_missed_events(pair, upstream):
    n, k = 40, 5  # 100 ms apart: the run outlives the grace after the client left A
    upstream.script = numbered(n, gap=0.1)
    loop = asyncio.get_running_loop()
    async with pair.http.get(pair.a.url + "/s?s=alice") as resp:
        first = await read_until(resp, k)
        resp.connection.transport.abort()
        left = loop.time()
    assert [d for _, d in first] == [str(i) for i in range(1, k + 1)]
    await asyncio.sleep(1.5)  # the run goes on in A meanwhile
    got = await read_stream(
        pair.http,
        "GET",
        pair.b.url + "/s?s=alice",
        headers={"Last-Event-ID": first[-1][0]},
        limit_s=15.0,
    )
    assert got.status == 200
    assert data_events(got) == [str(i) for i in range(k + 1, n + 1)]  # none twice, none missing
    assert got.kinds()[-1] == "done"
    ids = [e.id for e in got.events if e.id]
    assert len(set(ids)) == len(ids)
    assert len(upstream.requests) == 1
    record = upstream.requests[0]
    await asyncio.wait_for(record.finished.wait(), 2.0)
    # A kept the run past its grace because B followed it, and it ran to its end.
    assert record.client_gone_at is None
    assert record.ended_at is not None
    assert record.ended_at - left > GRACE + 0.5
    # A ends its run (finish, accounting) a moment after B has sent the terminal.
    completed = {"route": "test", "outcome": "completed"}
    assert await pair.metric(pair.a, "sse_sidecar_streams_total", until=1, **completed) == 1
    assert await pair.metric(pair.b, "sse_sidecar_resume_total", result="hit") == 1
    replayed = await pair.metric(pair.b, "sse_sidecar_events_total", kind="replayed")
    assert replayed >= 10  # what A logged while nobody followed came to B as replay


async def test_a_reconnect_to_the_other_process_at_once_waits_for_its_id_to_reach_redis(
    pair, upstream
):
    """The client has each event a round before Redis: its id is waited for, not a gap."""
    upstream.script = numbered(30, gap=0.002)
    for i in range(10):
        async with pair.http.get(pair.a.url + f"/s?s=quick{i}") as resp:
            first = await read_until(resp, 3)
            resp.connection.transport.abort()
        got = await read_stream(
            pair.http,
            "GET",
            pair.b.url + f"/s?s=quick{i}",
            headers={"Last-Event-ID": first[-1][0]},
            limit_s=15.0,
        )
        assert data_events(got) == [str(n) for n in range(4, 31)], got.raw
        assert got.kinds()[-1] == "done"


async def test_finished_stream_replays_its_tail_on_the_other_process(pair, upstream):
    upstream.script = numbered(5, gap=0.01)
    whole = await read_stream(pair.http, "GET", pair.a.url + "/s?s=frank")
    ids = [e.id for e in whole.events]
    assert data_events(whole) == ["1", "2", "3", "4", "5"]
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=frank", headers={"Last-Event-ID": ids[2]}
    )
    assert data_events(got) == ["4", "5"]
    assert got.kinds()[-1] == "done"
    assert got.events[-1].id == ids[-1]
    # With the terminal event's id the client has everything: 204 stops EventSource.
    headers = {"Last-Event-ID": ids[-1]}
    async with pair.http.get(pair.b.url + "/s?s=frank", headers=headers) as resp:
        assert resp.status == 204
    assert len(upstream.requests) == 1


async def test_another_sessions_key_gets_nothing_on_the_other_process(pair, upstream):
    upstream.script = numbered(6, gap=0.05)
    whole = await read_stream(pair.http, "GET", pair.a.url + "/s?s=grace")
    valid_id = whole.events[1].id
    for path in ("/s?s=mallory", "/s"):
        got = await read_stream(
            pair.http, "GET", pair.b.url + path, headers={"Last-Event-ID": valid_id}
        )
        assert got.kinds() == ["error"]
        assert got.error()["code"] == "resume_gap"
        assert b"data: 3" not in got.raw
    assert len(upstream.requests) == 1


async def test_unfollowed_run_is_abandoned_after_grace_and_forgotten(pair, upstream):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    loop = asyncio.get_running_loop()
    async with pair.http.get(pair.a.url + "/s?s=dave") as resp:
        (first,) = await read_until(resp, 1)
        resp.connection.transport.abort()
        left = loop.time()
    record = upstream.requests[0]
    await asyncio.wait_for(record.finished.wait(), GRACE + 2.0)
    assert record.ended_at is not None
    assert GRACE - 0.1 <= record.ended_at - left < GRACE + 1.5
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=dave", headers={"Last-Event-ID": first[0]}
    )
    assert got.kinds() == ["error"]
    assert got.error()["code"] == "resume_gap"
    abandoned = {"route": "test", "outcome": "abandoned"}
    assert await pair.metric(pair.a, "sse_sidecar_streams_total", until=1, **abandoned) == 1


async def test_other_credentials_get_403_on_the_other_process(pair, upstream):
    # The binding travels with the log: B refuses what A's run started.
    alice = {"Authorization": "Bearer alice-secret"}
    upstream.script = Script(
        [x for i in range(20) for x in (f"id: {i}\ndata: alice-{i}\n\n".encode(), 0.05)]
        + [b"event: done\ndata: [DONE]\n\n"]
    )
    async with pair.http.get(pair.a.url + "/s?s=conv-1", headers=alice) as resp:
        await read_until(resp, 2)
        for headers in ({"Authorization": "Bearer mallory", "Last-Event-ID": "0"}, {}):
            got = await read_stream(pair.http, "GET", pair.b.url + "/s?s=conv-1", headers=headers)
            assert got.status == 403
            assert b"alice-" not in got.raw
        rest = (await resp.content.read()).decode()
    assert "event: done" in rest
    assert "replaced" not in rest
    assert len(upstream.requests) == 1
    mine = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=conv-1", headers={**alice, "Last-Event-ID": "17"}
    )
    assert [e.data for e in mine.events if e.data.startswith("alice-")] == ["alice-18", "alice-19"]
    assert await pair.metric(pair.b, "sse_sidecar_resume_total", result="forbidden") == 2.0


async def test_remote_followers_use_the_metered_pool_and_one_shared_reader(pair, upstream):
    upstream.script = Script(
        [x for i in range(30) for x in (f"data: {i}\n\n".encode(), 0.05)]
        + [b"event: done\ndata: [DONE]\n\n"]
    )
    runs = []
    for n in range(5):
        resp = await pair.http.get(pair.a.url + f"/s?s=pool-{n}")
        runs.append((resp, await read_until(resp, 1)))
    followers = [
        asyncio.ensure_future(
            read_stream(
                pair.http, "GET", pair.b.url + f"/s?s=pool-{n}",
                headers={"Last-Event-ID": first[-1][0]},
            )
        )
        for n, (_, first) in enumerate(runs)
    ]  # fmt: skip
    await asyncio.sleep(0.5)
    conns = {
        (pool, state): await pair.metric(
            pair.b, "sse_sidecar_backend_connections", pool=pool, state=state
        )
        for pool in ("replay", "sessions")
        for state in ("open", "in_use", "max")
    }
    # backend.pool_size 6 per pool; the replay's shared reader is one more.
    assert conns["replay", "max"] == 7.0
    assert conns["sessions", "max"] == 6.0
    assert 1.0 <= conns["replay", "in_use"] <= conns["replay", "open"] <= 7.0
    assert 1.0 <= conns["sessions", "open"] <= 6.0  # the replace channel's subscription
    got = await asyncio.gather(*followers)
    for g in got:
        assert g.kinds()[-1] == "done"
    for resp, _ in runs:
        resp.close()


async def test_a_reconnect_after_the_runs_replica_died_ends_within_lease_plus_a_second(
    short_lease_pair, upstream
):
    pair = short_lease_pair
    upstream.script = numbered(100, gap=0.05)
    async with pair.http.get(pair.a.url + "/s?s=kate") as resp:
        first = await read_until(resp, 3)
        # Appends reach Redis a round after the local client has them: let
        # that round pass (a replica that dies within it leaves resume_gap).
        await asyncio.sleep(0.3)
        # The replica running the run dies (OOM, node loss): no terminal, no release.
        pair.a.kill()
    loop = asyncio.get_running_loop()
    died = loop.time()
    got = await read_stream(
        pair.http, "GET", pair.b.url + "/s?s=kate",
        headers={"Last-Event-ID": first[-1][0]}, limit_s=10.0,
    )  # fmt: skip
    ended = loop.time()
    assert got.status == 200
    # What A logged before it died comes first, each once, then a defined end.
    data = data_events(got)
    assert data == [str(i) for i in range(4, 4 + len(data))]
    assert got.kinds()[-1] == "error"
    assert got.error()["code"] == "upstream_disconnected"
    assert ended - died < 1.0 + 1.0 + 0.5  # lease + 1 s (and the time to connect)


async def test_a_live_follower_of_a_run_whose_replica_died_gets_upstream_disconnected(
    short_lease_pair, upstream
):
    """SIGKILL the run's replica while B streams it live: B ends within the lease, not idle."""
    pair = short_lease_pair
    upstream.script = numbered(300, gap=0.1)  # 30 s: it never ends by itself here
    loop = asyncio.get_running_loop()
    async with pair.http.get(pair.a.url + "/s?s=erin") as resp:
        first = await read_until(resp, 3)
        resp.connection.transport.abort()
    headers = {"Last-Event-ID": first[-1][0]}
    async with pair.http.get(pair.b.url + "/s?s=erin", headers=headers) as resp:
        live = await read_until(resp, 3)  # B follows the run A goes on with
        pair.a.kill()  # SIGKILL: A cannot finish its log nor say goodbye
        killed = loop.time()
        async with asyncio.timeout(12):
            rest = await resp.content.read()
        ended = loop.time()
    assert [d for _, d in live] == ["4", "5", "6"]
    tail = rest.decode().strip().split("\n\n")[-1]
    assert "event: error" in tail
    assert '"code":"upstream_disconnected"' in tail.replace(" ", "")
    # The liveness key lapses within the 1 s lease; B asks once a second.
    # (A margin for a loaded machine; without the check it is limits.idle_timeout.)
    assert ended - killed < 1.0 + 1.0 + 2.0


async def test_a_redis_stall_mid_stream_leaves_the_runs_own_client_streaming(
    redis_server, upstream, start_sidecar
):
    """SIGSTOP Redis mid-stream: the run's own client still gets every event and its end."""
    upstream.script = numbered(30, gap=0.05)
    config = make_config(
        upstream.url,
        session={"from": "query:s"},
        resume={"enabled": True, "grace": "2s"},
        top={"backend": {"kind": "redis", "url": redis_server.url, "lease": "10s"}},
    )
    sc = await start_sidecar(config)
    assert redis_server.process is not None
    try:
        async with sc.http.get(sc.url + "/s?s=stall") as resp:
            first = await read_until(resp, 3)
            redis_server.process.send_signal(signal.SIGSTOP)
            async with asyncio.timeout(15):
                rest = (await resp.content.read()).decode()
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert [d for _, d in first] == ["1", "2", "3"]
    blocks = [b for b in rest.strip().split("\n\n") if b]
    data = [line[6:] for b in blocks for line in b.split("\n") if line.startswith("data: ")]
    assert [d for d in data if d.isdigit()] == [str(i) for i in range(4, 31)]
    assert "event: done" in blocks[-1]  # the upstream's own terminal event


async def test_a_reconnect_to_the_runs_own_process_streams_through_a_redis_stall(
    redis_server, upstream, start_sidecar
):
    """SIGSTOP Redis, drop and reconnect: the run's process answers from its own entries."""
    upstream.script = numbered(30, gap=0.05)
    config = make_config(
        upstream.url,
        session={"from": "query:s"},
        resume={"enabled": True, "grace": "5s"},
        top={"backend": {"kind": "redis", "url": redis_server.url, "lease": "10s"}},
    )
    sc = await start_sidecar(config)
    assert redis_server.process is not None
    try:
        async with sc.http.get(sc.url + "/s?s=own") as resp:
            first = await read_until(resp, 3)
            redis_server.process.send_signal(signal.SIGSTOP)
            resp.connection.transport.abort()  # type: ignore[union-attr]
        async with asyncio.timeout(15):
            got = await read_stream(
                sc.http, "GET", sc.url + "/s?s=own", headers={"Last-Event-ID": first[-1][0]}
            )
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert got.status == 200
    assert data_events(got) == [str(i) for i in range(4, 31)]
    assert got.kinds()[-1] == "done"
