"""Run takeover in the Redis replay store, on a real redis-server: two stores are two replicas.

A run's owner token fences every write of its; a run whose owner's liveness
lapsed is taken over by exactly one replica, which gets the kept request,
the cursor of the last append round and the log as it is, and goes on with
the same log. The replica that stalled and came back writes nothing more.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from sidecar.replay import redis_takeover
from sidecar.replay.base import Entry, Taken
from sidecar.replay.redis import RedisReplayLog, RedisReplayStore
from sidecar.sessions.redis import RedisSessionStore
from tests.integration.test_replay_redis import stores

__all__ = ["stores"]  # the replay tests' fixture: stores that are replicas of one Redis

pytestmark = pytest.mark.redis

KEPT = b"kept-request"


def entries(start: int, count: int, run: str = "up") -> list[Entry]:
    return [
        Entry(i, f"{run}-{i}", f"id: {run}-{i}\ndata: {i}\n\n".encode())
        for i in range(start, start + count)
    ]


async def owner_gone(raw: Redis, log: RedisReplayLog) -> None:
    """The owner's liveness lapses, as when its process stalls or dies past its lease."""
    await raw.delete(log.keys.live)


async def taken_over(raw: Redis, log: RedisReplayLog, store: RedisReplayStore) -> Taken:
    """The log's owner is gone and ``store``'s replica takes the run over."""
    await owner_gone(raw, log)
    found = await store.find("chat", "k")
    assert found is not None
    taken = await store.take_over(found)
    assert isinstance(taken, Taken)
    return taken


async def started_run(store: RedisReplayStore, *, kept: bytes = KEPT, cursor: bytes = b"c3"):
    log = await store.open("chat", "k", "r", 100, 100_000, "alice", kept)
    log.keep_cursor(lambda: cursor)
    await log.append(entries(1, 3))
    await log.flush()
    return log


async def test_the_kept_request_and_the_cursor_are_stored_with_the_log(stores, raw):
    a = await stores()
    cursors = iter([b"after-2", b"after-3"])
    log = await a.open("chat", "k", "r", 100, 100_000, "alice", KEPT)
    log.keep_cursor(lambda: next(cursors))
    await log.append(entries(1, 2))
    await log.flush()
    assert await raw.hget(log.keys.index, "req") == KEPT.decode()
    assert await raw.hget(log.keys.index, "cur") == "after-2"
    await log.append(entries(3, 1))
    await log.flush()
    assert await raw.hget(log.keys.index, "cur") == "after-3"
    plain = await a.open("chat", "p", "r", 100, 100_000)
    assert await raw.hget(plain.keys.index, "req") is None


async def test_a_live_owners_run_is_not_taken_over(stores):
    a, b = await stores(), await stores()
    await started_run(a)
    found = await b.find("chat", "k")
    assert found is not None
    assert await b.take_over(found) == "owned"
    assert await a.take_over(found) == "owned"


async def test_a_run_whose_owner_is_gone_is_taken_over_with_its_state(stores, raw):
    a, b = await stores(), await stores()
    taken = await taken_over(raw, await started_run(a), b)
    assert (taken.kept, taken.cursor, taken.last_seq) == (KEPT, b"c3", 3)
    assert taken.log.run_id == "r"
    # The same log goes on: the new owner's entries continue its seq.
    assert [e.seq for e in await taken.log.read(0, 0)] == [1, 2, 3]
    await taken.log.append(entries(4, 2))
    await taken.log.append([Entry(6, "up-6", b"event: done\ndata: 6\n\n", terminal=True)])
    await taken.log.finish(60)
    other = await stores()
    again = await other.find("chat", "k")
    assert again is not None
    got = await again.after("up-2")
    assert got is not None
    assert [e.seq for e in got] == [3, 4, 5, 6]
    assert got[-1].terminal
    assert not await again.abandoned()


async def test_of_two_replicas_racing_to_take_over_exactly_one_wins(stores, raw):
    a = await stores()
    log = await started_run(a)
    racers = [await stores() for _ in range(4)]
    for _ in range(5):
        await owner_gone(raw, log)
        founds = [await r.find("chat", "k") for r in racers]
        got = await asyncio.gather(*(r.take_over(f) for r, f in zip(racers, founds, strict=True)))
        won = [g for g in got if isinstance(g, Taken)]
        assert len(won) == 1
        assert [g for g in got if not isinstance(g, Taken)] == ["owned"] * 3
        log = won[0].log  # the next round takes it from this winner
        assert isinstance(log, RedisReplayLog)


