"""The in-process replay store: per-run caps, the global cap, retention, readers."""

from __future__ import annotations

import asyncio

from sidecar.replay.base import Entry
from sidecar.replay.memory import MemoryReplayStore


def entries(start: int, count: int, size: int = 10, run: str = "r") -> list[Entry]:
    return [Entry(i, f"{run}-{i}", b"x" * size) for i in range(start, start + count)]


async def test_after_returns_what_follows_an_id():
    store = MemoryReplayStore()
    log = await store.open("chat", "k", "r", max_events=100, max_bytes=10_000)
    await log.append(entries(1, 5))
    got = await log.after("r-2")
    assert [e.seq for e in got or []] == [3, 4, 5]
    assert await log.after("r-5") == []
    assert await log.after("nope") is None
    assert (await log.last()).seq == 5  # type: ignore[union-attr]


async def test_per_run_caps_evict_oldest_and_make_gaps():
    store = MemoryReplayStore()
    log = await store.open("chat", "k", "r", max_events=3, max_bytes=10_000)
    await log.append(entries(1, 5))
    assert [e.seq for e in await log.read(0, 0)] == [3, 4, 5]
    assert await log.after("r-1") is None  # 2 is gone: a gap, not a partial replay
    # 2 is evicted, but everything after it is held: no gap.
    assert [e.seq for e in await log.after("r-2") or []] == [3, 4, 5]
    small = await store.open("chat", "k2", "s", max_events=100, max_bytes=25)
    await small.append(entries(1, 4, run="s"))
    assert [e.seq for e in await small.read(0, 0)] == [3, 4]


async def test_global_cap_drops_finished_logs_first_then_oldest_entries():
    evicted: list[str] = []
    store = MemoryReplayStore(max_total_bytes=100, on_evict=evicted.append)
    done = await store.open("chat", "old", "a", 100, 10_000)
    await done.append(entries(1, 5, run="a"))
    await done.finish(retention=60)
    live = await store.open("chat", "new", "b", 100, 10_000)
    await live.append(entries(1, 6, run="b"))
    assert evicted == ["finished_log"]
    assert await store.find("chat", "old") is None
    assert store.total == 60
    await live.append(entries(7, 6, run="b"))
    assert store.total <= 100
    assert evicted.count("oldest_entry") == 2
    assert next(e.seq for e in await live.read(0, 0)) == 3


async def test_readers_wake_on_append_and_time_out():
    store = MemoryReplayStore()
    log = await store.open("chat", "k", "r", 100, 10_000)
    reader = asyncio.ensure_future(log.read(0, 5.0))
    await asyncio.sleep(0.01)
    assert not reader.done()
    await log.append(entries(1, 2))
    assert [e.seq for e in await asyncio.wait_for(reader, 1.0)] == [1, 2]
    assert await log.read(2, 0.05) == []


async def test_finished_logs_expire_after_retention_and_open_replaces():
    store = MemoryReplayStore()
    log = await store.open("chat", "k", "r", 100, 10_000)
    await log.append(entries(1, 2))
    await log.finish(retention=0.05)
    assert await store.find("chat", "k") is log
    await asyncio.sleep(0.1)
    assert await store.find("chat", "k") is None
    assert store.total == 0
    first = await store.open("chat", "k", "r1", 100, 10_000)
    await first.append(entries(1, 2, run="r1"))
    second = await store.open("chat", "k", "r2", 100, 10_000)
    assert await store.find("chat", "k") is second
    assert store.total == 0


async def test_the_newest_entry_is_kept_even_over_the_byte_cap():
    store = MemoryReplayStore()
    log = await store.open("chat", "k", "r", max_events=100, max_bytes=25)
    await log.append(entries(1, 2))
    await log.append([Entry(3, "r-3", b"y" * 40, terminal=True)])
    held = await log.read(0, 0)
    assert [e.seq for e in held] == [3]
    assert held[0].terminal
