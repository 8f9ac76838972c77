"""Script calls on pipelines (sidecar/redispipe.py), on a real Redis and a real cluster.

Each one-server test runs three times: on a pipeline of the pool, on a
connection the caller holds, and packed on it (the append rounds' way).
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from sidecar.redisconn import connect
from sidecar.redispipe import Packed, bulk, run_packed, run_scripts

pytestmark = pytest.mark.redis

#: Counts its calls in a key, fails when asked to (one call's error is its own).
SCRIPT = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return redis.call('INCR', KEYS[1])
"""


@pytest.fixture
async def client(redis_server):
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    yield conn.client
    await conn.aclose()


def packed(call) -> Packed:
    script, keys, args = call
    body = b"".join(bulk(str(value).encode()) for value in [*keys, *args])
    return Packed(script, len(keys), len(args), body)


@pytest.fixture(params=["pipeline", "held", "packed"])
async def send(request, client):
    """The calls sent on a pipeline per call, or on a connection taken from the pool for good."""
    if request.param == "pipeline":
        yield lambda calls, **kw: run_scripts(client, calls, **kw)
        return
    connection = await client.connection_pool.get_connection()
    if request.param == "held":
        yield lambda calls, **kw: run_scripts(client, calls, connection=connection, **kw)
    else:
        yield lambda calls, **kw: run_packed(
            client, connection, [packed(call) for call in calls], **kw
        )
    await client.connection_pool.release(connection)


async def commands(client, name: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_calls_go_without_a_script_check_and_each_gets_its_own_result(client, send):
    script = client.register_script(SCRIPT)
    await client.script_load(SCRIPT)
    await client.config_resetstat()
    calls = [(script, ["a"], ["x"]), (script, ["b"], ["fail"])] * 2
    results = await send(calls)
    assert results[0] == 1
    assert results[2] == 2
    assert all(isinstance(r, ResponseError) for r in results[1::2])
    # One round trip: no SCRIPT EXISTS before the pipeline, no load.
    assert await commands(client, "script|exists") == 0
    assert await commands(client, "evalsha") == 4


async def test_a_server_that_lost_the_scripts_runs_each_call_once(client, send):
    script = client.register_script(SCRIPT)
    await client.script_flush()  # as after a restart
    calls = [(script, ["c"], ["x"]), (script, ["d"], ["x"])]
    results = await send(calls)
    assert results == [1, 1]
    assert int(await client.get("c")) == 1  # the NOSCRIPT answer ran nothing
    assert await client.script_exists(script.sha) == [True]


async def test_a_cluster_pipeline_sends_the_scripts_text(redis_cluster):
    conn = connect(redis_cluster.url, cluster=True, pool_size=2)
    try:
        script = conn.client.register_script(SCRIPT)
        keys = [f"{{k{i}}}:n" for i in range(6)]  # several slots, so several nodes
        results = await run_scripts(conn.client, [(script, [k], ["x"]) for k in keys])
        assert results == [1] * 6
    finally:
        await conn.aclose()


async def test_raise_on_error_raises_the_first_error_after_every_call_ran(client, send):
    script = client.register_script(SCRIPT)
    await client.delete("e")
    calls = [(script, ["e"], ["fail"]), (script, ["e"], ["x"])]
    with pytest.raises(ResponseError, match="asked to fail"):
        await send(calls, raise_on_error=True)
    assert int(await client.get("e")) == 1  # the pipeline ran past the failed call
    # The held connection read every reply: the next call gets its own.
    assert await send([(script, ["e"], ["x"])]) == [2]


async def test_a_held_connection_cut_off_mid_call_is_closed_and_connects_again(client):
    """A cancel between the write and the replies leaves them unread: never read them later."""
    slow = client.register_script("redis.call('INCR', KEYS[1]); return ARGV[1]")
    await client.script_load(slow.script)
    await client.set("s", 0)
    connection = await client.connection_pool.get_connection()
    try:
        # Scripts wait (unanswered) while writes are paused.
        await client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        call = asyncio.ensure_future(
            run_scripts(client, [(slow, ["s"], ["first"])], connection=connection)
        )
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not connection.is_connected
        await client.execute_command("CLIENT", "UNPAUSE")
        # Connected anew, it reads its own reply, not the cancelled call's.
        again = await run_scripts(client, [(slow, ["s"], ["second"])], connection=connection)
        assert again == [b"second"]
    finally:
        await client.connection_pool.release(connection)
