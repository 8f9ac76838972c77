"""What both bundled examples do at the command line: run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C still works
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run(serve: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """``asyncio.run(serve())``, with Ctrl+C before the handlers are in place a clean exit."""
    try:
        return asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
