"""The process's shared state (sidecar/context.py): its held tasks."""

from __future__ import annotations

import asyncio
import tracemalloc

from sidecar.context import Context
from sidecar.metrics import Metrics


def _context() -> Context:
    # Only spawn is under test: the stores and config are never touched.
    return Context(config=None, metrics=Metrics(), sessions=None, replay=None)  # type: ignore[arg-type]


async def _until(gate: asyncio.Future[None]) -> None:
    await gate


async def test_a_spawned_task_is_held_until_it_ends() -> None:
    ctx = _context()
    gate = asyncio.get_running_loop().create_future()
    task = ctx.spawn(_until(gate))
    assert task in ctx._tasks
    gate.set_result(None)
    await task
    await asyncio.sleep(0)  # the done callback runs soon after
    assert task not in ctx._tasks


async def test_its_done_callback_costs_a_task_nothing() -> None:
    # A bound method per task, and a copy of the context for its callback,
    # were held by every resumable run's task (~0.2 KiB): beyond a set's
    # slot, holding a task now costs it nothing.
    loop = asyncio.get_running_loop()
    n = 500

    async def per_task(spawn: bool) -> float:
        ctx = _context()
        held: set[asyncio.Task[None]] = set()
        gates = [loop.create_future() for _ in range(n)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for gate in gates:
                if spawn:
                    ctx.spawn(_until(gate))
                else:
                    held.add(loop.create_task(_until(gate)))
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for gate in gates:
            gate.set_result(None)
        await asyncio.gather(*(held or ctx._tasks))
        return used / n

    await per_task(False)  # the first tasks of a loop cost it more (warming up)
    plain = await per_task(False)
    overhead = await per_task(True) - plain
    assert overhead < 40