async def test_a_stale_owner_never_writes_to_the_log_again(stores, raw):
    a, b = await stores(), await stores()
    log = await started_run(a)
    fenced: list[str] = []
    log.when_fenced(lambda: fenced.append("fenced"))
    taken = await taken_over(raw, log, b)
    await taken.log.append(entries(4, 1, run="new"))
    await taken.log.flush()
    # The old owner wakes up: its append round is refused, and it learns so.
    await log.append(entries(4, 3, run="old"))
    await log.flush()
    assert fenced == ["fenced"]
    assert log.fenced
    # Its own followers still read what it had (its end, too) from memory.
    assert [e.event_id for e in await log.read(3, 0)][:1] == ["old-4"]
    await log.append([Entry(7, "old-7", b"event: error\n\n", terminal=True)])
    await log.finish(0)
    await a.drop(log)
    await redis_takeover.renew(a, [log])
    stream = await raw.xrange(log.keys.stream)
    assert [f["i"] for _, f in stream] == ["up-1", "up-2", "up-3", "new-4"]
    assert await raw.hget(log.keys.index, "finished") is None
    assert await raw.exists(log.keys.live) == 1  # the new owner's, untouched
    await taken.log.append([Entry(5, "new-5", b"event: done\n\n", terminal=True)])
    await taken.log.finish(60)
    assert await raw.hget(log.keys.index, "finished") == "1"


async def test_the_owners_renewal_fences_a_stale_owner_with_nothing_to_append(stores, raw):
    a, b = await stores(), await stores()
    log = await started_run(a)
    fenced: list[str] = []
    log.when_fenced(lambda: fenced.append("fenced"))
    await taken_over(raw, log, b)
    await redis_takeover.renew(a, [log])
    assert fenced == ["fenced"]


async def test_an_owner_that_stalled_but_was_not_taken_over_keeps_its_run(stores, raw):
    a = await stores(lease=0.6)
    log = await started_run(a)
    await owner_gone(raw, log)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await raw.exists(log.keys.live):  # its next renewal sets it again
        assert loop.time() - started < 0.6
        await asyncio.sleep(0.02)
    assert not log.fenced
    b = await stores()
    found = await b.find("chat", "k")
    assert found is not None
    assert await b.take_over(found) == "owned"


async def test_runs_that_cannot_be_taken_over(stores, raw):
    a, b = await stores(), await stores()

    async def take(**run) -> object:
        log = await started_run(a, **run)
        await owner_gone(raw, log)
        found = await b.find("chat", "k")
        assert found is not None
        return await b.take_over(found)

    # No kept request (upstream_resume off), or no upstream id logged yet.
    assert await take(kept=b"") == "impossible"
    assert await take(cursor=b"") == "impossible"
    # Finished: there is nothing left to run; its followers read its end.
    log = await started_run(a)
    await log.append([Entry(4, "up-4", b"event: done\n\n", terminal=True)])
    await log.finish(60)
    found = await b.find("chat", "k")
    assert found is not None
    assert await b.take_over(found) == "owned"
    # A newer run of the session replaced it: the found log is not the session's run.
    await started_run(a)
    old = await b.find("chat", "k")
    assert old is not None
    newer = await a.open("chat", "k", "r2", 100, 100_000, "alice", KEPT)
    await owner_gone(raw, newer)
    assert await b.take_over(old) == "impossible"
    # The run's own process never takes over its own log.
    assert await a.take_over(newer) == "impossible"


class Holder:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def stop(self, code: str) -> None:
        self.codes.append(code)


async def test_a_takeover_frees_the_session_of_its_dead_owner_with_a_fresh_token(
    stores, redis_server, raw
):
    a, b = await stores(), await stores()
    prefix = a.prefix
    old_sessions = RedisSessionStore(redis_server.url, prefix=prefix, lease=0.6)
    new_sessions = RedisSessionStore(redis_server.url, prefix=prefix, lease=0.6)
    await old_sessions.start()
    await new_sessions.start()
    try:
        log = await started_run(a)
        old_owner = Holder()
        old_claim = await old_sessions.claim("chat", "k", "reject", old_owner)
        await taken_over(raw, log, b)
        # The run that goes on claims the session at once, even under reject.
        claim = await new_sessions.claim("chat", "k", "reject", Holder())
        assert claim.token > old_claim.token + 1
        # The old owner's next renewal finds the session lost: it stops its stream.
        async with asyncio.timeout(2.0):
            while not old_owner.codes:
                await asyncio.sleep(0.05)
        assert old_owner.codes == ["replaced"]
    finally:
        await old_sessions.close()
        await new_sessions.close()
