"""Lua script calls on pipelines, for either Redis client (one server or a cluster).

redis-py checks, before every pipeline that holds a script call, that the
server has the scripts loaded: a ``SCRIPT EXISTS`` round trip of its own,
ahead of the pipeline's. :func:`run_scripts` sends the calls as ``EVALSHA``
straight away instead; a server that lost the scripts (restarted, flushed)
answers those calls ``NOSCRIPT`` without running them, and they go again
once the scripts are loaded. A cluster pipeline sends each script's text
(``EVAL``): a promoted replica may not have it cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

#: One script call: the script, its keys, its arguments.
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


async def run_scripts(
    client: Redis | RedisCluster, calls: Sequence[ScriptCall], *, raise_on_error: bool = False
) -> list[Any]:
    """The calls in one pipeline; each one's result, or its error, in order.

    A call answered ``NOSCRIPT`` did not run: its script is loaded and the
    call sent again, so the caller sees its real result. With
    ``raise_on_error`` the first error is raised instead (as a pipeline does).
    """
    results = await _pipeline(client, calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            await client.script_load(script.script)
        again = await _pipeline(client, [calls[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results


async def _pipeline(client: Redis | RedisCluster, calls: Sequence[ScriptCall]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            _queue(pipe, script, keys, args)
        return list(await pipe.execute(raise_on_error=False))


def _queue(pipe: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
    if isinstance(pipe, ClusterPipeline):
        source = script.script
        text = source.decode() if isinstance(source, bytes) else str(source)
        pipe.eval(text, len(keys), *keys, *args)
    else:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
