"""How the Redis replay backend's followers wait: in memory on the run's own
process, on one shared blocking connection everywhere else.

:class:`LocalTail` holds a run's entries in the process that appends them, so
its local followers never wait for Redis. :class:`Wakeups` is the one
``XREAD`` per process that every follower of a run elsewhere waits in; on a
Redis Cluster, where one ``XREAD`` cannot span slots (each session has its
own), each such follower blocks in an ``XREAD`` of its own instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from redis.exceptions import RedisError

from sidecar.errors import BackendUnavailable
from sidecar.redisconn import OP_TIMEOUT, Client
from sidecar.replay.base import Entry

#: The longest single ``XREAD BLOCK`` of the shared reader; a follower that
#: registered while it was being sent is seen at the latest after this.
MAX_BLOCK = 1.0
#: Between attempts while Redis is unreachable (appends, the shared reader).
RETRY = 0.25


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store(Protocol):
    """What the shared reader needs of the replay store."""

    budget: float
    cluster: bool

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def client(self, *, single_connection: bool = False) -> Client: ...

    def backend(
        self, budget: float | None = ..., *, client: Client | None = None
    ) -> AbstractAsyncContextManager[Client]: ...


class LocalTail:
    """The run's entries in its own process, under the log's caps, for local followers.

    Eviction is the Redis script's (and memory's): oldest first while over a
    cap, never the newest entry, so a local read sees what a Redis read would.
    A silent run holds neither a deque nor an Event: each is made when first
    needed (an entry, a reader that waits), since an empty deque alone takes
    a block of 64 slots.
    """

    __slots__ = (
        "_changed", "_entries", "bytes", "finished", "last_seq", "max_bytes", "max_events",
    )  # fmt: skip

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._entries: deque[Entry] | None = None
        self.bytes = 0
        self.last_seq = 0
        self.finished = False
        #: What readers wait on, while any does (None: nobody waits).
        self._changed: asyncio.Event | None = None

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries held, oldest first."""
        return () if self._entries is None else self._entries

    def add(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.seq > self.last_seq:  # else a retried append, as the script skips it
                self.add_one(entry, entry.seq, len(entry.data))

    def add_one(self, entry: Entry, seq: int, size: int) -> None:
        """One entry newer than any held (the steady event's, without ``add``'s loop)."""
        held = self._entries
        if held is None:
            held = self._entries = deque()
        held.append(entry)
        self.bytes += size
        self.last_seq = seq
        if len(held) > self.max_events or self.bytes > self.max_bytes:
            while len(held) > 1 and (len(held) > self.max_events or self.bytes > self.max_bytes):
                self.bytes -= len(held.popleft().data)
        if self._changed is not None:
            self._wake()

    def finish(self) -> None:
        self.finished = True
        self._wake()

    def clear(self) -> None:
        """The session has a newer log: what this one held is gone (later appends still land)."""
        self._entries = None
        self.bytes = 0

    def _wake(self) -> None:
        # Every reader waits on the event of the moment it looked; the next
        # one that waits makes a new one.
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def after(self, after_seq: int) -> list[Entry]:
        held = self.entries
        if not held or held[-1].seq <= after_seq:
            return []
        if held[0].seq > after_seq:
            return list(held)
        return [e for e in held if e.seq > after_seq]

    def after_id(self, event_id: str) -> list[Entry] | None:
        """Entries after the one with ``event_id``, if it is held here (None: ask Redis)."""
        held = self.entries
        if event_id:
            for i in range(len(held) - 1, -1, -1):
                if held[i].event_id == event_id:
                    return list(itertools.islice(held, i + 1, None))
        return None

    async def read(self, after_seq: int, block: float | None) -> list[Entry]:
        got = self.after(after_seq)
        if got or self.finished or (block is not None and block <= 0):
            return got
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), block)
        return self.after(after_seq)


