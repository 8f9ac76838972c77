"""Resume buffers in Redis Streams, so a reconnect can land on any replica.

Strategy: one stream per run, ``{prefix}replay:{route}:{key}:{run}``, whose
entry ids are ``0-{seq}``, so "after seq n" is the stream id ``0-n``. A pointer
``{prefix}replay-run:{route}:{key}`` names the session's current run. The
run's index hash ``{prefix}replay-index:…`` holds the byte count, the caps,
the finished flag, the *boundary* (the newest evicted entry, as in
:mod:`sidecar.replay.memory`) and the seq of every event id the upstream chose;
the sidecar's own ids (``{run}-{seq}``, :class:`~sidecar.normalize.IdSource`)
carry their seq and are checked against the entry instead; keepalives (id "")
are never a place to resume from. Appends, trims and look-ups are Lua
scripts, so caps are exact (count and bytes, like memory) and no reader sees
half an append. Every key expires: live runs after ``live_ttl`` without an
append, finished ones after their retention. Redis errors become
:class:`~sidecar.errors.BackendUnavailable` within about a second.

The run's own process never waits for Redis: the log it appends to keeps its
entries in memory too (under the same caps), so its local followers read them
at once, and the appends go to Redis behind them: one pipeline a round
carries what every run of the process queued meanwhile (a Redis stall never
holds up the live client; a long outage costs the Redis copy its oldest
entries, which a reconnect elsewhere then sees as ``resume_gap``). A run's
liveness key, renewed with the others every lease/3, tells a follower
elsewhere that the run's process died. Followers of a run on another process
wait together: one connection per process blocks in one ``XREAD`` over all
their streams and wakes whoever has news. Every other call shares one pool of
``pool_size`` connections, which waits for a free one rather than failing.

A run's writes name its owner token, so a run taken over by another
replica (its owner gone) is written by that replica only
(sidecar/replay/redis_takeover.py). One run's log is
:class:`~sidecar.replay.redis_log.RedisReplayLog`; this module is the store.

Memory has a global cap across logs; here that is Redis's own ``maxmemory``
(every key has a TTL, so a ``volatile-*`` policy applies to all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from sidecar import looptime
from sidecar.errors import BackendUnavailable, SessionForbidden
from sidecar.redisconn import (
    BUDGET,
    OP_TIMEOUT,
    Client,
    Connection,
    ScriptRounds,
    connect,
    raise_if_cancelled,
    wants_cluster,
)
from sidecar.replay import redis_scripts as lua
from sidecar.replay import redis_takeover
from sidecar.replay.base import FORBIDDEN, NotTaken, Taken
from sidecar.replay.redis_append import Appends
from sidecar.replay.redis_follow import Wakeups, ms, text
from sidecar.replay.redis_log import RedisReplayLog
from sidecar.replay.redis_scripts import Keys, pointer_key, run_prefixes

#: A live run's keys expire this long after its last append (a crashed replica's
#: runs go away). Must exceed the routes' ``limits.idle_timeout``.
LIVE_TTL = 3600.0
#: Connections of the shared pool (every call but the shared reader's).
POOL_SIZE = 6


class RedisReplayStore:
    kind = "redis"
    #: The backstop around one call (its one retry included).
    budget = BUDGET

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse-sidecar:",
        live_ttl: float = LIVE_TTL,
        pool_size: int = POOL_SIZE,
        lease: float = 10.0,
        cluster: bool = False,
        workers: int = 1,
    ) -> None:
        self.url = url
        #: A cluster, by the setting or by the URL (``redis+cluster://``).
        self.cluster = wants_cluster(url, cluster)
        self.prefix = prefix
        self.live_ttl = live_ttl
        #: A run's liveness key lasts this long unless its process renews it,
        #: so a follower elsewhere learns within it that the run died.
        self.lease = lease
        self.pool_size = pool_size
        self._redis: Client | None = None
        self._conn: Connection | None = None
        self.scripts: dict[str, AsyncScript] = {}
        #: Opens and remote followers' reads of many streams: one round trip per round.
        self.rounds: ScriptRounds | None = None
        self.wakeups = Wakeups(self)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Its append rounds, spaced for the ``workers`` that share the Redis.
        self.appends = Appends(self, workers)
        #: The logs this process's runs append to, by session.
        self._owned: dict[str, RedisReplayLog] = {}  # by pointer key

    def client(self, *, single_connection: bool = False) -> Client:
        """A client of its own without a socket timeout (blocking reads; bounded around)."""
        return connect(
            self.url, cluster=self.cluster, pool_size=self.pool_size, socket_timeout=None,
            single_connection=single_connection,
        ).client  # fmt: skip

    async def start(self) -> None:
        """Make the clients; they connect on first use, so a Redis that is down is no error."""
        if self._redis is not None:
            return
        # Waits for a free connection (within the call's budget) instead of
        # failing: a burst queues, the connection count stays what is configured.
        self._conn = connect(self.url, cluster=self.cluster, pool_size=self.pool_size)
        self._redis = redis = self._conn.client
        sources = {
            "append": lua.APPEND,
            "append_many": lua.APPEND_MANY,
            "after": lua.AFTER,
            "finish": lua.FINISH,
            "drop": lua.DROP,
            "open": lua.OPEN,
            "poll": lua.POLL,
            "live": lua.LIVE,
            "takeover": lua.TAKEOVER,
        }
        self.scripts = {name: redis.register_script(src) for name, src in sources.items()}
        self.rounds = ScriptRounds(redis)
        self.spawn(self._keep_alive())

    async def close(self) -> None:
        await self.wakeups.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: closing must not wait on Redis (a cancel lost in its client).
            await asyncio.wait(self._tasks, timeout=2 * OP_TIMEOUT)
        if self.rounds is not None:
            await self.rounds.aclose()
        conn, self._conn, self._redis = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.aclose()

    def connections(self) -> dict[str, int]:
        """Open and busy connections of the shared pool, and the shared reader's (metrics)."""
        counts = self._conn.counts() if self._conn is not None else {"open": 0, "in_use": 0}
        reader = int(self.wakeups.connected)
        return {
            "open": counts["open"] + reader,
            "in_use": counts["in_use"] + reader,
            "max": counts.get("max", self.pool_size) + 1,
        }

    async def _keep_alive(self) -> None:
        """Renew the liveness keys of this process's runs, all in one pipeline, every lease/3."""
        while True:
            await asyncio.sleep(self.lease / 3)
            logs = list(self._owned.values())
            if logs:
                with contextlib.suppress(BackendUnavailable):
                    await redis_takeover.renew(self, logs)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task of the store's, cancelled when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @contextlib.asynccontextmanager
    async def backend(
        self, budget: float | None = BUDGET, *, client: Client | None = None
    ) -> AsyncIterator[Client]:
        """The client, with Redis errors and slowness turned into BackendUnavailable.

        ``budget`` bounds the whole block; None when the calls in it bound their own.
        """
        redis = client or self._redis
        if redis is None:
            raise BackendUnavailable("the replay backend (redis) is not running")
        try:
            async with looptime.timeout(budget):
                yield redis
            raise_if_cancelled()
        except (RedisError, OSError) as exc:  # OSError covers the budget's TimeoutError
            raise_if_cancelled()
            # The type only: Redis's messages name internal addresses; the cause keeps them.
            what = type(exc).__name__
            raise BackendUnavailable(
                f"the replay backend (redis) cannot be reached ({what}); retry shortly"
            ) from exc

    def _keys(self, route: str, key: str, run_id: str) -> Keys:
        return Keys.of(self.prefix, route, key, run_id)

    async def open(
        self, route: str, key: str, run_id: str, max_events: int, max_bytes: int,
        binding: str = "", kept: bytes = b"",
    ) -> RedisReplayLog:  # fmt: skip
        keys = self._keys(route, key, run_id)
        # The previous run's log goes now, as in memory. Its run, if it still
        # appends (to end with error/replaced), writes a short-lived stream
        # its own followers can still read.
        args: list[str | bytes | int] = [run_id, ms(self.live_ttl), max_events, max_bytes, binding]
        args += [ms(self.lease), *run_prefixes(self.prefix, route, key), kept]
        # The rounds bound the wait: from when the call is sent, not queued.
        async with self.backend(None):
            assert self.rounds is not None
            opened = await self.rounds.call(
                self.scripts["open"],
                [keys.pointer, keys.stream, keys.index, keys.follow, keys.live],
                args,
                self.budget,
            )
        if not opened:
            raise SessionForbidden(FORBIDDEN)
        log = RedisReplayLog(self, keys, run_id, (max_events, max_bytes), binding, owner="1")
        self.own(log)
        return log

    def own(self, log: RedisReplayLog) -> None:
        """This process runs the log's run now: it renews its liveness, a newer run replaces it."""
        old = self._owned.get(log.keys.pointer)
        if old is not None and old is not log:
            old.replaced()
        self._owned[log.keys.pointer] = log

    async def take_over(self, log: object) -> Taken | NotTaken:
        if not isinstance(log, RedisReplayLog) or log.owner:
            return "impossible"  # not a log of Redis's, or this process's own run
        got = await redis_takeover.claim(self, log.keys, log.run_id)
        if isinstance(got, str):
            return got
        taken = RedisReplayLog(self, log.keys, log.run_id, got.caps, log.binding, owner=got.owner)
        taken.held(got.entries)
        self.own(taken)
        return Taken(taken, got.kept, got.cursor, got.last_seq)

    def disown(self, log: RedisReplayLog) -> None:
        """The run has ended or its log was dropped: a newer run no longer replaces it here."""
        if self._owned.get(log.keys.pointer) is log:
            del self._owned[log.keys.pointer]

    async def find(self, route: str, key: str) -> RedisReplayLog | None:
        async with self.backend() as redis:
            run = await redis.get(pointer_key(self.prefix, route, key))
            if run is None:
                return None
            run_id = text(run)
            keys = self._keys(route, key, run_id)
            binding = await redis.hget(keys.index, "bind")
        if binding is None:
            # Its index is gone (dropped or expired between the two reads): no log.
            return None
        return RedisReplayLog(self, keys, run_id, None, text(binding))

    async def drop(self, log: object) -> None:
        if not isinstance(log, RedisReplayLog):
            return
        with contextlib.suppress(BackendUnavailable):
            await log.flush()  # so no append of the run's lands after the drop
        log.forget()
        self.disown(log)
        if log.fenced:
            return  # the run is another process's now
        k = log.keys
        async with self.backend():
            await self.scripts["drop"](
                keys=[k.stream, k.index, k.follow, k.pointer, k.live], args=[log.run_id, log.owner]
            )
