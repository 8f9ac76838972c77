"""One live stream per session, in one process (memory backend)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sidecar.sessions.memory import MemorySessionStore
from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

DONE = b"event: done\ndata: [DONE]\n\n"
KEY = {"X-Session-Key": "user-1.chat:42"}


def store_of(sc) -> MemorySessionStore:
    store = sc.sidecar.ctx.sessions
    assert isinstance(store, MemorySessionStore)
    return store


@pytest.mark.parametrize(
    ("source", "kwargs", "path"),
    [
        ("header:X-Session-Key", {"headers": {"X-Session-Key": "abc"}}, "/s"),
        ("cookie:sid", {"cookies": {"sid": "abc"}}, "/s"),
        ("query:session", {}, "/s?session=abc"),
        ("path:1", {}, "/s/chat/abc/more"),
    ],
)
async def test_key_sources(upstream, start_sidecar, source, kwargs, path):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url, session={"from": source}))
    async with aiohttp.ClientSession(cookies=kwargs.pop("cookies", None)) as http:
        async with http.get(sc.url + path, **kwargs) as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            claim = store_of(sc).owner("test", "abc")
            assert claim is not None


@pytest.mark.parametrize("bad", ["", "has space", "a" * 129, "new\nline", "ünïcode", "semi;colon"])
async def test_bad_keys_get_a_400_never_a_stream(upstream, start_sidecar, bad):
    sc = await start_sidecar(
        make_config(upstream.url, session={"from": "query:k", "required": True})
    )
    async with sc.http.get(sc.url + "/s", params={"k": bad}) as resp:
        assert resp.status == 400
        body = await resp.json()
    code = body["error"]["code"]
    assert code == "bad_session_key"
    assert upstream.requests == []
    assert "bad_session_key" in await sc.metrics()


async def test_missing_key_allowed_unless_required(upstream, start_sidecar):
    upstream.script = Script([DONE])
    sc = await start_sidecar(make_config(upstream.url))
    assert (await read_stream(sc.http, "GET", sc.url + "/s")).status == 200
    sc2 = await start_sidecar(make_config(upstream.url, session={"required": True}))
    async with sc2.http.get(sc2.url + "/s") as resp:
        assert resp.status == 400
        assert "required" in (await resp.json())["error"]["message"]


async def test_replace_ends_the_older_stream(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url))
    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(read_stream(sc.http, "GET", sc.url + "/s", headers=KEY))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    async with sc.http.get(sc.url + "/s", headers=KEY) as second:
        assert second.status == 200
        t0 = loop.time()
        old = await asyncio.wait_for(first, 1.0)
        assert loop.time() - t0 < 1.0
        assert old.kinds() == ["message", "error"]
        err = old.error()
        assert (err["code"], err["partial"]) == ("replaced", True)
        # The older upstream was closed before the new stream started upstream.
        await asyncio.wait_for(upstream.requests[0].finished.wait(), 1.0)
        assert await second.content.readuntil(b"\n\n") == b"data: 1\n\n"
        assert len(upstream.requests) == 2
        old_up, new_up = upstream.requests
        assert old_up.ended_at is not None
        assert old_up.ended_at <= new_up.started_at
    metrics = await sc.metrics()
    assert 'sse_sidecar_session_conflicts_total{policy="replace",route="test"} 1.0' in metrics
    assert 'sse_sidecar_streams_total{outcome="replaced",route="test"} 1.0' in metrics


async def test_reject_answers_409_before_any_stream(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url, session={"policy": "reject"}))
    async with sc.http.get(sc.url + "/s", headers=KEY) as first:
        await first.content.readuntil(b"\n\n")
        async with sc.http.get(sc.url + "/s", headers=KEY) as second:
            assert second.status == 409
            assert second.content_type == "application/json"
            assert (await second.json())["error"]["code"] == "session_conflict"
        # A different key is not in conflict.
        async with sc.http.get(sc.url + "/s", headers={"X-Session-Key": "other"}) as third:
            assert third.status == 200
    assert len(upstream.requests) == 2
    metrics = await sc.metrics()
    assert 'sse_sidecar_session_conflicts_total{policy="reject",route="test"} 1.0' in metrics


@pytest.mark.parametrize("policy", ["replace", "reject"])
async def test_50_concurrent_requests_leave_one_live_stream(upstream, start_sidecar, policy):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(make_config(upstream.url, session={"policy": policy}))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    responses: list[aiohttp.ClientResponse] = []

    async def open_one() -> None:
        resp = await http.get(sc.url + "/s", headers=KEY)
        responses.append(resp)

    async with http:
        await asyncio.gather(*(open_one() for _ in range(50)))
        await asyncio.sleep(1.5)  # replaced streams end, their upstreams close
        store = store_of(sc)
        assert len(store) == 1
        live = list(sc.sidecar.ctx.streams)
        assert len(live) == 1
        statuses = sorted(r.status for r in responses)
        if policy == "reject":
            assert statuses == [200] + [409] * 49
        else:
            assert statuses == [200] * 50
            open_upstreams = [r for r in upstream.requests if not r.finished.is_set()]
            assert len(open_upstreams) == 1
        for resp in responses:
            resp.close()


@pytest.mark.parametrize(
    ("steps", "outcome"),
    [
        ([b"data: 1\n\n", DONE], "completed"),
        ([b"data: 1\n\n"], "upstream_closed"),
        ([b"data: 1\n\n", "abort"], "upstream_disconnected"),
        ([b"data: 1\n\n", "hang"], "upstream_timeout"),
        ([b"data: \xff\n\n"], "upstream_protocol"),
        ([b"data: 1\n\n", "hang"], "client_disconnected"),
        ([b"data: 1\n\n", "hang"], "replaced"),
        ([b"data: 1\n\n", "hang"], "shutdown"),
    ],
)
async def test_every_way_out_releases_the_claim(upstream, start_sidecar, steps, outcome):
    upstream.script = Script(steps)
    sc = await start_sidecar(
        make_config(upstream.url, limits={"idle_timeout": "300ms"}, top={"drain_timeout": 0})
    )
    store = store_of(sc)
    if outcome in ("client_disconnected", "replaced", "shutdown"):
        async with sc.http.get(sc.url + "/s", headers=KEY) as resp:
            await resp.content.readuntil(b"\n\n")
            assert len(store) == 1
            if outcome == "client_disconnected":
                resp.connection.transport.abort()  # type: ignore[union-attr]
            elif outcome == "replaced":
                store.owner("test", KEY["X-Session-Key"]).holder.stop("replaced")  # type: ignore[union-attr]
                await resp.read()
            else:
                await sc.sidecar.drain()
                await resp.read()
    else:
        got = await read_stream(sc.http, "GET", sc.url + "/s", headers=KEY)
        assert got.status == 200
    for _ in range(100):
        if len(store) == 0 and not sc.sidecar.ctx.streams:
            break
        await asyncio.sleep(0.01)
    assert len(store) == 0
    metrics = await sc.metrics()
    assert f'sse_sidecar_streams_total{{outcome="{outcome}",route="test"}} 1.0' in metrics
