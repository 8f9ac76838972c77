"""Two sidecar processes on a real Redis Cluster: resume across them, and a master's failover.

The resume tests of tests/integration/test_resume_redis.py run here unchanged
on a 3-master cluster (tests/fixtures_redis_cluster.py). Then the master that
serves a running stream's slot is killed: its replica takes over after the
cluster's node timeout, the running stream goes on (its own process never
waits for Redis) to its own terminal event, and new streams work once the
cluster has settled. After a failover, a replace or a stop sent through one
process still reaches the stream on the other, whether the master that died
served the session's slot or held both processes' subscriptions to the
replace channel.
"""

from __future__ import annotations

import asyncio

import pytest
import yaml

from sidecar.replay.redis import pointer_key
from tests.integration import test_resume_redis as single
from tests.integration.streams import read_stream
from tests.integration.test_resume import data_events, numbered, read_until
from tests.integration.test_resume_redis import pair

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

__all__ = ["pair"]  # the single-server module's fixture, on the cluster below


@pytest.fixture
def redis_server(redis_on_cluster):
    """What the reused tests call the server: here, the (emptied) cluster."""
    return redis_on_cluster


test_reconnect_to_the_other_process_gets_exactly_the_missed_events = (
    single.test_reconnect_to_the_other_process_gets_exactly_the_missed_events
)
test_finished_stream_replays_its_tail_on_the_other_process = (
    single.test_finished_stream_replays_its_tail_on_the_other_process
)
test_other_credentials_get_403_on_the_other_process = (
    single.test_other_credentials_get_403_on_the_other_process
)


async def test_a_master_killed_mid_stream(pair, upstream, redis_cluster):
    n = 60  # 50 ms apart: the failover (node timeout 1 s) happens mid-stream
    upstream.script = numbered(n, gap=0.05)
    prefix = yaml.safe_load(pair.a.config_path.read_text())["backend"]["prefix"]
    master = redis_cluster.master_of(pointer_key(prefix, "test", "alice"))
    try:
        async with pair.http.get(pair.a.url + "/s?s=alice") as resp:
            assert resp.status == 200
            first = await read_until(resp, 5)
            await asyncio.to_thread(redis_cluster.node(master).kill)
            got = await read_stream_rest(resp)
        # Every event once and in order, then the producer's own terminal event:
        # the run's own process never waits for Redis.
        seen = [d for _, d in first] + got
        assert seen == [str(i) for i in range(1, n + 1)]
        await asyncio.to_thread(redis_cluster.wait_ok)
        assert redis_cluster.master_of(pointer_key(prefix, "test", "alice")) != master

        # Once the cluster has settled, new streams work on both processes,
        # on the promoted master's slots too (the same session key again).
        upstream.script = numbered(3, gap=0.01)
        for process in (pair.a, pair.b, pair.a):
            done = await eventually_ok(pair, process.url + "/s?s=alice")
            assert data_events(done) == ["1", "2", "3"]
            assert done.kinds()[-1] == "done"

    finally:
        await asyncio.to_thread(redis_cluster.heal)


#: Which master dies: the one that held both processes' replace-channel
#: subscriptions (redis-py subscribes on the channel's slot), or the session's.
VICTIMS = ["session", "channel"]


@pytest.mark.parametrize("victim", VICTIMS)
async def test_a_replace_across_processes_after_a_failover_reaches_the_old_stream(
    pair, upstream, redis_cluster, victim
):
    try:
        await fail_over(pair, redis_cluster, victim)
        upstream.script = numbered(60, gap=0.05)  # 3 s: a replace must end it long before
        async with await eventually_streaming(pair, pair.a.url + "/s?s=alice") as old:
            await read_until(old, 1)
            newer = await eventually_ok(pair, pair.b.url + "/s?s=alice")
            async with asyncio.timeout(10):
                rest = (await old.content.read()).decode()
        assert '"code":"replaced"' in rest.replace(" ", "")
        assert "data: 60\n" not in rest  # ended by the replace, not by running out
        assert data_events(newer) == [str(i) for i in range(1, 61)]
    finally:
        await asyncio.to_thread(redis_cluster.heal)


@pytest.mark.parametrize("victim", VICTIMS)
async def test_a_stop_across_processes_after_a_failover_ends_the_run(
    pair, upstream, redis_cluster, victim
):
    try:
        await fail_over(pair, redis_cluster, victim)
        upstream.script = numbered(60, gap=0.05)
        async with await eventually_streaming(pair, pair.a.url + "/s?s=alice") as old:
            await read_until(old, 1)
            async with pair.http.delete(pair.b.url + "/s?s=alice") as resp:
                assert resp.status == 202, await resp.text()
            async with asyncio.timeout(5):
                rest = (await old.content.read()).decode()
        assert '"reason":"stopped"' in rest.replace(" ", "")
        assert "data: 60\n" not in rest
    finally:
        await asyncio.to_thread(redis_cluster.heal)


async def fail_over(pair, redis_cluster, victim: str) -> None:
    """Kill the ``victim`` master; wait for its replica to take over, both processes ready."""
    prefix = yaml.safe_load(pair.a.config_path.read_text())["backend"]["prefix"]
    key = prefix + "replace" if victim == "channel" else pointer_key(prefix, "test", "alice")
    master = redis_cluster.master_of(key)
    await asyncio.to_thread(redis_cluster.node(master).kill)
    await asyncio.to_thread(redis_cluster.wait_ok)
    assert redis_cluster.master_of(key) != master
    # Ready again means subscribed again: a process whose replace channel is
    # down says so on /readyz.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    for process in (pair.a, pair.b):
        while True:
            async with pair.http.get(process.admin_url + "/readyz") as resp:
                if resp.status == 200:
                    break
                why = await resp.text()
            assert loop.time() < deadline, f"{process.url} not ready again: {why}"
            await asyncio.sleep(0.1)


async def eventually_streaming(pair, url: str, within: float = 15.0):
    """A response that began streaming (200); while the cluster settles a 503 may come first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        resp = await pair.http.get(url)
        if resp.status == 200:
            return resp
        assert resp.status == 503, resp.status
        why = await resp.text()
        resp.release()
        assert loop.time() < deadline, f"no stream within the settling time: {why}"
        await asyncio.sleep(0.2)


async def read_stream_rest(resp) -> list[str]:
    """The data of the rest of a live response, up to its terminal event (which must be done)."""
    data: list[str] = []
    async with asyncio.timeout(20):
        while True:
            block = (await resp.content.readuntil(b"\n\n")).decode()
            fields = dict(line.split(": ", 1) for line in block.strip().split("\n") if ": " in line)
            kind = fields.get("event", "message")
            if kind == "message" and "data" in fields:
                data.append(fields["data"])
            elif kind != "keepalive":
                assert kind == "done", block
                return data


async def eventually_ok(pair, url: str, within: float = 15.0):
    """A whole stream from ``url``; while the cluster settles a 503 may come first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        got = await read_stream(pair.http, "GET", url, limit_s=10.0)
        if got.status == 200:
            return got
        assert got.status == 503, got.status
        assert loop.time() < deadline, "no stream within the settling time"
        await asyncio.sleep(0.2)
