"""Shared fixtures: a config factory, a scripted upstream and a running sidecar.

Everything listens on 127.0.0.1 with port 0 and is a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from sidecar.app import Sidecar
from sidecar.config import Config, from_mapping

pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_redis_cluster"]

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default: `ci` when the CI
# variable is set, else `dev`). Property tests take their example count from
# the profile (scaled with tests.budget where one example is expensive) instead
# of hard-coding it.
# - ci: derandomized and without an example database, so a run is repeatable
#   and scripts/mutation scores are stable; enough examples to find edges.
# - dev: randomized and quick, for the edit-test loop.
# - thorough: randomized, ten times ci, for a hunt before a release.
# - mutation: see below.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
# scripts/mutation: ci with fewer examples, since every surviving mutant runs
# the module's whole fast suite; edges are pinned by unit tests, not by luck.
settings.register_profile("mutation", settings.get_profile("ci"), max_examples=40)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

# A step of a scripted upstream: bytes to send, or a float to sleep, or a
# callable marker (see Script) for abrupt endings.
Step = bytes | float | str


@dataclass
class Script:
    """What a scripted upstream answers: status, headers, then steps.

    Steps: bytes are written, a float sleeps that many seconds, "abort"
    kills the TCP connection mid-response, "hang" waits forever.
    """

    steps: Sequence[Step] = ()
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    headers_delay: float = 0.0


@dataclass
class UpstreamRecord:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    started_at: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    client_gone_at: float | None = None
    ended_at: float | None = None


class ScriptedUpstream:
    """A real aiohttp server on loopback that plays a :class:`Script` per request."""

    def __init__(self) -> None:
        self.script: Script | Callable[[web.Request], Script] = Script()
        self.requests: list[UpstreamRecord] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:(?s:.*)}", self._handle)
        # Cancel the handler when the sidecar drops the connection, so the
        # record shows when the upstream noticed.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = UpstreamRecord(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            await request.read(),
        )
        loop = asyncio.get_running_loop()
        record.started_at = loop.time()
        self.requests.append(record)
        script = self.script(request) if callable(self.script) else self.script
        try:
            if script.headers_delay:
                await asyncio.sleep(script.headers_delay)
            if script.content_type != "text/event-stream" or script.status >= 300:
                body = b"".join(s for s in script.steps if isinstance(s, bytes))
                return web.Response(
                    status=script.status,
                    body=body,
                    content_type=script.content_type,
                    headers=script.headers,
                )
            resp = web.StreamResponse(status=script.status, headers=script.headers)
            resp.content_type = script.content_type
            await resp.prepare(request)
            for step in script.steps:
                if isinstance(step, bytes):
                    await resp.write(step)
                elif isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif step == "abort":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                elif step == "hang":
                    await asyncio.sleep(3600)
            await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            record.client_gone_at = loop.time()
            raise
        finally:
            record.ended_at = loop.time()
            record.finished.set()


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    await server.start()
    yield server
    await server.stop()


def make_config(upstream_url: str, **route: Any) -> Config:
    """A config with one route ``/s`` to ``upstream_url``; ``route`` overrides keys."""
    top = route.pop("top", {})
    data = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "routes": [{"name": "test", "path": "/s", "upstream": upstream_url, **route}],
        **top,
    }
    return from_mapping(data)


class Running:
    """A started sidecar with a client session pointed at it."""

    def __init__(self, sidecar: Sidecar, http: aiohttp.ClientSession) -> None:
        self.sidecar = sidecar
        self.http = http

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.admin_port}"

    async def metrics(self) -> str:
        async with self.http.get(self.admin_url + "/metrics") as resp:
            return await resp.text()


@pytest.fixture
async def start_sidecar() -> AsyncIterator[Callable[[Config], Any]]:
    started: list[Running] = []

    async def start(config: Config) -> Running:
        sidecar = Sidecar(config)
        await sidecar.start()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        running = Running(sidecar, http)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.http.close()
        await running.sidecar.stop()


def sse(*events: str) -> bytes:
    """Join event blocks given as text into stream bytes."""
    return "".join(events).encode()