class Wakeups:
    """One connection per process that blocks in one ``XREAD`` for every waiting follower.

    A follower registers (stream, the seq it has) and is woken when the
    stream has a newer entry, when its wait runs out, or with
    BackendUnavailable when Redis fails. A registration that the blocked
    ``XREAD`` does not cover unblocks it (``CLIENT UNBLOCK``), so it is
    sent again with the new stream at once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: dict[str, dict[asyncio.Future[bool], int]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader: Client | None = None
        self._reader_id: int | None = None
        #: The (stream, seq) pairs of the XREAD now blocked, if one is.
        self._covered: dict[str, int] | None = None

    async def wait(self, stream: str, after_seq: int, limit: float) -> bool:
        """True when ``stream`` may have entries after ``after_seq``; False on timeout."""
        if self._store.cluster:
            return await self._wait_alone(stream, after_seq, limit)
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[bool] = loop.create_future()
        self._waiting.setdefault(stream, {})[woken] = after_seq
        self._changed.set()
        if self._task is None:
            self._task = self._store.spawn(self._run())
        covered = self._covered
        if covered is not None and covered.get(stream, -1) != after_seq:
            self._store.spawn(self._unblock())
        try:
            async with asyncio.timeout(limit):
                return await woken
        except TimeoutError:
            return False
        finally:
            waiters = self._waiting.get(stream)
            if waiters is not None:
                waiters.pop(woken, None)
                if not waiters:
                    del self._waiting[stream]

    async def _wait_alone(self, stream: str, after_seq: int, limit: float) -> bool:
        # One client without a socket timeout for every such wait; its
        # connections per node are the pool size, past which a wait fails
        # (BackendUnavailable) rather than queueing.
        if self._reader is None:
            self._reader = self._store.client()
        block = min(limit, MAX_BLOCK)
        async with self._store.backend(block + self._store.budget, client=self._reader) as reader:
            got: Any = await reader.xread({stream: f"0-{after_seq}"}, count=1, block=ms(block))
        return bool(got) or block < limit

    @property
    def connected(self) -> bool:
        return self._reader is not None

    async def _unblock(self) -> None:
        reader_id = self._reader_id
        if reader_id is None:
            return
        with contextlib.suppress(BackendUnavailable):
            async with self._store.backend() as redis:
                await redis.client_unblock(reader_id)

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                continue
            streams = {s: min(w.values()) for s, w in self._waiting.items()}
            try:
                got = await self._read(streams)
            except BackendUnavailable as exc:
                self._fail(exc)
                await asyncio.sleep(RETRY)
                continue
            for stream, _entries_of_stream in got:
                for woken in self._waiting.get(text(stream), {}):
                    if not woken.done():
                        woken.set_result(True)

    async def _read(self, streams: dict[str, int]) -> list[Any]:
        reader = await self._connect()
        self._covered = streams
        try:
            async with self._store.backend(MAX_BLOCK + self._store.budget):
                got: Any = await reader.xread(
                    {s: f"0-{seq}" for s, seq in streams.items()}, count=1, block=ms(MAX_BLOCK)
                )
        except BackendUnavailable:
            await self._disconnect()
            raise
        finally:
            self._covered = None
        return list(got or [])  # RESP2: [[stream, entries], …]

    async def _connect(self) -> Client:
        if self._reader is None:
            self._reader = self._store.client(single_connection=True)
            try:
                async with self._store.backend(client=self._reader) as reader:
                    self._reader_id = int(await reader.client_id())
            except BackendUnavailable:
                await self._disconnect()
                raise
        return self._reader

    async def _disconnect(self) -> None:
        reader, self._reader, self._reader_id = self._reader, None, None
        if reader is not None:
            with contextlib.suppress(RedisError, OSError):
                await reader.aclose()

    def _fail(self, exc: BackendUnavailable) -> None:
        for waiters in self._waiting.values():
            for woken in waiters:
                if not woken.done():
                    woken.set_exception(exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancel that the Redis client lets pass must not hang closing.
            await asyncio.wait({self._task}, timeout=2 * OP_TIMEOUT)
            self._task = None
        await self._disconnect()
