"""The per-stream alarm: a deadline as a float, a timer that only moves earlier."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.alarm import Alarm


async def _current_alarm() -> Alarm:
    task = asyncio.current_task()
    assert task is not None
    return Alarm(task)


async def test_wait_returns_what_the_awaitable_returns():
    alarm = await _current_alarm()
    alarm.set(asyncio.get_running_loop().time() + 10)
    assert await alarm.wait(asyncio.sleep(0, "value")) == "value"
    alarm.close()


async def test_a_deadline_that_passes_while_waiting_raises_timeout():
    alarm = await _current_alarm()
    loop = asyncio.get_running_loop()
    alarm.set(loop.time() + 0.05)
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await alarm.wait(asyncio.sleep(5))
    assert 0.04 <= loop.time() - t0 < 0.5
    # The task is not left cancelled: it goes on awaiting normally.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)


async def test_moving_the_deadline_later_rearms_instead_of_firing():
    alarm = await _current_alarm()
    loop = asyncio.get_running_loop()
    alarm.set(loop.time() + 0.03)
    alarm.set(loop.time() + 0.2)  # the timer stays at 0.03, fires, re-arms
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await alarm.wait(asyncio.sleep(5))
    assert loop.time() - t0 >= 0.15


async def test_deadline_passed_outside_wait_is_raised_by_the_next_wait():
    alarm = await _current_alarm()
    alarm.set(asyncio.get_running_loop().time() + 0.01)
    await asyncio.sleep(0.05)  # fires while not waiting
    with pytest.raises(TimeoutError):
        await alarm.wait(asyncio.sleep(5))


async def test_another_cancellation_wins_over_the_alarm():
    async def victim() -> None:
        alarm = await _current_alarm()
        loop = asyncio.get_running_loop()
        # Due now, and another cancel queued now: the next loop turn runs both
        # the cancel and the alarm, however late a loaded machine gets to it
        # (a fixed sleep before the cancel could miss the alarm's turn).
        alarm.set(loop.time())
        task = asyncio.current_task()
        assert task is not None
        loop.call_soon(task.cancel)
        await alarm.wait(asyncio.sleep(5))

    task = asyncio.ensure_future(victim())
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outside_cancellation_is_not_turned_into_a_timeout():
    async def victim() -> None:
        alarm = await _current_alarm()
        alarm.set(asyncio.get_running_loop().time() + 10)
        await alarm.wait(asyncio.sleep(5))

    task = asyncio.ensure_future(victim())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
