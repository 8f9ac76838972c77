"""SIGTERM on a real sidecar process with open streams: readiness, drain, shutdown event, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from tests.conftest import Script
from tests.integration.processes import SidecarProcess
from tests.integration.streams import read_stream

DONE = b"event: done\ndata: [DONE]\n\n"


@pytest.fixture
async def sidecar_process(tmp_path, upstream):
    started: list[SidecarProcess] = []

    async def start(**top) -> SidecarProcess:
        config = {
            "routes": [
                {
                    "name": "chat",
                    "path": "/s",
                    "upstream": upstream.url,
                    "heartbeat": {"interval": "10s"},
                }
            ],
            **top,
        }
        proc = SidecarProcess(tmp_path, config)
        await proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def test_sigterm_drains_then_ends_streams_with_shutdown(upstream, sidecar_process):
    upstream.script = lambda request: (
        Script([b"data: 1\n\n", 0.3, b"data: 2\n\n", DONE])
        if "short" in request.query_string
        else Script([b"data: 1\n\n", "hang"])
    )
    sc = await sidecar_process(drain_timeout="1500ms", shutdown_retry="750ms")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        streams = [await http.get(sc.url + "/s") for _ in range(2)]
        for resp in streams:
            assert await resp.content.readuntil(b"\n\n") == b"data: 1\n\n"
        short = asyncio.ensure_future(read_stream(http, "GET", sc.url + "/s?short=1"))
        await asyncio.sleep(0.1)
        async with http.get(sc.admin_url + "/readyz") as ready:
            assert ready.status == 200

        sc.signal(signal.SIGTERM)
        t0 = loop.time()
        await asyncio.sleep(0.2)
        async with http.get(sc.admin_url + "/readyz") as ready:
            assert ready.status == 503
            assert "draining" in await ready.text()
        async with http.get(sc.url + "/s") as refused:
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == "draining"
            assert refused.headers["Retry-After"] == "1"

        # A stream that ends within the drain timeout ends normally.
        finished = await asyncio.wait_for(short, 2.0)
        assert finished.kinds() == ["message", "message", "done"]

        for resp in streams:
            rest = await asyncio.wait_for(resp.content.read(), 5.0)
            elapsed = loop.time() - t0
            assert 1.4 <= elapsed < 3.0, elapsed  # not before the drain timeout
            assert rest.startswith(b"event: error\nretry: 750\ndata: ")
            payload = json.loads(rest.split(b"data: ", 1)[1])
            assert (payload["code"], payload["partial"]) == ("shutdown", True)
            resp.close()
    assert await sc.wait(5.0) == 0
    assert '"event": "stopped"' in sc.log()


async def test_sigterm_with_no_streams_exits_at_once(sidecar_process):
    sc = await sidecar_process(drain_timeout="30s")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sc.signal(signal.SIGINT)
    assert await sc.wait(5.0) == 0
    assert loop.time() - t0 < 3.0
