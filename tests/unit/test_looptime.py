"""Timeouts in the loop's free time: a stall of the loop spends no budget.

Each case runs on uvloop (what the sidecar runs) and on asyncio's own loop.
A stall is a callback that blocks the loop; the answer a budget waits for
is a byte on a socket pair, sent while the loop is stalled, as Redis's
reply sits in its socket while a busy loop cannot read it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from sidecar import looptime

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(main())  # type: ignore[arg-type]

    return runner


async def _reply_during_a_stall(wait: Callable[[], Any], stall: float, at: float = 0.05) -> Any:
    """Stall the loop at ``at`` for ``stall`` s, the reply sent meanwhile; ``wait(read)``."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)

    def stalled() -> None:
        theirs.send(b"x")  # the reply arrives while the loop cannot read it
        time.sleep(stall)

    loop.call_later(at, stalled)
    try:
        return await wait(lambda: loop.sock_recv(ours, 1))
    finally:
        ours.close()
        theirs.close()


def test_a_budget_with_a_free_loop_expires_on_time(run):
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with looptime.timeout(0.1):
                await asyncio.sleep(5)
        return loop.time() - t0

    assert 0.09 <= run(main) < 0.5


def test_none_sets_no_limit(run):
    async def main() -> str:
        async with looptime.timeout(None):
            await asyncio.sleep(0.05)
        return "done"

    assert run(main) == "done"


def test_a_reply_that_came_while_the_loop_was_stalled_is_read_not_timed_out(run):
    async def wait(read: Callable[[], Awaitable[bytes]]) -> bytes:
        async with looptime.timeout(0.2):
            return await read()

    # The loop is stalled past the whole budget with the reply in the socket.
    assert run(lambda: _reply_during_a_stall(wait, stall=0.5)) == b"x"


def test_asyncio_timeout_times_out_in_the_same_case(run):
    # What the budget corrects: a plain timeout fires before the loop reads.
    async def wait(read: Callable[[], Awaitable[bytes]]) -> bytes:
        async with asyncio.timeout(0.2):
            return await read()

    with pytest.raises(TimeoutError):
        run(lambda: _reply_during_a_stall(wait, stall=0.5))


def test_a_stall_moves_the_deadline_on_by_its_length_only(run):
    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, time.sleep, 0.3)
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with looptime.timeout(0.2):
                await asyncio.sleep(5)  # no reply ever
        return loop.time() - t0

    # 0.2 of budget the loop had free, plus the 0.3 s stall.
    assert 0.48 <= run(main) < 0.9


def test_stalls_stretch_a_budget_by_max_stretch_at_most(run, monkeypatch):
    monkeypatch.setattr(looptime, "MAX_STRETCH", 0.1)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, time.sleep, 0.4)
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with looptime.timeout(0.2):
                await asyncio.sleep(5)
        return loop.time() - t0

    # Expired right after the stall: the budget plus the stretch lie within it.
    assert 0.44 <= run(main) < 0.6


def test_free_time_leaves_a_stall_out(run):
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with looptime.timeout(5):
            t0, f0 = loop.time(), looptime.free_time()
            loop.call_soon(time.sleep, 0.3)
            await asyncio.sleep(0.15)
            return loop.time() - t0, looptime.free_time() - f0

    elapsed, free = run(main)
    assert elapsed >= 0.3
    assert free < 0.2


def test_a_cancel_from_outside_is_a_cancel(run):
    async def main() -> None:
        async def waiter() -> None:
            async with looptime.timeout(5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)


def test_the_clock_stops_ticking_when_no_budget_is_open(run):
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        async with looptime.timeout(1):
            ticking = looptime._clock(loop)._handle is not None
        await asyncio.sleep(2 * looptime.TICK)
        return ticking, looptime._clock(loop)._handle is None

    assert run(main) == (True, True)
