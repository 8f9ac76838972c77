"""Resume with Last-Event-ID against a run that kept going (memory backend)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import Script, make_config
from tests.integration.streams import read_stream

N = 12
DONE = b"event: done\ndata: [DONE]\n\n"


def numbered(n: int = N, gap: float = 0.1) -> Script:
    steps: list[bytes | float | str] = []
    for i in range(1, n + 1):
        steps += [f"data: {i}\n\n".encode(), gap]
    steps.append(DONE)
    return Script(steps)


def resume_config(url: str, **resume):
    return make_config(
        url,
        session={"from": "query:s"},
        resume={"enabled": True, "grace": "3s", **resume},
        heartbeat={"interval": "500ms"},
    )


async def read_until(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str, str]]:
    """Read ``count`` data events (id, data) from a live response, then stop."""
    events: list[tuple[str, str]] = []
    while len(events) < count:
        block = (await resp.content.readuntil(b"\n\n")).decode()
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n") if ": " in line)
        if fields.get("event", "message") == "message" and "data" in fields:
            events.append((fields["id"], fields["data"]))
    return events


def data_events(got) -> list[str]:
    return [e.data for e in got.events if (e.event or "message") == "message" and e.data]


async def test_reconnect_gets_exactly_the_missed_events(upstream, start_sidecar):
    upstream.script = numbered()
    sc = await start_sidecar(resume_config(upstream.url))
    k = 4
    async with sc.http.get(sc.url + "/s?s=alice") as resp:
        first = await read_until(resp, k)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    assert [d for _, d in first] == ["1", "2", "3", "4"]
    await asyncio.sleep(2.0)  # the run goes on meanwhile
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=alice", headers={"Last-Event-ID": first[-1][0]}
    )
    assert got.status == 200
    assert data_events(got) == [str(i) for i in range(k + 1, N + 1)]
    assert got.kinds()[-1] == "done"
    assert len(upstream.requests) == 1
    ids = [e.id for e in got.events if e.id]
    assert len(set(ids)) == len(ids)
    metrics = await sc.metrics()
    assert 'sse_sidecar_resume_total{result="hit",route="test"} 1.0' in metrics
    assert 'sse_sidecar_streams_total{outcome="completed",route="test"} 1.0' in metrics


async def test_fetch_client_resumes_with_a_post_and_query_param(upstream, start_sidecar):
    upstream.script = numbered(8)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.post(sc.url + "/s?s=bob", json={"prompt": "hi"}) as resp:
        first = await read_until(resp, 3)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    got = await read_stream(
        sc.http,
        "POST",
        sc.url + f"/s?s=bob&last_event_id={first[-1][0]}",
        json={"prompt": "hi"},
    )
    assert data_events(got) == ["4", "5", "6", "7", "8"]
    assert len(upstream.requests) == 1
    assert upstream.requests[0].body == b'{"prompt": "hi"}'


async def test_upstream_ids_are_kept_and_resumable(upstream, start_sidecar):
    upstream.script = Script(
        [b"id: a\ndata: 1\n\n", b"id: b\ndata: 2\n\n", 0.5, b"id: c\ndata: 3\n\n", DONE]
    )
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=carol") as resp:
        first = await read_until(resp, 2)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    assert first == [("a", "1"), ("b", "2")]
    got = await read_stream(sc.http, "GET", sc.url + "/s?s=carol", headers={"Last-Event-ID": "b"})
    messages = [(e.id, e.data) for e in got.events if e.event is None]
    assert messages[0] == ("c", "3")  # heartbeats may come first: c is 0.5 s away


async def test_after_grace_the_upstream_is_closed_and_resume_is_a_gap(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(resume_config(upstream.url, grace="500ms"))
    loop = asyncio.get_running_loop()
    async with sc.http.get(sc.url + "/s?s=dave") as resp:
        (first,) = await read_until(resp, 1)
        resp.connection.transport.abort()  # type: ignore[union-attr]
        left = loop.time()
    record = upstream.requests[0]
    await asyncio.wait_for(record.finished.wait(), 2.0)
    assert 0.4 <= record.ended_at - left < 1.5  # kept for the grace, then closed
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=dave", headers={"Last-Event-ID": first[0]}
    )
    assert got.kinds() == ["error"]
    assert got.error()["code"] == "resume_gap"
    metrics = await sc.metrics()
    assert 'sse_sidecar_streams_total{outcome="abandoned",route="test"} 1.0' in metrics


async def test_evicted_id_is_a_gap(upstream, start_sidecar):
    upstream.script = numbered(10, gap=0.02)
    sc = await start_sidecar(resume_config(upstream.url, buffer_events=3))
    async with sc.http.get(sc.url + "/s?s=erin") as resp:
        first = await read_until(resp, 1)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=erin", headers={"Last-Event-ID": first[0][0]}
    )
    assert got.kinds() == ["error"]
    err = got.error()
    assert (err["code"], err["partial"]) == ("resume_gap", True)
    assert 'sse_sidecar_resume_total{result="gap",route="test"} 1.0' in await sc.metrics()


async def test_finished_stream_replays_its_tail_within_retention(upstream, start_sidecar):
    upstream.script = numbered(5, gap=0.01)
    sc = await start_sidecar(resume_config(upstream.url))
    whole = await read_stream(sc.http, "GET", sc.url + "/s?s=frank")
    ids = [e.id for e in whole.events]
    assert data_events(whole) == ["1", "2", "3", "4", "5"]
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=frank", headers={"Last-Event-ID": ids[2]}
    )
    assert data_events(got) == ["4", "5"]
    assert got.kinds()[-1] == "done"
    # With the terminal event's id the client has everything: 204 stops EventSource.
    async with sc.http.get(sc.url + "/s?s=frank", headers={"Last-Event-ID": ids[-1]}) as resp:
        assert resp.status == 204
    assert len(upstream.requests) == 1


async def test_another_sessions_key_gets_nothing(upstream, start_sidecar):
    upstream.script = numbered(6, gap=0.05)
    sc = await start_sidecar(resume_config(upstream.url))
    whole = await read_stream(sc.http, "GET", sc.url + "/s?s=grace")
    valid_id = whole.events[1].id
    for path in ("/s?s=mallory", "/s"):
        got = await read_stream(sc.http, "GET", sc.url + path, headers={"Last-Event-ID": valid_id})
        assert got.kinds() == ["error"]
        assert got.error()["code"] == "resume_gap"
        assert b"data: 3" not in got.raw
    assert len(upstream.requests) == 1


async def test_ids_do_not_reveal_other_runs(upstream, start_sidecar):
    upstream.script = numbered(2, gap=0.0)
    sc = await start_sidecar(resume_config(upstream.url))
    a = await read_stream(sc.http, "GET", sc.url + "/s?s=a")
    b = await read_stream(sc.http, "GET", sc.url + "/s?s=b")
    nonce_a = a.events[0].id.rsplit("-", 1)[0]
    nonce_b = b.events[0].id.rsplit("-", 1)[0]
    assert nonce_a != nonce_b
    assert len(nonce_a) >= 12


async def test_heartbeats_reach_a_follower_during_silence(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", 1.3, DONE])
    sc = await start_sidecar(resume_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s?s=henry")
    assert got.kinds().count("keepalive") >= 2
    assert got.kinds()[0] == "message"
    assert got.kinds()[-1] == "done"


async def test_new_request_without_last_event_id_replaces_a_detached_run(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=ivy") as resp:
        await read_until(resp, 1)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    async with sc.http.get(sc.url + "/s?s=ivy") as resp:
        await read_until(resp, 1)
        await asyncio.wait_for(upstream.requests[0].finished.wait(), 1.0)
    assert len(upstream.requests) == 2


async def test_error_terminal_is_replayed_too(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", 0.3, b"data: 2\n\n", "abort"])
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=jack") as resp:
        first = await read_until(resp, 1)
        resp.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.6)
    got = await read_stream(
        sc.http, "GET", sc.url + "/s?s=jack", headers={"Last-Event-ID": first[0][0]}
    )
    assert got.kinds() == ["message", "error"]
    err = got.error()
    assert (err["code"], err["partial"]) == ("upstream_disconnected", True)
    assert got.events[-1].id is not None  # the terminal has an id, so it is resumable too


async def test_passthrough_still_works_on_resume_routes(upstream, start_sidecar):
    upstream.script = Script([b'{"error":"nope"}'], status=401, content_type="application/json")
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=kim") as resp:
        assert resp.status == 401
        assert json.loads(await resp.read()) == {"error": "nope"}


async def test_shutdown_reaches_a_follower(upstream, start_sidecar):
    upstream.script = Script([b"data: 1\n\n", "hang"])
    sc = await start_sidecar(resume_config(upstream.url, grace="10s"))
    async with sc.http.get(sc.url + "/s?s=liz") as resp:
        await read_until(resp, 1)
        for handle in list(sc.sidecar.ctx.streams):
            handle.stop("shutdown")
        rest = await asyncio.wait_for(resp.content.read(), 2.0)
    assert b'"code":"shutdown"' in rest


async def test_resume_route_without_key_streams_plainly(upstream, start_sidecar):
    upstream.script = numbered(2, gap=0.0)
    sc = await start_sidecar(resume_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s")
    assert data_events(got) == ["1", "2"]
    assert all(e.id is None for e in got.events)  # no session: nothing to resume


async def test_a_reconnect_takes_over_from_a_connection_still_open(upstream, start_sidecar):
    upstream.script = numbered(8, gap=0.1)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=max") as old:
        first = await read_until(old, 2)
        # The client thinks it lost the connection (the server does not know yet).
        got = await read_stream(
            sc.http, "GET", sc.url + "/s?s=max", headers={"Last-Event-ID": first[-1][0]}
        )
        rest = (await old.content.read()).decode()
    assert data_events(got) == [str(i) for i in range(3, 9)]
    assert '"code":"replaced"' in rest
    assert len(upstream.requests) == 1
    # Once replaced, the old connection gets nothing more: the error is its last event.
    assert rest.rstrip("\n").split("\n\n")[-1].startswith("event: error")


async def test_a_client_that_falls_behind_the_run_gets_every_event_from_the_log(
    upstream, start_sidecar
):
    """The run writes its caught-up client itself; one that stops reading catches up from the log.

    16 MB arrive while the client reads nothing (more than loopback's socket
    buffers hold): the run neither waits for
    it nor queues them in front of it; the client then gets every event, once
    and in order, and the upstream's own end.
    """
    n, size = 2000, 8192
    steps: list[bytes | float | str] = [f"data: {i} {'x' * size}\n\n".encode() for i in range(n)]
    upstream.script = Script([*steps, DONE])
    sc = await start_sidecar(resume_config(upstream.url, buffer_events=5000, buffer_bytes="64MiB"))
    async with sc.http.get(sc.url + "/s?s=slow") as resp:
        first = await read_until(resp, 1)
        await asyncio.sleep(1.5)  # not reading: the socket's buffers fill up
        rest = (await resp.content.read()).decode()
    blocks = [b for b in rest.split("\n\n") if b]
    lines = [line for b in blocks for line in b.split("\n")]
    data = [line[6:].split(" ")[0] for line in lines if line.startswith("data: ")]
    assert [first[0][1].split(" ")[0], *data] == [*(str(i) for i in range(n)), "[DONE]"]
    ids = [line[4:] for b in blocks for line in b.split("\n") if line.startswith("id: ")]
    assert len(set(ids)) == len(ids) == n  # every event once, the terminal event's too
    assert len(upstream.requests) == 1


async def test_a_client_written_by_the_run_gets_heartbeats_and_the_end(upstream, start_sidecar):
    """Caught up and silent: its heartbeats still come, then the events and the end, once."""
    upstream.script = Script([b"data: 1\n\n", 1.2, b"data: 2\n\n", DONE])
    sc = await start_sidecar(resume_config(upstream.url))
    got = await read_stream(sc.http, "GET", sc.url + "/s?s=quiet")
    assert data_events(got) == ["1", "2"]
    assert got.kinds().count("keepalive") >= 1
    assert got.kinds()[-1] == "done"
    metrics = await sc.metrics()
    assert 'sse_sidecar_streams_total{outcome="completed",route="test"} 1.0' in metrics


async def test_a_caught_up_client_waits_on_the_timer_wheel_and_its_heartbeat_is_on_time(
    upstream, start_sidecar
):
    """While the run writes to its client, the client's wait is on the process's wheel
    (beside the splice's deadline, no loop timer of its own); it ends at the heartbeat."""
    upstream.script = Script([b"data: 1\n\n", 1.5, DONE])
    sc = await start_sidecar(resume_config(upstream.url))
    loop = asyncio.get_running_loop()
    async with sc.http.get(sc.url + "/s?s=wheel") as resp:
        assert [d for _, d in await read_until(resp, 1)] == ["1"]
        since = loop.time()
        await asyncio.sleep(0.1)
        assert len(sc.sidecar.ctx.timers) == 2  # the splice's and the follower's
        block = await resp.content.readuntil(b"\n\n")
        gap = loop.time() - since
        assert b"keepalive" in block
        assert 0.3 <= gap <= 0.5 + 0.025 + 0.25  # the interval, one wheel slot, slack


async def test_a_caught_up_client_ends_with_the_run_not_at_its_next_heartbeat(
    upstream, start_sidecar
):
    """The run's terminal event wakes the client's wait at once (interval 5 s)."""
    upstream.script = Script([b"data: 1\n\n", 0.3, DONE])
    config = make_config(
        upstream.url,
        session={"from": "query:s"},
        resume={"enabled": True, "grace": "3s"},
        heartbeat={"interval": "5s"},
    )
    sc = await start_sidecar(config)
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = await read_stream(sc.http, "GET", sc.url + "/s?s=early")
    assert data_events(got) == ["1"]
    assert got.kinds()[-1] == "done"
    assert loop.time() - started < 2.0
    assert len(sc.sidecar.ctx.timers) == 0


def _awaiting(task: asyncio.Task) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    coro = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return names


async def test_a_followed_stream_holds_no_frame_of_its_set_up(upstream, start_sidecar):
    # Each coroutine a stream's handler is suspended in is held for the whole
    # stream: the first client's and a reconnect's follow the run in the
    # follower's one frame, without ResumeEntry's (nor a middleware's) above.
    upstream.script = numbered(3, gap=3.0)
    sc = await start_sidecar(resume_config(upstream.url))
    async with sc.http.get(sc.url + "/s?s=carol") as resp:
        first = await read_until(resp, 1)
        await asyncio.sleep(0.2)  # caught up: the follower waits on the run
        chains = [_awaiting(t) for t in asyncio.all_tasks()]
        (chain,) = [c for c in chains if "Follower.serve" in c]
        assert not [name for name in chain if name.startswith("ResumeEntry.")]
        assert "RouteHandler.handle" in chain
        assert not [name for name in chain if "middleware" in name]
        # The follower's own loop is in its one frame.
        assert chain[chain.index("Follower.serve") + 1 :] == []
    async with sc.http.get(sc.url + "/s?s=carol", headers={"Last-Event-ID": first[-1][0]}) as resp:
        assert resp.status == 200
        await asyncio.sleep(0.3)
        chains = [_awaiting(t) for t in asyncio.all_tasks()]
        (chain,) = [c for c in chains if "Follower.serve" in c]
        assert not [name for name in chain if name.startswith("ResumeEntry.")]
