"""The Redis replay store on a real Redis Cluster: the single-server tests again, and binding.

The tests of tests/integration/test_replay_redis.py that need no server
restart run here unchanged against a 3-master cluster
(tests/fixtures_redis_cluster.py): every key of a session carries its hash
tag, so each script runs on one node.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from sidecar.errors import BackendUnavailable, SessionForbidden
from sidecar.replay import redis_append
from sidecar.replay.redis_scripts import Keys
from tests.integration import test_replay_redis as single
from tests.integration.test_replay_redis import entries, seqs, stores

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

__all__ = ["stores"]  # the single-server module's fixture, on the cluster below


@pytest.fixture
def redis_server(redis_on_cluster):
    """What the reused tests call the server: here, the (emptied) cluster."""
    return redis_on_cluster


@pytest.fixture
def raw(raw_cluster):
    return raw_cluster


test_after_returns_what_follows_an_id = single.test_after_returns_what_follows_an_id
test_entries_round_trip_exactly = single.test_entries_round_trip_exactly
test_per_run_caps_evict_oldest_and_make_gaps = single.test_per_run_caps_evict_oldest_and_make_gaps
test_readers_on_another_replica_wake_on_append_and_time_out = (
    single.test_readers_on_another_replica_wake_on_append_and_time_out
)
test_reads_wait_longer_than_the_socket_timeout = (
    single.test_reads_wait_longer_than_the_socket_timeout
)
test_a_replaced_run_ends_in_its_own_log_only = single.test_a_replaced_run_ends_in_its_own_log_only
test_a_blocked_follower_of_a_replaced_run_still_gets_its_terminal = (
    single.test_a_blocked_follower_of_a_replaced_run_still_gets_its_terminal
)
test_retried_append_is_harmless = single.test_retried_append_is_harmless
test_follow_lease_is_seen_by_other_replicas_and_expires = (
    single.test_follow_lease_is_seen_by_other_replicas_and_expires
)
test_routes_and_keys_with_colons_do_not_collide = (
    single.test_routes_and_keys_with_colons_do_not_collide
)
test_same_answers_as_the_memory_store = single.test_same_answers_as_the_memory_store
test_a_cancelled_blocked_read_leaves_the_store_usable = (
    single.test_a_cancelled_blocked_read_leaves_the_store_usable
)
test_a_run_whose_process_died_is_abandoned_within_its_lease = (
    single.test_a_run_whose_process_died_is_abandoned_within_its_lease
)
test_a_finished_run_is_not_abandoned = single.test_a_finished_run_is_not_abandoned
test_one_fenced_log_in_a_round_leaves_the_others_appended = (
    single.test_one_fenced_log_in_a_round_leaves_the_others_appended
)


async def test_a_rounds_calls_each_append_to_logs_of_one_slot(stores, monkeypatch):
    # A script runs on one node: one call's logs share a slot, and a round's
    # logs of many slots all get their entries.
    calls_sent: list[list[int]] = []
    run_scripts = redis_append.run_scripts

    async def recording(client, calls, **kwargs):
        calls_sent.extend([key_slot(key.encode()) for key in keys] for _, keys, _ in calls)
        return await run_scripts(client, calls, **kwargs)

    monkeypatch.setattr(redis_append, "run_scripts", recording)
    store, reader = await stores(), await stores()
    logs = [await store.open("chat", f"k{i}", f"r{i}", 100, 10_000) for i in range(12)]
    for i, log in enumerate(logs):
        log.append_nowait(entries(1, 2, run=f"r{i}"))
    for log in logs:
        await log.flush()
    assert all(len(set(slots)) == 1 for slots in calls_sent), calls_sent
    assert sum(len(slots) for slots in calls_sent) == 12 * 3  # each log's three keys, once
    for i in range(12):
        found = await reader.find("chat", f"k{i}")
        assert found is not None
        assert seqs(await found.read(0, 0)) == [1, 2]


def test_a_sessions_keys_share_one_slot_and_sessions_spread():
    from redis.crc import key_slot

    slots = set()
    for n in range(50):
        k = Keys.of("p:", "chat", f"user-{n}", "run-1")
        names = (k.stream, k.index, k.follow, k.live, k.pointer, k.session, k.fence)
        owned = {key_slot(name.encode()) for name in names}
        assert len(owned) == 1
        slots |= owned
    assert len(slots) > 40  # not all in one slot: sessions spread over the masters


async def test_open_refuses_other_credentials_while_the_run_lives(stores):
    a, b = await stores(), await stores()
    log = await a.open("chat", "k", "r1", 100, 10_000, binding="alice")
    await log.append(entries(1, 3, run="r1"))
    await log.flush()
    with pytest.raises(SessionForbidden):
        await b.open("chat", "k", "r2", 100, 10_000, binding="mallory")
    # The same credentials take the session over; the old run's log goes.
    again = await b.open("chat", "k", "r2", 100, 10_000, binding="alice")
    found = await a.find("chat", "k")
    assert found is not None
    assert found.run_id == "r2"
    await again.finish(60)
    # A finished run is no longer guarded.
    other = await a.open("chat", "k", "r3", 100, 10_000, binding="mallory")
    assert seqs(await other.read(0, 0)) == []


async def test_a_store_first_used_after_its_urls_node_died_finds_the_cluster(
    stores, redis_on_cluster
):
    # A cluster client knows only the URL's node until it fetches a slot map,
    # and stores connect on first use: one first used after that node died
    # must fetch the map from the nodes another client of the process saw.
    cluster = redis_on_cluster
    seen = await stores()
    assert await seen.find("chat", "k") is None  # this one has fetched a slot map
    fresh = await stores()  # this one has not
    url_node = cluster.nodes[0]  # cluster.url names it
    assert str(url_node.port) in cluster.url
    await asyncio.to_thread(url_node.kill)
    try:
        await asyncio.to_thread(cluster.wait_ok)  # a master? its replica has taken over
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            try:
                log = await fresh.open("chat", "k", "r1", 100, 10_000)
                break
            except BackendUnavailable:
                assert loop.time() < deadline, "the store found no node to ask"
                await asyncio.sleep(0.2)
        await log.append(entries(1, 2, run="r1"))
        await log.flush()
        found = await seen.find("chat", "k")
        assert found is not None
        assert seqs(await found.read(0, 0)) == [1, 2]
    finally:
        await asyncio.to_thread(cluster.heal)
