"""One serving process: start the sidecar, serve until a signal, drain, stop.

Run by the command line (sidecar/cli.py) for a single process, and by each
worker process of a supervisor (sidecar/workers.py).
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

from sidecar import __version__
from sidecar.config import Config


def run(
    config: Config, worker: bool = False, on_listening: Callable[[], None] | None = None
) -> int:
    """Serve until SIGTERM/SIGINT (on uvloop when it is installed).

    ``on_listening`` is called once the stream port takes connections (a
    worker tells its supervisor so).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(config, worker, on_listening))
    return uvloop.run(_serve(config, worker, on_listening))


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the streams' path.

    Every open stream holds ~150 container objects for its whole life, so
    with thousands of streams each full collection walks hundreds of
    thousands of objects that are not garbage: tens of milliseconds during
    which no event moves. Objects made while starting up are frozen out of
    collection for good, and the youngest generation is collected every
    50,000 allocations instead of 700 (streams make few cycles; reference
    counting frees nearly everything).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(50_000, middle, old)


async def _serve(config: Config, worker: bool, on_listening: Callable[[], None] | None) -> int:
    import structlog

    from sidecar.app import Sidecar
    from sidecar.server import raise_fd_limit

    log = structlog.get_logger("sse_sidecar")
    # Every stream holds two sockets; the usual soft limit of 1024 would cap
    # the process far below max_streams.
    soft, hard = raise_fd_limit()
    sidecar = Sidecar(config, worker=worker)
    log.info("fd_limit", soft=soft, hard=hard, max_connections=sidecar.guard.max_connections)
    await sidecar.start()
    tune_gc()
    log.info(
        "listening",
        port=sidecar.port,
        admin_port=sidecar.admin_port,
        routes=[r.path for r in config.routes],
        version=__version__,
    )
    if on_listening is not None:
        on_listening()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", streams=len(sidecar.ctx.streams), timeout_s=config.drain_timeout)
    await sidecar.shutdown()
    log.info("stopped")
    return 0
