"""In-process resume buffers, bounded per run and across the process.

Each log keeps at most ``max_events`` entries and ``max_bytes`` bytes (the
oldest go first). The store also holds every log's bytes under one global
cap: past it, finished logs are dropped oldest first, then the oldest
entries of the largest live log, so many sessions cannot grow the process
without limit. Each eviction is reported through ``on_evict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from sidecar.errors import SessionForbidden
from sidecar.replay.base import FORBIDDEN, Entry, NotTaken, ReplayLog
from sidecar.sessions.binding import same_credentials

DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024


class MemoryReplayLog:
    def __init__(
        self, store: MemoryReplayStore, slot: tuple[str, str], run_id: str, max_events: int,
        max_bytes: int, binding: str = "",
    ) -> None:  # fmt: skip
        self._store = store
        self.binding = binding
        self.slot = slot
        self._run_id = run_id
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.entries: deque[Entry] = deque()
        self._boundary: tuple[str, int] | None = None
        self.bytes = 0
        self.last_seq = 0
        self.finished = False
        self._changed = asyncio.Event()
        #: Readers waiting on ``_changed`` (an append wakes them, else costs no Event).
        self._readers = 0
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    async def append(self, entries: Sequence[Entry]) -> None:
        self.append_nowait(entries)

    def append_nowait(self, entries: Sequence[Entry]) -> None:
        if entries:
            # All but the newest in, then the newest as one entry with the
            # batch's bytes: the caps are checked once, after the whole batch.
            *older, newest = entries
            self.entries.extend(older)
            self.append_one(newest, newest.seq, sum(len(entry.data) for entry in entries))

    def append_one(self, entry: Entry, seq: int, size: int) -> None:
        # Once per event of every resumable stream: no index to keep (a
        # reconnect looks its event up in the deque), no loop, no tuple.
        held = self.entries
        held.append(entry)
        self.last_seq = seq
        self.bytes += size
        # Never the newest entry: an event over the byte cap must still reach
        # the followers (it may be the terminal event).
        if len(held) > self.max_events or self.bytes > self.max_bytes:
            while len(held) > 1 and (len(held) > self.max_events or self.bytes > self.max_bytes):
                self.evict_oldest()
        store = self._store
        store.total += size
        if store.total > store.max_total_bytes:
            store.over_total()
        if self._readers:
            # Wake every reader: they wait on the event of the moment they looked.
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def evict_oldest(self) -> None:
        old = self.entries.popleft()
        # A client whose last event is the newest evicted one misses nothing.
        self._boundary = (old.event_id, old.seq)
        self.bytes -= len(old.data)
        self._store.total -= len(old.data)

    async def after(self, event_id: str) -> list[Entry] | None:
        held = self.entries
        if not event_id or not held:
            return None
        # From the newest back: a reconnect's event is mostly a recent one,
        # and an id the upstream repeated resumes after its latest use.
        for i in range(len(held) - 1, -1, -1):
            if held[i].event_id == event_id:
                return list(itertools.islice(held, i + 1, None))
        boundary = self._boundary
        if boundary is not None and boundary[0] == event_id and boundary[1] == held[0].seq - 1:
            return list(held)  # its event was the newest evicted: it misses nothing
        return None

    async def last(self) -> Entry | None:
        return self.entries[-1] if self.entries else None

    async def read(self, after_seq: int, block: float | None) -> list[Entry]:
        if self.last_seq <= after_seq and not self.finished:
            changed = self._changed
            # A timeout that fires in the same turn as an append must not
            # hide the entries: look at the log either way.
            self._readers += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(block):
                        await changed.wait()
            finally:
                self._readers -= 1
        if not self.entries or self.entries[-1].seq <= after_seq:
            return []
        # Entries are numbered without gaps, so the start is an offset.
        start = max(after_seq + 1 - self.entries[0].seq, 0)
        return [self.entries[i] for i in range(start, len(self.entries))]

    async def finish(self, retention: float) -> None:
        self.finished = True
        self._store.finished(self)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(retention, self._store.forget, self)

    async def follow(self, ttl: float) -> None:
        return None  # followers of a local run attach to the run itself

    async def abandoned(self) -> bool:
        return False  # the run lives in this process: its end is seen directly

    async def followed(self) -> bool:
        return False

    def keep_cursor(self, cursor: Callable[[], bytes]) -> None:
        return None  # no other process can take the run over

    def when_fenced(self, callback: Callable[[], None]) -> None:
        return None

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()


class MemoryReplayStore:
    kind = "memory"

    def __init__(
        self,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.max_total_bytes = max_total_bytes
        self.total = 0
        self._logs: dict[tuple[str, str], MemoryReplayLog] = {}
        #: Finished logs, oldest first: the first to go under memory pressure.
        self._finished: OrderedDict[int, MemoryReplayLog] = OrderedDict()
        self._on_evict = on_evict or (lambda _kind: None)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for log in list(self._logs.values()):
            self.forget(log)

    def __len__(self) -> int:
        return len(self._logs)

    async def open(
        self, route: str, key: str, run_id: str, max_events: int, max_bytes: int,
        binding: str = "", kept: bytes = b"",
    ) -> MemoryReplayLog:  # fmt: skip
        slot = (route, key)
        old = self._logs.get(slot)
        if old is not None:
            if not old.finished and not same_credentials(old.binding, binding):
                raise SessionForbidden(FORBIDDEN)
            self.forget(old)
        log = MemoryReplayLog(self, slot, run_id, max_events, max_bytes, binding)
        self._logs[slot] = log
        return log

    async def find(self, route: str, key: str) -> MemoryReplayLog | None:
        return self._logs.get((route, key))

    async def drop(self, log: object) -> None:
        if isinstance(log, MemoryReplayLog):
            self.forget(log)

    async def take_over(self, log: ReplayLog) -> NotTaken:
        return "impossible"  # a run lives and dies with this process

    def forget(self, log: MemoryReplayLog) -> None:
        log.cancel_expiry()
        if self._logs.get(log.slot) is log:
            del self._logs[log.slot]
        self._finished.pop(id(log), None)
        self.total -= log.bytes
        log.bytes = 0
        log.entries.clear()

    def finished(self, log: MemoryReplayLog) -> None:
        self._finished[id(log)] = log

    def over_total(self) -> None:
        """Over ``max_total_bytes`` (a log just grew): finished logs go, then oldest entries."""
        while self.total > self.max_total_bytes and self._finished:
            _, oldest = self._finished.popitem(last=False)
            self.forget(oldest)
            self._on_evict("finished_log")
        while self.total > self.max_total_bytes:
            largest = max(self._logs.values(), key=lambda lg: lg.bytes)
            if not largest.entries:
                break
            largest.evict_oldest()
            self._on_evict("oldest_entry")
