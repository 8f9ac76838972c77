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

Memory has a global cap across logs; here that is Redis's own ``maxmemory``
(every key has a TTL, so a ``volatile-*`` policy applies to all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from sidecar.errors import BackendUnavailable, SessionForbidden
from sidecar.redisconn import (
    OP_TIMEOUT,
    Client,
    Connection,
    ScriptRounds,
    connect,
    queue_script,
)
from sidecar.replay import redis_scripts as lua
from sidecar.replay import redis_takeover
from sidecar.replay.base import FORBIDDEN, Entry, NotTaken, Taken
from sidecar.replay.redis_append import Appends
from sidecar.replay.redis_follow import MAX_BLOCK, LocalTail, Wakeups, ms, text
from sidecar.replay.redis_scripts import Keys, entries_of, pointer_key, run_prefixes

_BUDGET = OP_TIMEOUT + 0.5  # backstop around one operation, its one retry included
#: A live run's keys expire this long after its last append (a crashed replica's
#: runs go away). Must exceed the routes' ``limits.idle_timeout``.
LIVE_TTL = 3600.0
#: Connections of the shared pool (every call but the shared reader's).
POOL_SIZE = 6
_DEFAULT_CAPS = (1000, 4 * 1024 * 1024)  # caps of a found log whose index is gone


def _own_seq(run_id: str, event_id: str) -> str:
    """The seq of an id in the sidecar's form ``{run}-{seq}``, else ''."""
    head, sep, tail = event_id.rpartition("-")
    if sep and head == run_id and tail.isascii() and tail.isdigit() and str(int(tail)) == tail:
        return tail
    return ""


class RedisReplayLog:
    """The log of one run, as any process sees it.

    The run's own log (from :meth:`RedisReplayStore.open`) holds its entries
    in memory too: reads are answered from there, appends reach Redis in
    the background. A log found by another process reads Redis.
    """

    def __init__(
        self,
        store: RedisReplayStore,
        keys: Keys,
        run_id: str,
        caps: tuple[int, int] | None,
        binding: str,
        *,
        owner: str = "",
    ) -> None:
        self._store = store
        self.keys = keys
        self._run_id = run_id
        self.binding = binding
        #: (max_events, max_bytes); None for a found log until it appends (it never does).
        self._caps = caps
        #: The run's owner token ("" for a found log): appends under a stale
        #: one are refused, so a replica whose run was taken over writes no more.
        self.owner = owner
        self.fenced = False
        self._on_fenced: list[Callable[[], None]] = []
        self._local: LocalTail | None = LocalTail(*caps) if owner and caps else None
        #: Appended here, not yet in Redis (the run's own log only).
        self._pending: list[Entry] = []
        self._sending: list[Entry] = []
        self._flush_error: BackendUnavailable | None = None
        #: Where the upstream stands, read as a round takes the entries, and what it sends.
        self._cursor_of: Callable[[], bytes] | None = None
        self._cursor_sending = b""

    @property
    def run_id(self) -> str:
        return self._run_id

    async def append(self, entries: Sequence[Entry]) -> None:
        if self._local is None:
            if entries:
                await self._send(entries)
            return
        self.append_nowait(entries)

    def append_nowait(self, entries: Sequence[Entry]) -> None:
        local = self._local
        assert local is not None, "only the run's own log is appended to without waiting"
        if not entries:
            return
        local.add(entries)
        if self.fenced:
            return  # its own followers still get its end; Redis belongs to the new owner
        self._pending += entries
        # Redis unreachable for a whole buffer (or far behind): its copy
        # loses the oldest rather than this process holding them unbounded.
        keep = local.max_events * (1 if self._flush_error is not None else 4)
        if len(self._pending) > keep:
            del self._pending[:-keep]
        self._store.appends.queue(self)

    @property
    def unsent(self) -> bool:
        """Entries appended here that Redis does not have yet (queued or on their way)."""
        return bool(self._pending or self._sending)

    def take(self) -> list[Entry]:
        """What the store's next append round sends for this log."""
        self._sending, self._pending = self._pending, []
        # The run updates its cursor before it appends an event, and a round
        # takes everything appended: read now, it is the cursor of the newest.
        self._cursor_sending = self._cursor_of() if self._cursor_of is not None else b""
        return self._sending

    def sent(self, error: BackendUnavailable | None, reply: object = None) -> None:
        """The round is over: its batch is in Redis, or goes back in front of what came since."""
        if error is not None:
            self._pending[:0] = self._sending
        self._sending = []
        self._flush_error = error
        if reply == -1:
            self.fence()

    def held(self, entries: Sequence[Entry]) -> None:
        """A taken-over run's log as Redis holds it: its followers here read it from memory."""
        if self._local is not None:
            self._local.add(entries)

    def keep_cursor(self, cursor: Callable[[], bytes]) -> None:
        self._cursor_of = cursor

    def when_fenced(self, callback: Callable[[], None]) -> None:
        self._on_fenced.append(callback)

    def fence(self) -> None:
        """Another process took the run over: nothing of this one's reaches Redis again."""
        if self.fenced:
            return
        self.fenced = True
        self._pending = []
        self._store.appends.unqueue(self)
        self._store.disown(self)
        callbacks, self._on_fenced = self._on_fenced, []
        for callback in callbacks:
            callback()

    async def add_to(self, pipe: Any, entries: Sequence[Entry]) -> None:
        """Queue the append script for ``entries`` on a pipeline."""
        assert self._caps is not None  # the run's own log knows its caps
        max_events, max_bytes = self._caps
        k = self.keys
        args: list[str | bytes | int] = [
            self._run_id, ms(self._store.live_ttl), max_events, max_bytes, self.owner,
            self._cursor_sending,
        ]  # fmt: skip
        for e in entries:
            args += [e.seq, e.event_id, e.data, int(e.terminal)]
        # On a pipeline this only queues the call (the await returns at once).
        keys = [k.stream, k.index, k.pointer]
        await queue_script(self._store.scripts["append"], pipe, keys, args)

    async def flush(self) -> None:
        """Wait until what was appended is in Redis; BackendUnavailable if it cannot be."""
        if self.fenced:
            return  # what it still had for Redis is not its to write
        await self._store.appends.flushed(self)
        if self.unsent:
            raise self._flush_error or BackendUnavailable(
                "the replay backend (redis) is not keeping up; retry shortly"
            )

    async def _send(self, entries: Sequence[Entry]) -> None:
        max_events, max_bytes = self._caps or await self._stored_caps()
        store, k = self._store, self.keys
        args: list[str | bytes | int] = [
            self._run_id, ms(store.live_ttl), max_events, max_bytes, self.owner, b"",
        ]  # fmt: skip
        for e in entries:
            args += [e.seq, e.event_id, e.data, int(e.terminal)]
        async with store.backend():
            await store.scripts["append"](keys=[k.stream, k.index, k.pointer], args=args)

    async def _stored_caps(self) -> tuple[int, int]:
        async with self._store.backend() as redis:
            raw = await redis.hmget(self.keys.index, ["max_events", "max_bytes"])
        if raw[0] is None or raw[1] is None:
            self._caps = _DEFAULT_CAPS
        else:
            self._caps = (int(raw[0]), int(raw[1]))
        return self._caps

    async def after(self, event_id: str) -> list[Entry] | None:
        if self._local is not None and (held := self._local.after_id(event_id)) is not None:
            # The run's own entries: a reconnect here needs no Redis (it may be down).
            return held
        await self.flush()
        k = self.keys
        args = [event_id, _own_seq(self._run_id, event_id)]
        async with self._store.backend():
            raw = await self._store.scripts["after"](keys=[k.stream, k.index], args=args)
        return None if raw is None else entries_of(raw)

    async def last(self) -> Entry | None:
        if self._local is not None and self._local.entries:
            return self._local.entries[-1]
        await self.flush()
        async with self._store.backend() as redis:
            raw = await redis.xrevrange(self.keys.stream, count=1)
        return entries_of(raw)[0] if raw else None

    async def read(self, after_seq: int, block: float | None) -> list[Entry]:
        if self._local is not None:
            return await self._local.read(after_seq, block)
        loop = asyncio.get_running_loop()
        deadline = None if block is None else loop.time() + block
        while True:
            entries, finished = await self._poll(after_seq)
            wait = MAX_BLOCK * 5 if deadline is None else deadline - loop.time()
            if entries or finished or wait <= 0:
                return entries
            # The shared reader says when the stream has entries after after_seq;
            # registering before it looks means no wakeup is lost.
            if not await self._store.wakeups.wait(self.keys.stream, after_seq, wait):
                return []

    async def _poll(self, after_seq: int) -> tuple[list[Entry], bool]:
        async with self._store.backend() as redis, redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.keys.stream, f"(0-{after_seq}", "+")
            pipe.hget(self.keys.index, "finished")
            raw, finished = await pipe.execute()
        return entries_of(raw), finished is not None

    async def finish(self, retention: float) -> None:
        if self._local is not None:
            self._local.finish()
            self._store.disown(self)
        if self.fenced:
            return  # the run is another process's now: it finishes it
        await self.flush()
        k = self.keys
        # PEXPIRE 0 deletes at once, as a retention of 0 means.
        args: list[str | int] = [self._run_id, max(0, round(retention * 1000)), self.owner]
        async with self._store.backend():
            await self._store.scripts["finish"](
                keys=[k.stream, k.index, k.pointer, k.live], args=args
            )

    def forget(self) -> None:
        """Stop sending appends (the log is dropped); local followers see it finished."""
        self._pending = []
        self._store.appends.unqueue(self)
        if self._local is not None:
            self._local.finish()

    def replaced(self) -> None:
        """A newer run of the session opened its log here: this one's entries are gone."""
        if self._local is not None:
            self._local.clear()

    async def abandoned(self) -> bool:
        """Whether the run's process is gone: unfinished, and its liveness key expired."""
        if self._local is not None:
            return False
        async with self._store.backend() as redis, redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.index, "finished")
            pipe.exists(self.keys.live)
            finished, live = await pipe.execute()
        return finished is None and not live

    async def follow(self, ttl: float) -> None:
        async with self._store.backend() as redis:
            await redis.set(self.keys.follow, b"1", px=ms(ttl))

    async def followed(self) -> bool:
        async with self._store.backend() as redis:
            return bool(await redis.exists(self.keys.follow))


