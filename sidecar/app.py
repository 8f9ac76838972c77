"""Build the aiohttp applications and run them: the stream server and the admin server.

:class:`Sidecar` is what the CLI runs and what the integration tests start,
so tests exercise the same start-up, drain and shutdown code as production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.admission import add_cors_headers
from sidecar.config import Config
from sidecar.context import CONTEXT, Context
from sidecar.metrics import Metrics, admin_app
from sidecar.probe import add_probe_route
from sidecar.proxy import RouteHandler
from sidecar.replay.base import ReplayStore
from sidecar.replay.memory import MemoryReplayStore
from sidecar.server import Guard, GuardedRunner, start_site
from sidecar.sessions.base import SessionStore
from sidecar.sessions.memory import MemorySessionStore


def session_store(config: Config, metrics: Metrics) -> SessionStore:
    if config.backend.kind == "redis":
        from sidecar.sessions.redis import RedisSessionStore

        backend = config.backend
        store = RedisSessionStore(
            backend.url,
            prefix=backend.prefix,
            lease=backend.lease,
            pool_size=backend.pool_size,
            cluster=backend.cluster,
        )
        metrics.samplers.append(lambda: _sample_pool(metrics, "sessions", store.connections()))
        return store
    return MemorySessionStore()


def _sample_pool(metrics: Metrics, pool: str, connections: dict[str, int]) -> None:
    for state, value in connections.items():
        metrics.backend_connections.labels(pool, state).set(value)


def replay_store(config: Config, metrics: Metrics) -> ReplayStore:
    def evicted(kind: str) -> None:
        metrics.replay_evictions.labels(kind).inc()

    if config.backend.kind == "redis":
        from sidecar.replay.redis import RedisReplayStore

        backend = config.backend
        store = RedisReplayStore(
            backend.url,
            prefix=backend.prefix,
            pool_size=backend.pool_size,
            lease=backend.lease,
            cluster=backend.cluster,
            workers=config.workers,
        )

        metrics.samplers.append(lambda: _sample_pool(metrics, "replay", store.connections()))
        return store
    return MemoryReplayStore(config.replay_max_bytes, on_evict=evicted)


def create_app(config: Config, metrics: Metrics | None = None) -> web.Application:
    """The stream server: one handler per configured route, nothing else is proxied.

    Its connection limits (and the cap on request heads) are the runner's
    (sidecar/server.py, GuardedRunner).
    """
    metrics = metrics or Metrics()
    ctx = Context(
        config=config,
        metrics=metrics,
        sessions=session_store(config, metrics),
        replay=replay_store(config, metrics),
    )
    app = web.Application()
    app[CONTEXT] = ctx
    app.on_response_prepare.append(add_cors_headers)
    if config.probe_path is not None:
        # Before the routes: aiohttp takes the first match, and a route at /
        # would hide the probe.
        intervals = [r.heartbeat.interval for r in config.routes if r.heartbeat.interval > 0]
        add_probe_route(app, config.probe_path, min(intervals, default=0.0))
    for route in config.routes:
        proxy = RouteHandler(route, ctx)
        app.router.add_route("*", proxy.pattern(), proxy.handle)
    app.cleanup_ctx.append(_backends)
    return app


async def _backends(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT]
    await ctx.sessions.start()
    await ctx.replay.start()
    flusher = asyncio.get_running_loop().create_task(_flush_metrics(ctx.metrics))
    yield
    flusher.cancel()
    # Runs still on a shared gateway connection get chat.abort before it closes.
    await ctx.gateways.close()
    ctx.metrics.flush()
    await ctx.replay.close()
    await ctx.sessions.close()


async def _flush_metrics(metrics: Metrics) -> None:
    """Streams count into plain ints; the counters get them once a second (and per scrape)."""
    while True:
        await asyncio.sleep(1.0)
        metrics.flush()


class Sidecar:
    """A running sidecar: stream and admin servers, with drain on shutdown."""

    def __init__(self, config: Config, *, worker: bool = False) -> None:
        """``worker``: one of several processes sharing the port (SO_REUSEPORT);
        the supervisor, not the worker, then serves the admin port."""
        self.config = config
        self.worker = worker
        metrics = Metrics()
        #: Connection limits of the stream port (sidecar/server.py).
        self.guard = Guard(config.limits, metrics)
        self.app = create_app(config, metrics)
        self.ctx = self.app[CONTEXT]
        self._runner = GuardedRunner(
            self.app,
            self.guard,
            # Cancel a stream's handler the moment its client disconnects, so
            # the upstream request is closed at once (DESIGN.md, "Upstreams").
            handler_cancellation=True,
            access_log=None,
            # Streams are ended by drain() before cleanup; what remains then
            # is not worth holding the pod's grace period for.
            shutdown_timeout=2.0,
            keepalive_timeout=75.0,
        )
        admin = config.admin
        self._admin_runner = web.AppRunner(
            admin_app(self.ctx.metrics.render, self.ctx.ready, admin.token), access_log=None
        )
        self.port = config.listen.port
        self.admin_port = admin.port

    async def start(self) -> None:
        await self._runner.setup()
        listen = self.config.listen
        site = web.TCPSite(
            self._runner, listen.host, listen.port, backlog=1024, reuse_port=self.worker or None
        )
        self.port = await start_site(site, "listen")
        if self.worker:
            return
        await self._admin_runner.setup()
        admin_site = web.TCPSite(self._admin_runner, self.config.admin.host, self.config.admin.port)
        self.admin_port = await start_site(admin_site, "admin")

    async def drain(self) -> None:
        """Refuse new streams, let running ones finish, then end them with error/shutdown."""
        ctx = self.ctx
        ctx.draining = True
        ctx.metrics.draining.set(1)
        # No stream starts while draining, so waiting on today's set suffices.
        running = [h.task for h in ctx.streams if h.task is not None]
        if running:
            await asyncio.wait(running, timeout=self.config.drain_timeout)
        for handle in list(ctx.streams):
            handle.stop("shutdown")
        tasks = [h.task for h in ctx.streams if h.task is not None]
        if tasks:
            # Each stream writes its terminal event and ends; bounded by the
            # write timeout of a client that does not read.
            await asyncio.wait(tasks, timeout=2.0)

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._admin_runner.cleanup()

    async def shutdown(self) -> None:
        await self.drain()
        await self.stop()
