"""The in-process log holds what a list of entries under the same caps would, for any appends.

``MemoryReplayLog`` keeps its entries in a deque, their bytes counted per
log and across the store, and remembers the newest evicted id (a client
whose last event that was misses nothing). Whatever the appends (batches
of any size, any lengths, repeated and keepalive ids, a terminal entry
last) and whatever the caps, every read, lookup by id, newest entry and
byte count must be the plain rule's: append to a list, then drop the
oldest (never the newest) while over either cap. Any other layout of the
log (one buffer per run, say) must pass the same test."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.replay.base import Entry
from sidecar.replay.memory import MemoryReplayStore
from tests.budget import examples

ids = st.sampled_from(["a", "b", "c", "", "7"])
sizes = st.integers(min_value=0, max_value=40)
batches = st.lists(st.lists(st.tuples(ids, sizes), min_size=1, max_size=5), max_size=300)


def entries_of(batch: list[tuple[str, int]], after_seq: int) -> list[Entry]:
    """A drawn batch as entries numbered on from ``after_seq``, each's bytes telling its seq."""
    return [
        Entry(seq, event_id, bytes([seq % 251]) * size)
        for seq, (event_id, size) in enumerate(batch, start=after_seq + 1)
    ]


class Model:
    """The plain rule: a list of entries, oldest dropped first, never the newest."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.held: list[Entry] = []
        self.max_events, self.max_bytes = max_events, max_bytes
        self.boundary: tuple[str, int] | None = None

    def append(self, entries: list[Entry]) -> None:
        self.held.extend(entries)
        while len(self.held) > 1 and (
            len(self.held) > self.max_events or self.bytes() > self.max_bytes
        ):
            old = self.held.pop(0)
            self.boundary = (old.event_id, old.seq)

    def bytes(self) -> int:
        return sum(len(e.data) for e in self.held)

    def after(self, event_id: str) -> list[Entry] | None:
        if not event_id or not self.held:
            return None
        for i in range(len(self.held) - 1, -1, -1):
            if self.held[i].event_id == event_id:
                return self.held[i + 1 :]
        if self.boundary == (event_id, self.held[0].seq - 1):
            return list(self.held)
        return None


@given(
    batches,
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=400),
    st.booleans(),
    st.lists(st.booleans(), max_size=300),
)
@settings(max_examples=examples(2), deadline=None)
def test_the_log_holds_what_the_plain_rule_holds(
    appends: list[list[tuple[str, int]]],
    max_events: int,
    max_bytes: int,
    ends: bool,
    one_by_one: list[bool],
) -> None:
    """``one_by_one``: which batches go in as the splice's steady reads, one ``append_one`` each."""

    async def scenario() -> None:
        store = MemoryReplayStore()
        log = await store.open("chat", "k", "r", max_events=max_events, max_bytes=max_bytes)
        model = Model(max_events, max_bytes)
        seq = 0
        for n, batch in enumerate(appends):
            entries = entries_of(batch, seq)
            seq += len(entries)
            if ends and n == len(appends) - 1:
                entries[-1] = entries[-1]._replace(terminal=True)
            if n < len(one_by_one) and one_by_one[n]:
                for entry in entries:
                    log.append_one(entry, entry.seq, len(entry.data))
            else:
                await log.append(entries)
            model.append(entries)
            assert log.bytes == store.total == model.bytes()
            assert await log.last() == model.held[-1]
            for event_id in ("a", "b", "c", "7", "nope"):
                assert await log.after(event_id) == model.after(event_id)
            for after_seq in {0, seq - 1, seq - len(model.held), seq - len(model.held) - 1}:
                if 0 <= after_seq < seq:
                    expected = [e for e in model.held if e.seq > after_seq]
                    assert await log.read(after_seq, 0) == expected
        if not appends:
            assert await log.last() is None
            assert await log.read(0, 0) == []
        store.forget(log)
        assert store.total == log.bytes == 0
        assert await log.read(0, 0) == []

    asyncio.run(scenario())


def test_many_evictions_keep_the_newest_entries() -> None:
    """Long after the first eviction, seqs, bytes and lookups still line up."""

    async def scenario() -> None:
        store = MemoryReplayStore()
        log = await store.open("chat", "k", "r", max_events=10, max_bytes=10_000)
        for seq in range(1, 2001):
            log.append_nowait([Entry(seq, f"e{seq}", b"%d\n\n" % seq)])
        held = await log.read(0, 0)
        assert [e.seq for e in held] == list(range(1991, 2001))
        assert [e.data for e in held] == [b"%d\n\n" % s for s in range(1991, 2001)]
        assert [e.seq for e in await log.after("e1995") or []] == list(range(1996, 2001))
        assert [e.seq for e in await log.after("e1990") or []] == list(range(1991, 2001))
        assert await log.after("e1989") is None

    asyncio.run(scenario())
