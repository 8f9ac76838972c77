"""The stop request: DELETE with the session key ends the run now, here or on another replica."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

KEY = {"X-Session-Key": "user-1"}


async def _started(upstream) -> None:
    for _ in range(200):
        if upstream.requests:
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the upstream was never asked")


async def _stop_and_read(upstream, streamer, stopper, path: str = "/s") -> None:
    loop = asyncio.get_running_loop()
    reading = asyncio.ensure_future(
        read_stream(streamer.http, "GET", streamer.url + path, headers=KEY)
    )
    await _started(upstream)
    t0 = loop.time()
    async with stopper.http.delete(stopper.url + "/s", headers=KEY) as resp:
        assert resp.status == 202
        assert await resp.json() == {"stopped": True}
    got = await asyncio.wait_for(reading, 5)
    assert loop.time() - t0 < 1.5
    assert got.kinds() == ["message", "end"]
    assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
    await asyncio.wait_for(upstream.requests[0].finished.wait(), 1.0)  # upstream closed


async def test_stop_ends_the_run_with_end_stopped(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url))
    await _stop_and_read(upstream, sc, sc)
    assert 'sse_sidecar_streams_total{outcome="stopped",route="test"} 1.0' in await sc.metrics()


async def test_stop_ends_a_resumable_run_and_its_follower(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url, resume={"enabled": True}))
    await _stop_and_read(upstream, sc, sc)


async def test_stop_without_a_run_is_a_json_404(start_sidecar, upstream):
    sc = await start_sidecar(make_config(upstream.url))
    async with sc.http.delete(sc.url + "/s", headers=KEY) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "no_run"
    async with sc.http.delete(sc.url + "/s") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "missing_session_key"
    assert upstream.requests == []


@pytest.mark.redis
async def test_stop_on_one_replica_ends_the_run_on_the_other(redis_server, upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])

    def config():
        return make_config(
            upstream.url,
            top={"backend": {"kind": "redis", "url": redis_server.url, "lease": "10s"}},
        )

    a = await start_sidecar(config())
    b = await start_sidecar(config())
    await _stop_and_read(upstream, a, b)
    async with b.http.delete(b.url + "/s", headers=KEY) as resp:
        assert resp.status == 404  # the run is over: its claim is gone


async def test_stop_of_a_bound_run_needs_its_credentials(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(
        make_config(upstream.url, resume={"enabled": True, "bind": ["header:Authorization"]})
    )
    owner = {**KEY, "Authorization": "Bearer alice"}
    reading = asyncio.ensure_future(read_stream(sc.http, "GET", sc.url + "/s", headers=owner))
    await _started(upstream)
    other = {**KEY, "Authorization": "Bearer mallory"}
    async with sc.http.delete(sc.url + "/s", headers=other) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "session_forbidden"
    async with sc.http.delete(sc.url + "/s", headers=owner) as resp:
        assert resp.status == 202
    got = await asyncio.wait_for(reading, 5)
    assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
