"""Lua script calls on pipelines, for either Redis client (one server or a cluster).

redis-py checks, before every pipeline that holds a script call, that the
server has the scripts loaded: a ``SCRIPT EXISTS`` round trip of its own,
ahead of the pipeline's. :func:`run_scripts` sends the calls as ``EVALSHA``
straight away instead; a server that lost the scripts (restarted, flushed)
answers those calls ``NOSCRIPT`` without running them, and they go again
once the scripts are loaded. A cluster pipeline sends each script's text
(``EVAL``): a promoted replica may not have it cached.

A caller that sends calls all the time (the replay store's append rounds)
holds a connection of its own and passes it: the calls are packed and
written at once and their replies read in order, which is what a pipeline
does without its per-call objects, the pool's acquire and release and the
retry wrapper around them (measured: ~0.3 ms of CPU a round, redis-py 8).
Such a caller may also pass its calls packed (:class:`Packed`): the keys it
sends round after round are then packed once, not once a round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

#: One script call: the script, its keys, its arguments.
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


class Packed(NamedTuple):
    """One script call's keys and arguments as RESP bulk strings (:func:`bulk`), joined."""

    script: AsyncScript
    nkeys: int
    nargs: int
    body: bytes


C = TypeVar("C", ScriptCall, Packed)


def bulk(value: bytes) -> bytes:
    """``value`` as one argument of a command on the wire (a RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def evalsha(call: Packed) -> bytes:
    """The ``EVALSHA`` command of a packed call: what ``hiredis.pack_command`` makes of it."""
    nkeys = b"%d" % call.nkeys
    return b"*%d\r\n$7\r\nEVALSHA\r\n%b%b%b" % (
        3 + call.nkeys + call.nargs, bulk(call.script.sha.encode()), bulk(nkeys), call.body,
    )  # fmt: skip


async def run_scripts(
    client: Redis | RedisCluster,
    calls: Sequence[ScriptCall],
    *,
    raise_on_error: bool = False,
    connection: AbstractConnection | None = None,
) -> list[Any]:
    """The calls in one pipeline; each one's result, or its error, in order.

    A call answered ``NOSCRIPT`` did not run: its script is loaded and the
    call sent again, so the caller sees its real result. With
    ``raise_on_error`` the first error is raised instead (as a pipeline does).
    ``connection``: one server's connection the caller holds, to send on.
    """

    async def send(picked: Sequence[ScriptCall]) -> list[Any]:
        if connection is None:
            return await _pipeline(client, picked)
        return await _on_connection(
            connection,
            [
                hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                for script, keys, args in picked
            ],
        )

    return await _reloading(client, calls, [call[0] for call in calls], send, raise_on_error)


async def run_packed(
    client: Redis,
    connection: AbstractConnection,
    calls: Sequence[Packed],
    *,
    raise_on_error: bool = False,
) -> list[Any]:
    """Packed calls on a connection the caller holds, sent as :func:`run_scripts` sends calls."""

    async def send(picked: Sequence[Packed]) -> list[Any]:
        return await _on_connection(connection, [evalsha(call) for call in picked])

    return await _reloading(client, calls, [call.script for call in calls], send, raise_on_error)


async def _reloading(
    client: Redis | RedisCluster,
    calls: Sequence[C],
    scripts: Sequence[AsyncScript],
    send: Callable[[Sequence[C]], Awaitable[list[Any]]],
    raise_on_error: bool,
) -> list[Any]:
    results = await send(calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {scripts[i] for i in missing}:
            await client.script_load(script.script)
        again = await send([calls[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results


async def _on_connection(conn: AbstractConnection, commands: list[bytes]) -> list[Any]:
    """The packed commands written at once on ``conn``, their replies read in order.

    Any failure (a cancel by the caller's budget included) closes the
    connection, since replies may be left unread on it; its next use
    connects again.
    """
    try:
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]
        await conn.send_packed_command(commands, check_health=False)
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await conn.read_response())
            except ResponseError as exc:  # this call's answer; the others still come
                results.append(exc)
        return results
    except BaseException:
        await conn.disconnect(nowait=True)
        raise


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
