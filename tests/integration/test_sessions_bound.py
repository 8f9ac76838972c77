"""A session's live stream belongs to the credentials that started it (memory backend).

A session key is often a conversation or user id, so knowing one must not be
a way to cut off another user's stream: on a route without resume, too, a
replace must present the live stream's credentials (``session.bind``).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

FIRST = b"data: 1\n\n"
DONE = b"event: done\ndata: [DONE]\n\n"
KEY = {"X-Session-Key": "conv-1"}
ALICE = {**KEY, "Authorization": "Bearer alice-secret"}
MALLORY = {**KEY, "Authorization": "Bearer mallory"}


def slow_answer() -> Script:
    return Script([FIRST, 0.3, b"data: 2\n\n", DONE])


async def test_a_replace_with_other_credentials_gets_403_and_the_stream_goes_on(
    upstream, start_sidecar
):
    upstream.script = slow_answer()
    sc = await start_sidecar(make_config(upstream.url))
    async with sc.http.get(sc.url + "/s", headers=ALICE) as live:
        assert await live.content.readuntil(b"\n\n") == FIRST
        for other in (MALLORY, KEY):  # other credentials, and none at all
            refused = await read_stream(sc.http, "GET", sc.url + "/s", headers=other)
            assert refused.status == 403
            assert json.loads(refused.raw)["error"]["code"] == "session_forbidden"
        rest = (await live.content.read()).decode()
    assert "data: 2" in rest
    assert "event: done" in rest
    assert "replaced" not in rest
    assert len(upstream.requests) == 1  # nothing was asked upstream for the refused ones
    metrics = await sc.metrics()
    assert (
        'sse_sidecar_rejected_requests_total{reason="session_forbidden",route="test"} 2.0'
        in metrics
    )
    assert 'sse_sidecar_session_conflicts_total{policy="replace",route="test"} 1.0' not in metrics


@pytest.mark.parametrize("block", ["session", "resume"])  # resume.bind: the old name
async def test_bind_to_one_cookie(upstream, start_sidecar, block):
    upstream.script = Script([FIRST, "hang"])
    config = make_config(upstream.url, **{block: {"bind": ["cookie:sid"]}})
    sc = await start_sidecar(config)
    old = asyncio.ensure_future(
        read_stream(sc.http, "GET", sc.url + "/s", headers={**ALICE, "Cookie": "sid=s-alice"})
    )
    while not upstream.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # The session cookie is bound, Authorization is not: a token refreshed meanwhile replaces.
    theirs = {**ALICE, "Cookie": "sid=s-mallory"}
    refused = await read_stream(sc.http, "GET", sc.url + "/s", headers=theirs)
    assert refused.status == 403
    mine = {**MALLORY, "Cookie": "theme=dark; sid=s-alice"}
    async with sc.http.get(sc.url + "/s", headers=mine) as new:
        assert new.status == 200
        assert (await asyncio.wait_for(old, 2.0)).error()["code"] == "replaced"


async def test_bind_nothing_lets_any_holder_of_the_key_replace(upstream, start_sidecar):
    # Documented as unsafe; this is what it means.
    upstream.script = Script([FIRST, "hang"])
    sc = await start_sidecar(make_config(upstream.url, session={"bind": []}))
    old = asyncio.ensure_future(read_stream(sc.http, "GET", sc.url + "/s", headers=ALICE))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    async with sc.http.get(sc.url + "/s", headers=MALLORY) as new:
        assert new.status == 200
        assert (await asyncio.wait_for(old, 2.0)).error()["code"] == "replaced"


async def test_a_stop_with_other_credentials_gets_403_and_the_stream_goes_on(
    upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    sc = await start_sidecar(make_config(upstream.url))
    reading = asyncio.ensure_future(read_stream(sc.http, "GET", sc.url + "/s", headers=ALICE))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    for other in (MALLORY, KEY):
        async with sc.http.delete(sc.url + "/s", headers=other) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "session_forbidden"
    await asyncio.sleep(0.1)
    assert not reading.done()
    async with sc.http.delete(sc.url + "/s", headers=ALICE) as resp:
        assert resp.status == 202
    got = await asyncio.wait_for(reading, 5)
    assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
    assert (
        'sse_sidecar_rejected_requests_total{reason="session_forbidden",route="test"} 2.0'
        in await sc.metrics()
    )
