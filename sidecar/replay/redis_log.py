"""One run's log in Redis, as any process sees it (the store is sidecar/replay/redis.py).

Strategy: a log found by another process reads Redis (its stream through
the store's shared reader, sidecar/replay/redis_follow.py). The run's own log
holds its entries in memory too (a :class:`LocalTail`) and answers its
readers from there; its appends reach Redis in the store's append rounds
(sidecar/replay/redis_append.py), each with the run's resume cursor, under
the run's owner token: once another replica takes the run over, Redis
refuses them and the log is fenced (it calls back, and writes no more).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from redis.commands.core import AsyncScript

from sidecar.errors import BackendUnavailable
from sidecar.redisconn import Client, ScriptRounds
from sidecar.redispipe import bulk
from sidecar.replay.base import Entry
from sidecar.replay.redis_append import Appends
from sidecar.replay.redis_follow import MAX_BLOCK, LocalTail, Wakeups, ms
from sidecar.replay.redis_scripts import Keys, append_head, append_record, entries_of


class Store(Protocol):
    """What a log needs of its store (sidecar/replay/redis.py)."""

    live_ttl: float
    budget: float
    scripts: dict[str, AsyncScript]
    rounds: ScriptRounds | None
    appends: Appends
    wakeups: Wakeups

    def backend(
        self, budget: float | None = ..., *, client: Client | None = None
    ) -> AbstractAsyncContextManager[Client]: ...

    def disown(self, log: RedisReplayLog) -> None: ...


_DEFAULT_CAPS = (1000, 4 * 1024 * 1024)  # caps of a found log whose index is gone


def _own_seq(run_id: str, event_id: str) -> str:
    """The seq of an id in the sidecar's form ``{run}-{seq}``, else ''."""
    head, sep, tail = event_id.rpartition("-")
    if sep and head == run_id and tail.isascii() and tail.isdigit() and str(int(tail)) == tail:
        return tail
    return ""


class RedisReplayLog:
    """The log of one run, as any process sees it.

    The run's own log (from the store's ``open``) holds its entries
    in memory too: reads are answered from there, appends reach Redis in
    the background. A log found by another process reads Redis.
    """

    __slots__ = (
        "_append_head", "_caps", "_cursor_of", "_flush_error", "_local", "_on_fenced", "_pending",
        "_run_id", "_sending", "_store", "append_keys", "binding", "fenced", "keys", "owner",
        "packed_keys",
    )  # fmt: skip

    def __init__(
        self,
        store: Store,
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
        #: Where the upstream stands, read as a round takes the entries.
        self._cursor_of: Callable[[], bytes] | None = None
        #: What every append call of this log repeats, made at its first (a
        #: log that never appends, as an idle stream's, holds none of it):
        #: its record's head, and its keys, as they are and packed.
        self._append_head = b""
        self.append_keys: list[str] = []
        self.packed_keys = b""

    @property
    def run_id(self) -> str:
        return self._run_id

    async def append(self, entries: Sequence[Entry]) -> None:
        if self._local is None:
            if entries:
                await self._send(entries)
            return
        self.append_nowait(entries)

    def append_one(self, entry: Entry, seq: int, size: int) -> None:
        # append_nowait of one new entry, inlined: once per event of every
        # resumable stream on Redis.
        local = self._local
        assert local is not None, "only the run's own log is appended to without waiting"
        local.add_one(entry, seq, size)
        if self.fenced:
            return
        pending = self._pending
        pending.append(entry)
        if len(pending) > local.max_events:
            keep = local.max_events * (1 if self._flush_error is not None else 4)
            if len(pending) > keep:
                del pending[:-keep]
        self._store.appends.queue(self)

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

    def round_part(self) -> bytes:
        """This log's record in the store's next append round: all it appended since the last."""
        if not self._append_head:
            assert self._caps is not None  # the run's own log knows its caps
            k = self.keys
            self.append_keys = [k.stream, k.index, k.pointer]
            self.packed_keys = b"".join(bulk(key.encode()) for key in self.append_keys)
            self._append_head = append_head(self._run_id, self.owner, self._caps)
        self._sending, self._pending = self._pending, []
        # The run updates its cursor before it appends an event, and a round
        # takes everything appended: read now, it is the cursor of the newest.
        cursor = self._cursor_of() if self._cursor_of is not None else b""
        return append_record(self._append_head, cursor, self._sending)

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
        caps = self._caps or await self._stored_caps()
        store, k = self._store, self.keys
        record = append_record(append_head(self._run_id, self.owner, caps), b"", entries)
        async with store.backend():
            await store.scripts["append"](
                keys=[k.stream, k.index, k.pointer], args=[ms(store.live_ttl), record]
            )

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
        # Every remote follower of the process reads in the store's rounds: a
        # wake-up of many followers is one round trip, not one pooled call each.
        store = self._store
        assert store.rounds is not None
        async with store.backend(None):
            keys = [self.keys.stream, self.keys.index]
            finished, raw = await store.rounds.call(
                store.scripts["poll"], keys, [after_seq], store.budget
            )
        return entries_of(raw), bool(finished)

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
