"""The run's own entries in memory (Redis backend): readers woken, nothing held while silent."""

from __future__ import annotations

import asyncio

from sidecar.replay.base import Entry
from sidecar.replay.redis_follow import LocalTail


def entry(seq: int) -> Entry:
    return Entry(seq, f"r-{seq}", f"id: r-{seq}\ndata: {seq}\n\n".encode())


async def test_a_silent_tail_holds_no_deque_and_no_event() -> None:
    tail = LocalTail(10, 1000)
    assert tail._entries is None
    assert tail._changed is None
    assert tail.entries == ()
    assert tail.after(0) == []
    assert tail.after_id("r-1") is None
    assert await tail.read(0, 0) == []
    assert tail._changed is None  # a read that does not wait makes none


async def test_a_waiting_reader_is_woken_by_an_append_and_the_event_goes_with_it() -> None:
    tail = LocalTail(10, 1000)
    reader = asyncio.ensure_future(tail.read(0, 5.0))
    await asyncio.sleep(0.01)
    assert tail._changed is not None
    tail.add([entry(1)])
    async with asyncio.timeout(0.5):
        assert await reader == [entry(1)]
    assert tail._changed is None


async def test_every_reader_of_the_moment_is_woken_and_a_later_one_waits_anew() -> None:
    tail = LocalTail(10, 1000)
    readers = [asyncio.ensure_future(tail.read(0, 5.0)) for _ in range(2)]
    await asyncio.sleep(0.01)
    tail.add([entry(1)])
    async with asyncio.timeout(0.5):
        assert await asyncio.gather(*readers) == [[entry(1)], [entry(1)]]
    later = asyncio.ensure_future(tail.read(1, 5.0))
    await asyncio.sleep(0.01)
    assert not later.done()
    tail.finish()
    async with asyncio.timeout(0.5):
        assert await later == []


async def test_a_read_times_out_empty() -> None:
    tail = LocalTail(10, 1000)
    assert await tail.read(0, 0.02) == []


async def test_caps_and_clear_as_before() -> None:
    tail = LocalTail(2, 1000)
    tail.add([entry(1), entry(2), entry(3)])
    assert [e.seq for e in tail.entries] == [2, 3]
    assert tail.after_id("r-2") == [entry(3)]
    tail.clear()
    assert tail.entries == ()
    assert tail.bytes == 0
    tail.add([entry(4)])
    assert list(tail.entries) == [entry(4)]


async def test_a_waiting_reader_is_woken_by_a_steady_append() -> None:
    tail = LocalTail(10, 1000)
    reader = asyncio.ensure_future(tail.read(0, 5.0))
    await asyncio.sleep(0.01)
    tail.add_one(entry(1), 1, len(entry(1).data))
    async with asyncio.timeout(0.5):
        assert await reader == [entry(1)]
    assert tail._changed is None
