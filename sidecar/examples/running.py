"""What both bundled examples do at the command line: parse the same options, run
until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def arg_parser(prog: str, description: str, port: int) -> argparse.ArgumentParser:
    """``--host``, ``--port`` and ``--speed`` (every delay is divided by it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=port, help="port to bind (%(default)s)")
    parser.add_argument(
        "--speed", type=_speed, default=1.0, help="divide every delay by this (%(default)s)"
    )
    return parser


async def until_signalled() -> None:
    stop = asyncio.Event()
    if sys.platform != "win32":  # no loop signal handlers there; Ctrl+C still works
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run(serve: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """``asyncio.run(serve())``, with Ctrl+C before the handlers are in place a clean exit."""
    try:
        return asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