class RedisReplayStore:
    kind = "redis"
    #: The backstop around one call (its one retry included).
    budget = _BUDGET

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse-sidecar:",
        live_ttl: float = LIVE_TTL,
        pool_size: int = POOL_SIZE,
        lease: float = 10.0,
        cluster: bool = False,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.prefix = prefix
        self.live_ttl = live_ttl
        #: A run's liveness key lasts this long unless its process renews it,
        #: so a follower elsewhere learns within it that the run died.
        self.lease = lease
        self.pool_size = pool_size
        self._redis: Client | None = None
        self._conn: Connection | None = None
        self.scripts: dict[str, AsyncScript] = {}
        self._opens: ScriptRounds | None = None
        self.wakeups = Wakeups(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self.appends = Appends(self)
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
            "after": lua.AFTER,
            "finish": lua.FINISH,
            "drop": lua.DROP,
            "open": lua.OPEN,
            "live": lua.LIVE,
            "takeover": lua.TAKEOVER,
        }
        self.scripts = {name: redis.register_script(src) for name, src in sources.items()}
        self._opens = ScriptRounds(redis)  # a burst of new runs: one round trip per round
        self.spawn(self._keep_alive())

    async def close(self) -> None:
        await self.wakeups.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._opens is not None:
            await self._opens.aclose()
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
        self, budget: float = _BUDGET, *, client: Client | None = None
    ) -> AsyncIterator[Client]:
        """The client, with Redis errors and slowness turned into BackendUnavailable."""
        redis = client or self._redis
        if redis is None:
            raise BackendUnavailable("the replay backend (redis) is not running")
        try:
            async with asyncio.timeout(budget):
                yield redis
        except (RedisError, OSError) as exc:  # OSError covers the budget's TimeoutError
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
        async with self.backend():
            assert self._opens is not None
            opened = await self._opens.call(
                self.scripts["open"],
                [keys.pointer, keys.stream, keys.index, keys.follow, keys.live],
                args,
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
