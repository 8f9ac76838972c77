"""How the Redis replay backend's runs get their entries into Redis: in rounds.

Every run of the process that appended since the last round has its batch
sent in the next one: one round trip however many streams produced
meanwhile, and one script call for many logs (``APPEND_MANY``), not one per
log, since each call costs more on both sides (its arguments, its reply,
redis-py's pipeline bookkeeping, the script's start in Redis) than the
entries it carries. On a cluster one call's logs share a slot. A failed
round (Redis unreachable) goes again after a pause; the append script skips
what Redis already has. On one server the rounds keep one connection of the
pool for themselves and send their calls packed (sidecar/redispipe.py: no
pipeline object per round, each log's keys packed once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from sidecar.errors import BackendUnavailable
from sidecar.redisconn import Client
from sidecar.redispipe import Packed, ScriptCall, bulk, run_packed, run_scripts
from sidecar.replay.redis_follow import RETRY, ms

#: The least time from the start of one append round to the next. Under load
#: a round then carries the events of every run of the last few milliseconds,
#: not only the two or three that came during one round trip, so the cost of
#: a round (the pipeline's awaits, a write and a read on each side) is shared
#: by tens of events. It delays no client (a run writes its own clients
#: directly); it is how far Redis may lag the run, which is what another
#: replica could not replay if this process died. That is one process's;
#: with ``workers: N`` each worker's rounds are N times as far apart (see
#: Appends), so Redis takes as many rounds a second as from one process.
ROUND_INTERVAL = 0.005

#: The most logs one script call of a round appends to. Redis runs a script
#: alone, so a call's length is how long it holds every other client up:
#: a round of thousands of logs goes as several calls, in one pipeline.
LOGS_PER_CALL = 100


class Log(Protocol):
    """A run's own log, as the rounds see it (sidecar/replay/redis.py)."""

    @property
    def unsent(self) -> bool: ...

    #: Its three keys (stream, index, pointer), and packed (sidecar/redispipe.py),
    #: once it made its first round's part.
    append_keys: list[str]
    packed_keys: bytes

    def round_part(self) -> bytes:
        """Its record of what the round takes (sidecar/replay/redis_scripts.py)."""
        ...

    def sent(self, error: BackendUnavailable | None, reply: object = None) -> None: ...


class Store(Protocol):
    budget: float
    cluster: bool
    live_ttl: float
    scripts: dict[str, AsyncScript]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def backend(
        self, budget: float | None = ..., *, client: Client | None = None
    ) -> AbstractAsyncContextManager[Client]: ...


