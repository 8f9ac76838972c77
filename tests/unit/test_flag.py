"""The lazy one-shot event of session claims: an asyncio.Event's contract, no cost unwaited."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.flag import Flag


async def test_a_set_flag_is_waited_on_at_once() -> None:
    flag = Flag()
    flag.set()
    assert flag.is_set()
    async with asyncio.timeout(0.1):
        await flag.wait()


async def test_a_waiter_is_woken_by_set_and_every_waiter_is() -> None:
    flag = Flag()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    flag.set()
    async with asyncio.timeout(0.1):
        await asyncio.gather(*waiters)


async def test_nothing_is_held_until_someone_waits_nor_after() -> None:
    flag = Flag()
    assert flag._waiters is None
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert flag._waiters is not None
    assert len(flag._waiters) == 1
    flag.set()
    await waiter
    assert flag._waiters is None


async def test_a_waiter_that_timed_out_is_forgotten_and_a_later_set_still_wakes_others() -> None:
    flag = Flag()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await flag.wait()
    assert not flag._waiters
    later = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    flag.set()
    async with asyncio.timeout(0.1):
        await later
    flag.set()  # a second set changes nothing
    assert flag.is_set()
