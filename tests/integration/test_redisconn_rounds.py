"""Script calls of many tasks in one pipeline per round (sidecar/redisconn.py), on a real Redis."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sidecar.redisconn import ScriptRounds, connect

pytestmark = pytest.mark.redis

BUDGET = 1.5


@pytest.fixture
async def conn(redis_server):
    client = connect(redis_server.url, cluster=False, pool_size=2)
    yield client
    await client.aclose()


def rounds_of(conn, max_per_round: int = 512) -> ScriptRounds:
    return ScriptRounds(conn.client, max_per_round=max_per_round)


#: Counts its calls in a key, fails when asked to (one caller's error is its own).
SCRIPT = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def test_a_burst_of_calls_shares_rounds_on_one_connection(conn, redis_server):
    script = conn.client.register_script(SCRIPT)
    rounds = rounds_of(conn)
    try:
        results = await asyncio.gather(
            *(rounds.call(script, ["calls"], [str(i)], BUDGET) for i in range(500))
        )
        assert [r.decode() for r in results] == [str(i) for i in range(500)]
        assert int(await conn.client.get("calls")) == 500
        # One pipeline at a time: the burst never needed the pool's second connection.
        assert conn.counts()["open"] == 1
    finally:
        await rounds.aclose()


async def test_an_error_reaches_only_its_own_caller(conn, redis_server):
    script = conn.client.register_script(SCRIPT)
    rounds = rounds_of(conn)
    try:
        results = await asyncio.gather(
            rounds.call(script, ["calls"], ["a"], BUDGET),
            rounds.call(script, ["calls"], ["fail"], BUDGET),
            rounds.call(script, ["calls"], ["b"], BUDGET),
            return_exceptions=True,
        )
        assert results[0] == b"a"
        assert results[2] == b"b"
        assert isinstance(results[1], ResponseError)
        assert "asked to fail" in str(results[1])
    finally:
        await rounds.aclose()


async def test_with_redis_gone_every_caller_of_the_round_gets_the_error(conn, redis_server):
    script = conn.client.register_script(SCRIPT)
    rounds = rounds_of(conn)
    redis_server.kill()
    try:
        async with asyncio.timeout(10):
            results = await asyncio.gather(
                *(rounds.call(script, ["calls"], [str(i)], BUDGET) for i in range(20)),
                return_exceptions=True,
            )
        assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
    finally:
        await rounds.aclose()


async def test_a_caller_that_stops_waiting_leaves_the_others_their_results(
    conn, redis_server
) -> None:
    script = conn.client.register_script(SCRIPT)
    rounds = rounds_of(conn)
    try:
        first = asyncio.ensure_future(rounds.call(script, ["calls"], ["x"], BUDGET))
        gone = asyncio.ensure_future(rounds.call(script, ["calls"], ["y"], BUDGET))
        await asyncio.sleep(0)
        gone.cancel()
        assert await first == b"x"
        assert await rounds.call(script, ["calls"], ["z"], BUDGET) == b"z"
    finally:
        await rounds.aclose()


#: Holds Redis for ARGV[1] ms (a slow script: a round that takes that long).
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat
  t = redis.call('TIME')
until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return redis.call('INCR', KEYS[1])
"""


async def test_a_queued_call_waits_while_rounds_come_back(conn, redis_server):
    # Ten rounds of 100 ms each, one call per round: the last is answered after
    # about a second, far past its 0.3 s budget counted from when it queued; the
    # budget counts from when its round is sent, so none gives up.
    slow = conn.client.register_script(SLOW)
    rounds = rounds_of(conn, 1)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(rounds.call(slow, ["n"], [100], 0.3) for _ in range(10)))
        assert sorted(results) == list(range(1, 11))
        assert loop.time() - started >= 0.9
    finally:
        await rounds.aclose()


async def test_a_sent_call_gives_up_after_its_budget(conn, redis_server):
    slow = conn.client.register_script(SLOW)
    rounds = rounds_of(conn, 1)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await rounds.call(slow, ["n"], [600], 0.2)
        assert 0.2 <= loop.time() - started < 0.5
    finally:
        await rounds.aclose()


async def test_with_redis_stalled_queued_calls_give_up_within_a_budget(conn, redis_server):
    # No round comes back: the queue does not move, so a call still queued
    # gives up a budget after the last round went out, as a sent one does.
    script = conn.client.register_script(SCRIPT)
    rounds = rounds_of(conn, 1)
    assert await rounds.call(script, ["calls"], ["warm"], BUDGET) == b"warm"
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(rounds.call(script, ["calls"], [str(i)], 0.3) for i in range(5)),
            return_exceptions=True,
        )
        waited = loop.time() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert waited < 0.6
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
        await rounds.aclose()
