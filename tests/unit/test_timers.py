"""The shared timer wheel: late by at most one slot, never early, O(1) removal."""

from __future__ import annotations

import asyncio
import itertools

from sidecar.timers import TimerWheel

RES = 0.02


async def test_callbacks_run_at_or_after_their_time_within_one_slot() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(RES)
    fired: dict[str, float] = {}
    start = loop.time()
    wanted = {"a": start + 0.05, "b": start + 0.051, "c": start + 0.12}
    for name, when in wanted.items():
        wheel.add(when, lambda name=name: fired.__setitem__(name, loop.time()))
    await asyncio.sleep(0.2)
    assert set(fired) == set(wanted)
    for name, when in wanted.items():
        assert when - 0.002 <= fired[name] <= when + RES + 0.03, name
    assert len(wheel) == 0


async def test_callbacks_in_one_slot_share_it() -> None:
    wheel = TimerWheel(RES)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.03
    calls: list[int] = []
    for i in range(100):
        wheel.add(when, lambda i=i: calls.append(i))
    assert len(wheel._slots) == 1
    await asyncio.sleep(0.08)
    assert sorted(calls) == list(range(100))


async def test_a_removed_callback_never_runs_and_others_still_do() -> None:
    wheel = TimerWheel(RES)
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    def keep() -> None:
        calls.append("keep")

    def drop() -> None:
        calls.append("drop")

    when = loop.time() + 0.03
    wheel.add(when, keep)
    slot = wheel.add(when, drop)
    wheel.remove(slot, drop)
    assert len(wheel) == 1
    await asyncio.sleep(0.08)
    assert calls == ["keep"]
    wheel.remove(slot, drop)  # after the slot fired: a no-op


async def test_a_callback_may_re_arm_itself() -> None:
    wheel = TimerWheel(RES)
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(loop.time())
        if len(ticks) < 3:
            wheel.add(loop.time() + 0.03, tick)

    wheel.add(loop.time() + 0.03, tick)
    await asyncio.sleep(0.25)
    assert len(ticks) == 3
    assert all(b - a >= 0.03 - 0.002 for a, b in itertools.pairwise(ticks))


async def test_a_time_in_the_past_runs_soon() -> None:
    wheel = TimerWheel(RES)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    wheel.add(loop.time() - 5, lambda: done.set_result(loop.time()))
    start = loop.time()
    assert await asyncio.wait_for(done, 1) - start <= RES + 0.03
