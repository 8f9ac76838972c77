"""workers: 2 on one port, with session exclusivity across both (Redis backend)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import aiohttp
import pytest

from tests.conftest import Script
from tests.integration.processes import SidecarProcess

pytestmark = pytest.mark.redis


async def readyz(sc: SidecarProcess) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(sc.admin_url + "/readyz") as resp:
            return resp.status, await resp.text()


async def ready(sc: SidecarProcess, limit_s: float = 20.0) -> str:
    """Wait for the supervisor's /readyz to pass; what the log held at that moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while (await readyz(sc))[0] != 200:
        assert loop.time() < deadline, "never ready"
        await asyncio.sleep(0.02)
    return sc.log()


def listening(log: str) -> set[int]:
    """The workers that logged that they listen."""
    return {
        json.loads(line).get("worker")
        for line in log.splitlines()
        if line.startswith("{") and '"event": "listening"' in line
    }


async def test_ready_only_once_every_worker_listens_also_after_one_died(
    tmp_path, upstream, redis_server
):
    # A probe that passed while a worker was starting would send every first
    # connection to the other one (or, with none listening, refuse them).
    sc = SidecarProcess(
        tmp_path,
        {
            "workers": 2,
            "backend": {"kind": "redis", "url": redis_server.url},
            "drain_timeout": "1s",
            "routes": [{"name": "chat", "path": "/s", "upstream": upstream.url}],
        },
    )
    await sc.start()
    try:
        assert listening(await ready(sc)) == {0, 1}
        pids = [
            json.loads(line)["pid"]
            for line in sc.log().splitlines()
            if '"event": "worker_started"' in line
        ]
        os.kill(pids[0], signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while (status := await readyz(sc))[0] == 200:
            assert loop.time() < deadline, "still ready with a worker dead"
            await asyncio.sleep(0.02)
        assert "workers" in status[1]
        log = await ready(sc)
        started = [line for line in log.splitlines() if '"event": "listening"' in line]
        assert len(started) == 3, "ready again only once the new worker listens"
    finally:
        sc.signal(signal.SIGTERM)
        assert await sc.wait(15.0) == 0


async def test_two_workers_share_a_port_and_one_session_has_one_stream(
    tmp_path, upstream, redis_server
):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = SidecarProcess(
        tmp_path,
        {
            "workers": 2,
            "backend": {"kind": "redis", "url": redis_server.url, "lease": "3s"},
            "drain_timeout": "1s",
            "routes": [
                {
                    "name": "chat",
                    "path": "/s",
                    "upstream": upstream.url,
                    "session": {"from": "query:k", "policy": "reject"},
                }
            ],
        },
    )
    await sc.start()
    await ready(sc)  # both workers listen: start() returns once the first one does
    try:
        async with aiohttp.ClientSession() as http:
            holder = await http.get(sc.url + "/s?k=alice")
            assert await holder.content.readuntil(b"\n\n") == b"data: 1\n\n"
            statuses = []
            for _ in range(16):  # fresh connections: the kernel spreads them
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(sc.url + "/s?k=alice") as resp:
                        statuses.append(resp.status)
                        assert (await resp.json())["error"]["code"] == "session_conflict"
            assert statuses == [409] * 16
            holder.close()
            # Other keys stream on whichever worker they land.
            for i in range(6):
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(sc.url + f"/s?k=user{i}") as resp:
                        assert resp.status == 200
                        await resp.content.readuntil(b"\n\n")
            async with http.get(sc.admin_url + "/metrics") as resp:
                metrics = await resp.text()
            async with http.get(sc.admin_url + "/readyz") as resp:
                assert resp.status == 200
        # The supervisor's /metrics adds up both workers.
        conflicts = re.search(
            r'sse_sidecar_session_conflicts_total\{policy="reject",route="chat"\} (\S+)', metrics
        )
        assert conflicts is not None
        assert float(conflicts.group(1)) == 16
        workers = {
            json.loads(line).get("worker")
            for line in sc.log().splitlines()
            if line.startswith("{") and '"stream_start"' in line
        }
        assert workers == {0, 1}, "both workers served streams"
    finally:
        sc.signal(signal.SIGTERM)
        assert await sc.wait(15.0) == 0
