"""The Redis replay store on a real redis-server: the memory store's semantics, across processes.

Mirrors tests/unit/test_replay_memory.py, then what only Redis has: two store
instances (two replicas) sharing logs, expiry, follow leases, outages, and a
randomised comparison with the memory store.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from sidecar.errors import BackendUnavailable
from sidecar.replay import redis_append
from sidecar.replay.base import Entry, Taken
from sidecar.replay.memory import MemoryReplayStore
from sidecar.replay.redis import OP_TIMEOUT, RedisReplayLog, RedisReplayStore
from sidecar.replay.redis_append import ROUND_INTERVAL

pytestmark = pytest.mark.redis

T = TypeVar("T")


def entries(start: int, count: int, size: int = 10, run: str = "r") -> list[Entry]:
    return [Entry(i, f"{run}-{i}", b"x" * size) for i in range(start, start + count)]


def seqs(got: list[Entry] | None) -> list[int]:
    assert got is not None
    return [e.seq for e in got]


@pytest.fixture
async def stores(redis_server):
    """Make stores sharing one key prefix: each is one replica's view of the same Redis."""
    made: list[RedisReplayStore] = []
    prefix = f"test-{secrets.token_hex(4)}:"

    async def make(**kwargs) -> RedisReplayStore:
        store = RedisReplayStore(redis_server.url, prefix=prefix, **kwargs)
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def keys_of(raw: Redis, store: RedisReplayStore) -> dict[str, int]:
    """Every key of the store's prefix, with its TTL in ms."""
    return {k: await raw.pttl(k) async for k in raw.scan_iter(match=store.prefix + "*")}


