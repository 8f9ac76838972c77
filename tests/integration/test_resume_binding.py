"""A resumable run is bound to the credentials that started it (memory backend).

A reconnect is served from the replay log, so the upstream's authentication
never sees it: without the binding, whoever knows a session key (often a
conversation id) reads the answer, or ends the stream by replacing it.
"""

from __future__ import annotations

import asyncio
import json

from tests.conftest import Script
from tests.integration.streams import read_stream
from tests.integration.test_resume import read_until, resume_config

ALICE = {"Authorization": "Bearer alice-secret"}
MALLORY = {"Authorization": "Bearer mallory"}


def own_ids(n: int, gap: float = 0.05) -> Script:
    """A producer that numbers its own events from 0, as many do: the id is no secret."""
    steps: list[bytes | float | str] = []
    for i in range(n):
        steps += [f"id: {i}\ndata: alice-{i}\n\n".encode(), gap]
    steps.append(b"event: done\ndata: [DONE]\n\n")
    return Script(steps)


async def test_a_reconnect_with_other_credentials_gets_403_never_the_replay(
    upstream, start_sidecar
):
    upstream.script = own_ids(30, gap=0.02)
    sc = await start_sidecar(resume_config(upstream.url))
    whole = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=ALICE)
    assert whole.kinds()[-1] == "done"
    for headers in (MALLORY, {}):
        got = await read_stream(
            sc.http, "GET", sc.url + "/s?s=conv-1", headers={**headers, "Last-Event-ID": "0"}
        )
        assert got.status == 403
        assert json.loads(got.raw)["error"]["code"] == "session_forbidden"
        assert b"alice-" not in got.raw
    # The owner still gets her tail.
    mine = await read_stream(
        sc.http, "GET", sc.url + "/s?s=conv-1", headers={**ALICE, "Last-Event-ID": "27"}
    )
    assert [e.data for e in mine.events if e.data.startswith("alice-")] == ["alice-28", "alice-29"]
    metrics = await sc.metrics()
    assert 'sse_sidecar_resume_total{result="forbidden",route="test"} 2.0' in metrics
    assert (
        'sse_sidecar_rejected_requests_total{reason="session_forbidden",route="test"} 2.0'
        in metrics
    )


async def test_a_live_run_cannot_be_replaced_by_other_credentials(upstream, start_sidecar):
    upstream.script = own_ids(20, gap=0.05)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=conv-1", headers=ALICE) as resp:
        first = await read_until(resp, 2)
        refused = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=MALLORY)
        assert refused.status == 403
        assert json.loads(refused.raw)["error"]["code"] == "session_forbidden"
        rest = (await resp.content.read()).decode()
    assert [d for _, d in first] == ["alice-0", "alice-1"]
    assert "alice-19" in rest
    assert "event: done" in rest
    assert "replaced" not in rest
    assert len(upstream.requests) == 1


async def test_the_same_credentials_may_replace_and_a_finished_run_frees_the_key(
    upstream, start_sidecar
):
    upstream.script = own_ids(3)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=conv-1", headers=ALICE) as resp:
        await read_until(resp, 1)
        again = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=ALICE)
        assert again.status == 200
        assert again.kinds()[-1] == "done"
    # Once the run has ended, the key may start a new one with any credentials.
    other = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=MALLORY)
    assert other.status == 200
    assert other.kinds()[-1] == "done"


async def test_binding_to_a_cookie(upstream, start_sidecar):
    upstream.script = own_ids(5)
    sc = await start_sidecar(resume_config(upstream.url, bind=["cookie:session"]))
    owner = {"Cookie": "session=s-alice; theme=dark"}
    await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=owner)
    other_theme = {"Cookie": "session=s-alice; theme=light", "Last-Event-ID": "2"}
    mine = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=other_theme)
    assert mine.status == 200
    assert [e.data for e in mine.events if e.data.startswith("alice-")] == ["alice-3", "alice-4"]
    # Authorization is not bound on this route, the session cookie is.
    theirs = {"Cookie": "session=s-mallory", "Last-Event-ID": "2", **ALICE}
    got = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=theirs)
    assert got.status == 403


async def test_bind_nothing_lets_any_holder_of_the_key_resume(upstream, start_sidecar):
    # Documented as unsafe; this is what it means.
    upstream.script = own_ids(4)
    sc = await start_sidecar(resume_config(upstream.url, bind=[]))
    await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=ALICE)
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=conv-1", headers={**MALLORY, "Last-Event-ID": "1"}
    )
    assert got.status == 200
    assert [e.data for e in got.events if e.data.startswith("alice-")] == ["alice-2", "alice-3"]


async def test_a_detached_run_is_not_replaced_by_other_credentials(upstream, start_sidecar):
    upstream.script = own_ids(40, gap=0.05)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=conv-1", headers=ALICE) as resp:
        await read_until(resp, 2)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    refused = await read_stream(sc.http, "GET", sc.url + "/s?s=conv-1", headers=MALLORY)
    assert refused.status == 403
    back = await read_stream(
        sc.http, "GET", sc.url + "/s?s=conv-1", headers={**ALICE, "Last-Event-ID": "1"}
    )
    assert back.kinds()[-1] == "done"
    assert [e.data for e in back.events if e.data.startswith("alice-")] == [
        f"alice-{i}" for i in range(2, 40)
    ]
    assert len(upstream.requests) == 1