class Appends:
    """The append rounds of one replay store."""

    def __init__(self, store: Store, workers: int = 1) -> None:
        self._store = store
        #: Each of N workers has about 1/N of the streams: its rounds N
        #: intervals apart carry as many events each as one process's, and
        #: the tree's rounds a second (Redis's cost, and the workers') stay
        #: one process's. Redis then lags a worker by up to N intervals.
        self.interval = ROUND_INTERVAL * workers
        self._queued: dict[Log, None] = {}  # in the order they appended
        self._appender: asyncio.Task[None] | None = None
        self._round = asyncio.Event()
        #: The pool's connection the rounds send on, once taken (one server only).
        self._connection: AbstractConnection | None = None

    def queue(self, log: Log) -> None:
        """The log has entries for Redis: the next append round sends them."""
        self._queued[log] = None
        if self._appender is None:
            self._appender = self._store.spawn(self._append_rounds())

    def unqueue(self, log: Log) -> None:
        self._queued.pop(log, None)

    async def _append_rounds(self) -> None:
        """Send every queued log's entries in one pipeline per round, in order, until none are left.

        One round trip carries all the appends of the streams that produced
        meanwhile, however many they are, and rounds are at least
        ``interval`` apart; a failed round goes again (the script skips
        what it already has) after a pause.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                started = loop.time()
                logs = list(self._queued)
                self._queued.clear()
                records = [log.round_part() for log in logs]
                error: BackendUnavailable | None = None
                replies: list[Any] = []
                try:
                    async with self._store.backend() as redis:
                        # A failed call fails the round (as the backend says).
                        connection = await self._held(redis)
                        if connection is None:
                            replies = await self._on_cluster(redis, logs, records)
                        else:
                            assert isinstance(redis, Redis)
                            replies = await self._on_server(redis, connection, logs, records)
                except BackendUnavailable as exc:
                    error = exc
                    replies = [None] * len(logs)
                for log, reply in zip(logs, replies, strict=True):
                    log.sent(error, reply)  # -1: the run was taken over (fenced)
                    if error is not None and log.unsent:
                        self._queued.setdefault(log, None)
                self._round_done()
                if error is not None:
                    await asyncio.sleep(RETRY)
                elif (pause := started + self.interval - loop.time()) > 0:
                    await asyncio.sleep(pause)
        finally:
            self._appender = None
            self._round_done()

    async def _on_server(
        self,
        redis: Redis,
        connection: AbstractConnection,
        logs: Sequence[Log],
        records: Sequence[bytes],
    ) -> list[Any]:
        """A round on one server, its calls packed: each log's reply, in order.

        A log's keys are packed at its first round, not at every one, and
        its record is its one argument: a round's cost per log is little
        more than its record's bytes.
        """
        script = self._store.scripts["append_many"]
        ttl = bulk(b"%d" % ms(self._store.live_ttl))
        calls: list[Packed] = []
        for at in range(0, len(logs), LOGS_PER_CALL):
            part = logs[at : at + LOGS_PER_CALL]
            body = b"".join(
                [
                    *[log.packed_keys for log in part],
                    ttl,
                    *[bulk(record) for record in records[at : at + LOGS_PER_CALL]],
                ]
            )
            calls.append(Packed(script, 3 * len(part), 1 + len(part), body))
        results = await run_packed(redis, connection, calls, raise_on_error=True)
        return [reply for result in results for reply in result]

    async def _on_cluster(
        self, redis: Client, logs: Sequence[Log], records: Sequence[bytes]
    ) -> list[Any]:
        """A round on a cluster, one call per slot's logs: each log's reply, in order."""
        groups: dict[int, list[int]] = {}
        for i, log in enumerate(logs):
            groups.setdefault(key_slot(log.append_keys[0].encode()), []).append(i)
        script = self._store.scripts["append_many"]
        ttl = ms(self._store.live_ttl)
        calls: list[ScriptCall] = []
        order: list[list[int]] = []
        for members in groups.values():
            for at in range(0, len(members), LOGS_PER_CALL):
                positions = members[at : at + LOGS_PER_CALL]
                keys: list[str] = []
                args: list[int | bytes] = [ttl]
                for i in positions:
                    keys += logs[i].append_keys
                    args.append(records[i])
                calls.append((script, keys, args))
                order.append(positions)
        results = await run_scripts(redis, calls, raise_on_error=True)
        replies: list[Any] = [None] * len(logs)
        for positions, result in zip(order, results, strict=True):
            for i, reply in zip(positions, result, strict=True):
                replies[i] = reply
        return replies

    async def _held(self, redis: object) -> AbstractConnection | None:
        """The connection of the rounds' own, taken from the pool at the first (None: a cluster).

        Taken for good: the pool counts it in use, so the process's
        connections stay what ``pool_size`` says, and it is closed with the
        pool. A broken one connects again on its next round.
        """
        if self._connection is None and isinstance(redis, Redis):
            pool = redis.connection_pool
            self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        return self._connection

    def _round_done(self) -> None:
        self._round.set()
        self._round = asyncio.Event()

    async def flushed(self, log: Log) -> None:
        """Wait, up to about a second, for the rounds that take the log's entries to Redis."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store.budget
        while log.unsent and self._appender is not None:
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round.wait(), left)