async def elapsed(coro: Awaitable[T]) -> tuple[T, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await coro
    return result, loop.time() - started


def test_a_cluster_url_makes_a_cluster_store_without_the_setting():
    # The shared follow reader and the append rounds group keys by slot on
    # a cluster only: a redis+cluster:// URL must count as one.
    assert RedisReplayStore("redis+cluster://127.0.0.1:7000").cluster
    assert RedisReplayStore("redis://127.0.0.1:7000", cluster=True).cluster
    assert not RedisReplayStore("redis://127.0.0.1:7000").cluster


# --- as the memory store -----------------------------------------------------------


async def test_after_returns_what_follows_an_id(stores):
    store = await stores()
    assert store.kind == "redis"
    log = await store.open("chat", "k", "r", max_events=100, max_bytes=10_000)
    assert await log.after("r-1") is None  # nothing held yet
    assert await log.last() is None
    await log.append(entries(1, 5))
    assert seqs(await log.after("r-2")) == [3, 4, 5]
    assert await log.after("r-5") == []
    for unknown in ("nope", "r-6", "r-0", "r-02", "s-2", "-2"):
        assert await log.after(unknown) is None, unknown
    assert (await log.last()) == Entry(5, "r-5", b"x" * 10)


async def test_entries_round_trip_exactly(stores):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    sent = [
        Entry(1, "r-1", b"id: r-1\ndata: h\xc3\xa9\n\n"),
        Entry(2, "up:7 \u00e9", b""),
        Entry(3, "r-3", b'event: done\ndata: {"a":1}\n\n', terminal=True),
    ]
    await log.append(sent)
    assert await log.read(0, 0) == sent
    assert await log.after("up:7 \u00e9") == sent[2:]


async def test_per_run_caps_evict_oldest_and_make_gaps(stores):
    store = await stores()
    log = await store.open("chat", "k", "r", max_events=3, max_bytes=10_000)
    await log.append(entries(1, 5))
    assert seqs(await log.read(0, 0)) == [3, 4, 5]
    assert await log.after("r-1") is None  # 2 is gone: a gap, not a partial replay
    # 2 is evicted, but everything after it is held: no gap.
    assert seqs(await log.after("r-2")) == [3, 4, 5]
    small = await store.open("chat", "k2", "s", max_events=100, max_bytes=25)
    await small.append(entries(1, 4, run="s"))
    assert seqs(await small.read(0, 0)) == [3, 4]
    await small.append(entries(5, 1, size=6, run="s"))  # 26 bytes: 3 goes, 4 and 5 fit
    assert seqs(await small.read(0, 0)) == [4, 5]
    assert seqs(await small.after("s-3")) == [4, 5]


async def test_keepalives_are_followed_but_never_resumed_from(stores, raw):
    store = await stores()
    log = await store.open("chat", "k", "r", max_events=3, max_bytes=10_000)
    keepalive = Entry(2, "", b"event: keepalive\n\n")
    await log.append([Entry(1, "r-1", b"x"), keepalive, Entry(3, "r-3", b"x")])
    assert await log.read(1, 0) == [keepalive, Entry(3, "r-3", b"x")]
    assert seqs(await log.after("r-1")) == [2, 3]
    assert await log.after("") is None
    await log.append([Entry(4, "r-4", b"x"), Entry(5, "r-5", b"x")])  # 2 is the boundary now
    assert await log.after("") is None
    assert isinstance(log, RedisReplayLog)
    assert "id:" not in await raw.hgetall(log.keys.index)


async def test_upstream_ids_follow_eviction_and_stay_bounded(stores, raw):
    store = await stores()
    log = await store.open("chat", "k", "r", max_events=3, max_bytes=10_000)
    await log.append([Entry(i, f"up-{i}", b"x") for i in range(1, 21)])
    assert await log.after("up-16") is None
    assert seqs(await log.after("up-17")) == [18, 19, 20]  # the boundary
    assert seqs(await log.after("up-18")) == [19, 20]
    assert await log.after("r-18") is None  # that id was never given out
    assert isinstance(log, RedisReplayLog)
    index = await raw.hgetall(log.keys.index)
    assert sorted(k for k in index if k.startswith("id:")) == ["id:up-18", "id:up-19", "id:up-20"]


async def test_readers_on_another_replica_wake_on_append_and_time_out(stores):
    a, b = await stores(), await stores()
    log = await a.open("chat", "k", "r", 100, 10_000)
    found = await b.find("chat", "k")
    assert found is not None
    assert found.run_id == "r"
    reader = asyncio.ensure_future(found.read(0, 5.0))
    await asyncio.sleep(0.2)
    assert not reader.done()
    appended = asyncio.get_running_loop().time()
    await log.append(entries(1, 2))
    got, _ = await elapsed(asyncio.wait_for(reader, 1.0))
    assert seqs(got) == [1, 2]
    assert asyncio.get_running_loop().time() - appended < 0.5
    empty, took = await elapsed(found.read(2, 0.3))
    assert empty == []
    assert 0.25 < took < 1.0


async def test_reads_wait_longer_than_the_socket_timeout(stores):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    got, took = await elapsed(log.read(0, OP_TIMEOUT + 0.5))
    assert got == []
    assert took >= OP_TIMEOUT + 0.4
    later = asyncio.get_running_loop().call_later(
        OP_TIMEOUT + 0.2, lambda: asyncio.ensure_future(log.append(entries(1, 1)))
    )
    got, took = await elapsed(asyncio.wait_for(log.read(0, None), 5.0))
    later.cancel()
    assert seqs(got) == [1]


async def test_finished_logs_expire_after_retention_and_open_replaces(stores, raw):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append(entries(1, 2))
    await log.finish(retention=0.3)
    found = await store.find("chat", "k")
    assert found is not None
    assert found.run_id == "r"
    ttls = await keys_of(raw, store)
    assert len(ttls) == 3, ttls  # pointer, stream, index
    assert all(0 < ttl <= 300 for ttl in ttls.values()), ttls
    # A finished log answers a reader at once, as memory does.
    got, took = await elapsed(found.read(2, 5.0))
    assert got == []
    assert took < 0.5
    await asyncio.sleep(0.45)
    assert await store.find("chat", "k") is None
    assert await keys_of(raw, store) == {}
    first = await store.open("chat", "k", "r1", 100, 10_000)
    await first.append(entries(1, 2, run="r1"))
    await store.open("chat", "k", "r2", 100, 10_000)
    found = await store.find("chat", "k")
    assert found is not None
    assert found.run_id == "r2"
    assert await first.read(0, 0) == []  # the replaced log is gone, as in memory
    assert await found.after("r1-1") is None


async def test_a_replaced_run_ends_in_its_own_log_only(stores, raw):
    a, b = await stores(), await stores()
    old = await a.open("chat", "k", "r1", 100, 10_000)
    await old.append(entries(1, 2, run="r1"))
    await b.open("chat", "k", "r2", 100, 10_000)
    # The old run ends (error/replaced) after the new one took the session.
    await old.append([Entry(3, "r1-3", b"replaced", terminal=True)])
    assert (await old.last()) == Entry(3, "r1-3", b"replaced", terminal=True)
    await old.finish(retention=60)
    found = await a.find("chat", "k")
    assert found is not None
    assert found.run_id == "r2"
    pointer = next(k for k in await keys_of(raw, a) if "replay-run:" in k)
    assert (await raw.pttl(pointer)) > 60_000  # the new run's pointer keeps its live TTL
    await a.drop(old)
    assert (await a.find("chat", "k")) is not None  # dropping the old log leaves the new one


async def test_a_blocked_follower_of_a_replaced_run_still_gets_its_terminal(stores):
    a, b = await stores(), await stores()
    old = await a.open("chat", "k", "r1", 100, 10_000)
    await old.append(entries(1, 2, run="r1"))
    follower = await b.find("chat", "k")
    assert follower is not None
    reader = asyncio.ensure_future(follower.read(2, 5.0))
    await asyncio.sleep(0.2)
    await b.open("chat", "k", "r2", 100, 10_000)  # deletes r1's stream under the reader
    terminal = Entry(3, "r1-3", b"replaced", terminal=True)
    await old.append([terminal])
    assert await asyncio.wait_for(reader, 1.0) == [terminal]


async def test_every_key_expires(stores, raw):
    store = await stores(live_ttl=120.0)
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append([Entry(1, "up", b"x"), *entries(2, 3)])
    await log.flush()
    await log.follow(5.0)
    ttls = await keys_of(raw, store)
    assert len(ttls) == 5, ttls  # pointer, stream, index, follow, live
    assert all(0 < ttl <= 120_000 for ttl in ttls.values()), ttls


@pytest.mark.parametrize("workers", [1, 2])
async def test_appends_under_load_share_rounds_at_least_an_interval_apart(stores, workers):
    # Many runs appending, one event each at a time: each round carries what
    # came during the interval, so there are far fewer rounds than appends.
    # A worker of N has rounds N intervals apart: the tree's stay one process's.
    store, reader = await stores(workers=workers), await stores()
    logs = [await store.open("chat", f"k{i}", f"r{i}", 100, 10_000) for i in range(10)]
    rounds = 0
    counted = store.appends._round_done

    def count() -> None:
        nonlocal rounds
        rounds += 1
        counted()

    store.appends._round_done = count  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(1, 5):
        for i, log in enumerate(logs):
            await log.append(entries(n, 1, run=f"r{i}"))
            await asyncio.sleep(0.001)
    spread = loop.time() - started
    for log in logs:
        await log.flush()
    assert rounds <= spread / (ROUND_INTERVAL * workers) + 2, (rounds, spread)
    for i in range(10):
        found = await reader.find("chat", f"k{i}")
        assert found is not None
        assert seqs(await found.read(0, 0)) == [1, 2, 3, 4]


async def test_a_round_appends_to_many_logs_in_few_script_calls(stores, monkeypatch):
    # One script call carries up to LOGS_PER_CALL logs: a call costs more on
    # both sides than the entries it carries.
    monkeypatch.setattr(redis_append, "LOGS_PER_CALL", 4)
    sent: list[int] = []
    run_packed = redis_append.run_packed

    async def counting(client, connection, calls, **kwargs):
        sent.append(len(calls))
        return await run_packed(client, connection, calls, **kwargs)

    monkeypatch.setattr(redis_append, "run_packed", counting)
    store, reader = await stores(), await stores()
    logs = [await store.open("chat", f"k{i}", f"r{i}", 100, 10_000) for i in range(10)]
    for i, log in enumerate(logs):  # in one loop turn: one round
        log.append_nowait(entries(1, i + 1, run=f"r{i}"))
    for log in logs:
        await log.flush()
    assert sent == [3]  # 4 + 4 + 2 logs, in one pipeline
    for i in range(10):
        found = await reader.find("chat", f"k{i}")
        assert found is not None
        assert seqs(await found.read(0, 0)) == list(range(1, i + 2))


async def test_one_fenced_log_in_a_round_leaves_the_others_appended(stores, raw):
    store, other = await stores(), await stores()
    # Kept requests and cursors, so another replica can take the runs over.
    logs = [
        await store.open("chat", f"k{i}", f"r{i}", 100, 10_000, "alice", b"kept") for i in range(3)
    ]
    for i, log in enumerate(logs):
        log.keep_cursor(lambda: b"cursor")
        await log.append(entries(1, 1, run=f"r{i}"))
        await log.flush()
    await raw.delete(logs[0].keys.live)  # its owner looks gone: another replica takes it
    found = await other.find("chat", "k0")
    assert found is not None
    assert isinstance(await other.take_over(found), Taken)
    for i, log in enumerate(logs):
        log.append_nowait(entries(2, 2, run=f"r{i}"))
    for log in logs:
        await log.flush()
    assert [log.fenced for log in logs] == [True, False, False]
    assert len(await raw.xrange(logs[0].keys.stream)) == 1  # nothing after the takeover
    for i in (1, 2):
        assert len(await raw.xrange(logs[i].keys.stream)) == 3


async def test_retried_append_is_harmless(stores):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append(entries(1, 3))
    await log.append(entries(2, 3))  # a retry after a lost reply, and one more
    assert seqs(await log.read(0, 0)) == [1, 2, 3, 4]


async def test_follow_lease_is_seen_by_other_replicas_and_expires(stores):
    a, b = await stores(), await stores()
    log = await a.open("chat", "k", "r", 100, 10_000)
    assert not await log.followed()
    found = await b.find("chat", "k")
    assert found is not None
    await found.follow(0.4)
    assert await log.followed()
    await asyncio.sleep(0.6)
    assert not await log.followed()


async def test_drop_forgets_the_log(stores, raw):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append(entries(1, 2))
    await log.follow(5.0)
    await store.drop(log)
    assert await store.find("chat", "k") is None
    assert await keys_of(raw, store) == {}
    await store.drop(object())  # not ours: ignored


async def test_routes_and_keys_with_colons_do_not_collide(stores):
    store = await stores()
    one = await store.open("a", "b:c", "r1", 100, 10_000)
    await store.open("a:b", "c", "r2", 100, 10_000)
    await one.append(entries(1, 1, run="r1"))
    found = await store.find("a", "b:c")
    assert found is not None
    assert found.run_id == "r1"
    other = await store.find("a:b", "c")
    assert other is not None
    assert other.run_id == "r2"
    assert await other.read(0, 0) == []


async def test_same_answers_as_the_memory_store(stores):
    """Random runs (mixed ids, duplicates, both caps): every answer equals memory's."""
    store = await stores()
    memory = MemoryReplayStore()
    pool = ["a", "b", "r-3", "r-x", "r-", ""]  # upstream ids, some in the sidecar's form;
    # "" is a keepalive (sidecar/normalize.py): followers get it, nobody resumes from it.
    for seed in range(40):
        rnd = random.Random(seed)
        caps = (rnd.randint(1, 8), rnd.randint(5, 120))
        m = await memory.open("chat", "k", "r", *caps)
        r = await store.open("chat", "k", "r", *caps)
        issued: list[str] = []
        seq = 0
        while seq < 25:
            batch = []
            for _ in range(rnd.randint(1, 4)):
                seq += 1
                event_id = rnd.choice(pool) if rnd.random() < 0.4 else f"r-{seq}"
                batch.append(Entry(seq, event_id, b"d" * rnd.randint(0, 30), seq >= 25))
                issued.append(event_id)
            await m.append(batch)
            await r.append(batch)
            assert await r.last() == await m.last(), seed
            for event_id in [*issued, "", "r-0", f"r-{seq + 1}", "zz"]:
                assert await r.after(event_id) == await m.after(event_id), (seed, event_id)
            for after_seq in range(seq + 1):
                assert await r.read(after_seq, 0) == await m.read(after_seq, 0), (seed, after_seq)


# --- connections and outages --------------------------------------------------------


async def test_a_cancelled_blocked_read_leaves_the_store_usable(stores):
    a, b = await stores(), await stores()
    log = await a.open("chat", "k", "r", 100, 10_000)
    found = await b.find("chat", "k")
    assert found is not None
    for _ in range(3):
        reader = asyncio.ensure_future(found.read(0, 0.6))
        await asyncio.sleep(0.2)
        reader.cancel()  # the follower's client left
        with pytest.raises(asyncio.CancelledError):
            await reader
    await asyncio.sleep(0.6)  # the shared reader's XREAD has come back meanwhile
    await log.append(entries(1, 2))
    for _ in range(3):
        got, took = await elapsed(found.read(0, 2.0))
        assert seqs(got) == [1, 2]
        assert took < 0.5
    assert seqs(await found.after("r-1")) == [2]


async def test_remote_followers_share_one_connection_and_wake_at_once(stores, raw):
    a, b = await stores(), await stores()
    logs = [await a.open("chat", f"k{i}", f"r{i}", 100, 10_000) for i in range(40)]
    found = [await b.find("chat", f"k{i}") for i in range(40)]
    assert all(f is not None for f in found)
    before = (await raw.info("clients"))["connected_clients"]
    readers = [asyncio.ensure_future(f.read(0, 5.0)) for f in found if f is not None]
    await asyncio.sleep(0.3)
    # Forty blocked followers: the shared reader and at most the pool (their
    # polls), not a connection each.
    assert (await raw.info("clients"))["connected_clients"] <= before + b.pool_size + 1
    assert b.connections() == {"open": b.connections()["open"], "in_use": 1, "max": 7}
    assert b.connections()["open"] <= b.pool_size + 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    # A follower that registers while the reader is blocked is covered at once.
    late_log = await a.open("chat", "late", "rl", 100, 10_000)
    late = await b.find("chat", "late")
    assert late is not None
    late_reader = asyncio.ensure_future(late.read(0, 5.0))
    await asyncio.sleep(0.1)
    await late_log.append(entries(1, 1, run="rl"))
    assert seqs(await asyncio.wait_for(late_reader, 1.0)) == [1]
    for i, log in enumerate(logs):
        await log.append(entries(1, 1, run=f"r{i}"))
    got = await asyncio.wait_for(asyncio.gather(*readers), 2.0)
    assert [seqs(g) for g in got] == [[1]] * 40
    assert loop.time() - started < 1.5


async def test_the_runs_own_log_serves_its_followers_through_a_redis_outage(stores, redis_server):
    store = await stores()
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append(entries(1, 2))
    await log.flush()
    reader = asyncio.ensure_future(log.read(2, 5.0))
    await asyncio.sleep(0.1)
    redis_server.stop()
    # The live client's path never waits for Redis: appends land, readers wake.
    _, took = await elapsed(log.append(entries(3, 1)))
    assert took < 0.1
    assert seqs(await asyncio.wait_for(reader, 1.0)) == [3]
    await log.append([Entry(4, "r-4", b"end", terminal=True)])
    assert (await log.read(3, 0))[-1].terminal
    with pytest.raises(BackendUnavailable):
        await log.flush()  # what is not in Redis yet is said, within about a second
    redis_server.start()  # empty: the run's pending entries go in once it is back
    await asyncio.sleep(0.5)
    await log.flush()


async def test_redis_down_is_backend_unavailable_quickly(stores, redis_server):
    a, store = await stores(), await stores()
    owned = await a.open("chat", "k", "r", 100, 10_000)
    await owned.append(entries(1, 2))
    await owned.flush()
    log = await store.find("chat", "k")
    assert log is not None
    blocked = asyncio.ensure_future(log.read(2, 30.0))
    await asyncio.sleep(0.2)
    redis_server.stop()
    _, took = await elapsed(asyncio.wait_for(asyncio.gather(blocked, return_exceptions=True), 3))
    assert isinstance(blocked.exception(), BackendUnavailable)  # a blocked reader learns it too
    assert took < OP_TIMEOUT + 0.6
    calls = {
        "append": lambda: log.append(entries(3, 1)),
        "after": lambda: log.after("r-1"),
        "last": log.last,
        "read": lambda: log.read(0, 5.0),
        "finish": lambda: log.finish(60),
        "follow": lambda: log.follow(5),
        "followed": log.followed,
        "open": lambda: store.open("chat", "k2", "r2", 100, 10_000),
        "find": lambda: store.find("chat", "k"),
        "drop": lambda: store.drop(log),
    }
    for name, call in calls.items():
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BackendUnavailable) as info:
            await call()
        assert loop.time() - started < OP_TIMEOUT + 0.6, name
        assert "127.0.0.1" not in str(info.value)  # clients get no internal addresses

    redis_server.start()  # empty, scripts included: they are loaded again on first use
    log = await store.open("chat", "k", "r3", 100, 10_000)
    await log.append(entries(1, 2, run="r3"))
    assert seqs(await log.after("r3-1")) == [2]
    assert seqs(await log.read(0, 1.0)) == [1, 2]


