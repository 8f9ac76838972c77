"""Script calls of many tasks in one pipeline per round (sidecar/redisconn.py), on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sidecar.redisconn import ScriptRounds, connect

pytestmark = pytest.mark.redis

#: Counts its calls in a key, fails when asked to (one caller's error is its own).
SCRIPT = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def test_a_burst_of_calls_shares_rounds_on_one_connection(redis_server) -> None:
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    script = conn.client.register_script(SCRIPT)
    rounds = ScriptRounds(conn.client)
    try:
        results = await asyncio.gather(
            *(rounds.call(script, ["calls"], [str(i)]) for i in range(500))
        )
        assert [r.decode() for r in results] == [str(i) for i in range(500)]
        assert int(await conn.client.get("calls")) == 500
        # One pipeline at a time: the burst never needed the pool's second connection.
        assert conn.counts()["open"] == 1
    finally:
        await rounds.aclose()
        await conn.aclose()


async def test_an_error_reaches_only_its_own_caller(redis_server) -> None:
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    script = conn.client.register_script(SCRIPT)
    rounds = ScriptRounds(conn.client)
    try:
        results = await asyncio.gather(
            rounds.call(script, ["calls"], ["a"]),
            rounds.call(script, ["calls"], ["fail"]),
            rounds.call(script, ["calls"], ["b"]),
            return_exceptions=True,
        )
        assert results[0] == b"a"
        assert results[2] == b"b"
        assert isinstance(results[1], ResponseError)
        assert "asked to fail" in str(results[1])
    finally:
        await rounds.aclose()
        await conn.aclose()


async def test_with_redis_gone_every_caller_of_the_round_gets_the_error(redis_server) -> None:
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    script = conn.client.register_script(SCRIPT)
    rounds = ScriptRounds(conn.client)
    redis_server.kill()
    try:
        async with asyncio.timeout(10):
            results = await asyncio.gather(
                *(rounds.call(script, ["calls"], [str(i)]) for i in range(20)),
                return_exceptions=True,
            )
        assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
    finally:
        await rounds.aclose()
        await conn.aclose()


async def test_a_caller_that_stops_waiting_leaves_the_others_their_results(redis_server) -> None:
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    script = conn.client.register_script(SCRIPT)
    rounds = ScriptRounds(conn.client)
    try:
        first = asyncio.ensure_future(rounds.call(script, ["calls"], ["x"]))
        gone = asyncio.ensure_future(rounds.call(script, ["calls"], ["y"]))
        await asyncio.sleep(0)
        gone.cancel()
        assert await first == b"x"
        assert await rounds.call(script, ["calls"], ["z"]) == b"z"
    finally:
        await rounds.aclose()
        await conn.aclose()