async def test_store_starts_while_redis_is_down(stores, redis_server):
    redis_server.stop()
    store, took = await elapsed(stores())
    assert took < 0.5
    with pytest.raises(BackendUnavailable):
        await store.find("chat", "k")
    redis_server.start()
    assert await store.find("chat", "k") is None


async def test_a_run_whose_process_died_is_abandoned_within_its_lease(stores):
    a, b = await stores(lease=0.6), await stores(lease=0.6)
    log = await a.open("chat", "k", "r", 100, 10_000, "alice")
    await log.append(entries(1, 2))
    await log.flush()
    found = await b.find("chat", "k")
    assert found is not None
    await asyncio.sleep(1.0)  # longer than a lease: a's renewals keep it alive
    assert not await found.abandoned()
    assert not await log.abandoned()
    await a.close()  # the process dies: no finish, no more renewals
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await found.abandoned():
        assert loop.time() - started < 0.6 + 0.3
        await asyncio.sleep(0.05)
    # Its session may be taken by other credentials now: no one is running it.
    await b.open("chat", "k", "r2", 100, 10_000, "mallory")


async def test_a_finished_run_is_not_abandoned(stores):
    a, b = await stores(lease=0.6), await stores(lease=0.6)
    log = await a.open("chat", "k", "r", 100, 10_000)
    await log.append([Entry(1, "r-1", b"end", terminal=True)])
    await log.finish(60)
    await a.close()
    await asyncio.sleep(0.8)
    found = await b.find("chat", "k")
    assert found is not None
    assert not await found.abandoned()
