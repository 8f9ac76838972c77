"""The example producer, served for real on loopback and read like a client would."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest
from aiohttp import web

from sidecar.examples.producer import ANSWER, STATS, ProducerStats, create_app, main

# At speed 40 a token takes 1.25 ms and the default 20 s silence 0.5 s: two
# keepalive comments 50 ms apart, then 0.4 s with no bytes at all.
SPEED = 40.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_server_errors(caplog):
    """aiohttp logs (rather than raises) handler errors; any of them fails the test."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def app() -> web.Application:
    return create_app(speed=SPEED)


@pytest.fixture
def stats(app: web.Application) -> ProducerStats:
    return app[STATS]


@pytest.fixture
async def client(app: web.Application, request: pytest.FixtureRequest):
    """A session on the app served as main() serves it.

    By default aiohttp does not cancel a handler whose client left, so the
    producer must notice by itself; aiohttp_client's test server cancels
    (``handler_cancellation=True``), which would hide a failure to notice.
    Tests about leaving clients run both ways through ``indirect``.
    """
    runner = web.AppRunner(app, handler_cancellation=getattr(request, "param", False))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
            yield session
    finally:
        await runner.cleanup()


async def read_timed(resp) -> list[tuple[float, bytes]]:
    return [(time.monotonic(), chunk) async for chunk in resp.content.iter_any()]


class Item(NamedTuple):
    kind: str  # the event type, or "comment"
    data: str | None = None
    id: str | None = None


def decode(raw: bytes) -> list[Item]:
    """A deliberately small parser, enough for what this producer writes.

    The producer writes ``name: value`` lines ending in LF and one blank line
    after each block (the proxy's real decoder is tested on its own).
    """
    assert not raw or raw.endswith(b"\n\n"), "the stream ended inside a block"
    items = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name:
                fields[name] = value
            else:
                items.append(Item("comment", value))
        if fields:
            items.append(Item(fields.get("event", "message"), fields.get("data"), fields.get("id")))
    return items


def kinds(items: list[Item]) -> list[str]:
    return [i.kind for i in items]


def texts(items: list[Item]) -> list[str]:
    return [json.loads(i.data or "null")["text"] for i in items if i.kind == "token"]


def counts(
    started: int, finished: int, client_gone: int, active: int, resumed: int = 0, misses: int = 0
) -> dict[str, int]:
    return {"started": started, "finished": finished, "client_gone": client_gone, "active": active,
            "resumed": resumed, "resume_misses": misses}  # fmt: skip


async def drain(resp, into: bytearray) -> None:
    async for chunk in resp.content.iter_any():
        into += chunk


async def test_normal_stream_tokens_silence_and_one_done(client, stats):
    async with client.get("/v1/chat") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "Content-Length" not in resp.headers
        chunks = await read_timed(resp)
    raw = b"".join(chunk for _, chunk in chunks)
    items = decode(raw)

    assert kinds(items) == ["token"] * 8 + ["comment"] * 2 + ["token"] * 16 + ["done"]
    assert items[8] == Item("comment", "keepalive")
    assert items[-1] == Item("done", "[DONE]")
    assert all(i.id is None for i in items)
    assert "".join(texts(items)) == " ".join(ANSWER.split()[:24])
    assert "—".encode() in raw  # a multi-byte character on the wire

    # The second part of the silence is quiet: no bytes at all, and the quiet
    # gap follows the last comment.
    arrivals = [at for at, _ in chunks]
    gap, at = max((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(arrivals)))
    assert gap >= 0.3
    before = b"".join(chunk for _, chunk in chunks[: at + 1])
    assert before.endswith(b": keepalive\n\n")
    assert stats.as_json() == counts(1, 1, 0, 0)


async def test_ids_are_opt_in_and_increasing(client):
    async with client.get("/", params={"ids": "1", "tokens": "5", "silence": "0"}) as resp:
        items = decode(await resp.read())
    assert kinds(items) == ["token"] * 5 + ["done"]
    assert [i.id for i in items] == ["1", "2", "3", "4", "5", "6"]
    assert kinds(items)[-1] == "done"


async def test_post_json_body_is_echoed_and_wins_over_query(client, stats):
    body = {"prompt": "héllo  there", "tokens": 6, "silence": 0, "mode": "normal"}
    async with client.post("/v1/chat?mode=error500", json=body) as resp:
        assert resp.status == 200
        items = decode(await resp.read())
    assert "".join(texts(items)) == 'You asked: "héllo there". Sure —'
    record = stats.records[-1]
    assert (record.method, record.path, record.mode, record.outcome) == (
        "POST",
        "/v1/chat",
        "normal",
        "finished",
    )
    assert json.loads(record.body) == body


async def test_openai_style_messages_give_the_prompt(client):
    body = {"messages": [{"role": "user", "content": "hi"}], "tokens": 3}
    async with client.post("/", json=body) as resp:
        assert "".join(texts(decode(await resp.read()))) == 'You asked: "hi".'


async def test_crash_cuts_the_connection_mid_body(client, stats):
    received = bytearray()
    async with client.get("/", params={"mode": "crash", "tokens": "9"}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await drain(resp, received)
    assert texts(decode(bytes(received))) == ["Sure", " —", " here"]
    assert stats.finished == 1


async def test_error500_is_a_json_error_before_any_stream(client, stats):
    async with client.get("/", params={"mode": "error500"}) as resp:
        assert resp.status == 500
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "error": {"type": "server_error", "message": "model overloaded"}
        }
    assert stats.as_json() == counts(1, 1, 0, 0)


async def test_garbage_sends_invalid_utf8_then_ends(client):
    async with client.get("/", params={"mode": "garbage"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        raw = await resp.read()  # ends cleanly
    assert b"data: \xff\xfe\xfa\n\n" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode()
    valid = raw[: raw.index(b"data: \xff")]
    assert texts(decode(valid)) == ["Sure", " —"]


async def test_noterm_ends_cleanly_without_a_terminal_event(client):
    async with client.get("/", params={"mode": "noterm", "tokens": "5"}) as resp:
        items = decode(await resp.read())  # decode() closes: no truncated event either
    assert kinds(items) == ["token"] * 5


async def test_slow_headers_wait_before_the_status_line(client):
    start = time.monotonic()
    params = {"mode": "slow-headers", "delay": "4", "silence": "0", "tokens": "3"}
    async with client.get("/", params=params) as resp:
        assert time.monotonic() - start >= 4 / SPEED * 0.9
        assert resp.status == 200
        items = decode(await resp.read())
    assert kinds(items) == ["token"] * 3 + ["done"]


@pytest.mark.parametrize("client", [False, True], indirect=True, ids=["polling", "cancelled"])
@pytest.mark.parametrize(
    ("params", "marker", "count"),
    [
        ({"mode": "hang"}, b"event: token", 1),
        # Leave after the second comment: 0.9 s of quiet follow (40 s at speed 1).
        ({"mode": "normal", "silence": "40"}, b": keepalive", 2),
    ],
    ids=["hang", "normal-quiet"],
)
async def test_client_gone_is_noticed_while_nothing_is_written(
    client, stats, params, marker, count
):
    async with client.get("/", params=params) as resp:
        received = b""
        while received.count(marker) < count:
            received += await resp.content.readany()
        assert stats.active == 1
        resp.close()
    left = time.monotonic()
    async with asyncio.timeout(1):
        await stats.wait_until(lambda s: s.client_gone == 1)
    assert time.monotonic() - left < 0.35  # POLL_STEP is 0.1 s
    async with client.get("/_stats") as resp:
        assert await resp.json() == counts(1, 0, 1, 0)
    assert stats.records[-1].outcome == "client_gone"


@pytest.mark.parametrize("client", [False, True], indirect=True, ids=["polling", "cancelled"])
async def test_client_gone_before_headers_is_noticed(client, stats):
    request = asyncio.create_task(client.get("/", params={"mode": "slow-headers", "delay": "400"}))
    async with asyncio.timeout(1):
        await stats.wait_until(lambda s: s.started == 1)
        request.cancel()
        await stats.wait_until(lambda s: s.client_gone == 1)
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_server_shutdown_ends_a_hanging_stream():
    runner = web.AppRunner(create_app(speed=SPEED))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stats = runner.app[STATS]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/", params={"mode": "hang"}) as resp,
        ):
            await resp.content.readany()
            async with asyncio.timeout(1):
                await runner.cleanup()
            rest = await resp.read()  # a clean end, no terminal event
    finally:
        await runner.cleanup()
    assert b"event:" not in rest
    assert stats.as_json() == counts(1, 1, 0, 0)


async def test_healthz_and_empty_stats(client):
    async with client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"
    async with client.get("/_stats") as resp:
        assert await resp.json() == counts(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("mode=bogus", None),
        ("tokens=many", None),
        ("tokens=-1", None),
        ("silence=nan", None),
        ("silence=inf", None),
        ("keepalive=0", None),
        ("ids=maybe", None),
        ("", b"{not json"),
        ("", b"[1, 2]"),
        ("", b'{"prompt": 3}'),
    ],
)
async def test_bad_parameters_are_a_400_json_error(client, query, body, stats):
    async with client.post(f"/?{query}", data=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request"
    assert stats.started == 0


def test_bad_speed_is_refused(capsys):
    with pytest.raises(ValueError, match="speed"):
        create_app(speed=0)
    with pytest.raises(SystemExit) as exc:
        main(["--speed", "0"])
    assert exc.value.code == 2
    assert "--speed" in capsys.readouterr().err


async def test_module_runs_prints_where_it_listens_and_stops_on_sigterm():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.examples.producer",
        "--port",
        "0",
        "--speed",
        "50",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(5):
            line = (await process.stdout.readline()).decode()
        url = line.split("listening on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "healthz") as resp,
        ):
            assert await resp.text() == "ok"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- resumable runs (Last-Event-ID, OpenAI's starting_after) -----------------------------


async def read_until_cut(resp) -> bytes:
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        await drain(resp, received)
    return bytes(received)


@pytest.mark.parametrize("cut_how", ["reset", "fin"])
async def test_a_resumable_run_goes_on_without_its_connection(client, stats, cut_how):
    params = {"resumable": "1", "tokens": "9", "silence": "0", "cut": "3", "cut_how": cut_how}
    async with client.get("/v1/chat", params=params) as resp:
        first = decode(await read_until_cut(resp))
    run = first[0].id.rsplit("-", 1)[0]
    assert [i.id for i in first] == [f"{run}-{n}" for n in (1, 2, 3)]
    # The answer is produced meanwhile, whether or not anyone reads it.
    async with asyncio.timeout(2):
        await stats.wait_until(lambda s: s.finished == 1)
    headers = {"Last-Event-ID": f"{run}-3"}
    async with client.get("/v1/chat", params=params, headers=headers) as resp:
        rest = decode(await resp.read())
    assert [i.id for i in rest] == [f"{run}-{n}" for n in range(4, 11)]
    assert kinds(rest) == ["token"] * 6 + ["done"]
    assert "".join(texts(first + rest)) == " ".join(ANSWER.split()[:9])
    assert stats.as_json() == counts(1, 1, 0, 0, resumed=1)
    assert stats.records[-1].resume_of == (run, 3)


async def test_a_stalled_connection_is_resumed_while_it_is_still_open(client, stats):
    params = {"resumable": "1", "tokens": "6", "silence": "0", "cut": "2", "cut_how": "stall"}
    async with client.get("/", params=params) as stalled:
        received = b""
        while received.count(b"\n\n") < 2:
            received += await stalled.content.readany()
        run = decode(received)[-1].id
        async with client.get("/", headers={"Last-Event-ID": run}) as resp:
            rest = decode(await resp.read())
        assert kinds(rest) == ["token"] * 4 + ["done"]
        with pytest.raises(asyncio.TimeoutError):  # the stalled one got nothing more
            async with asyncio.timeout(0.3):
                await stalled.content.readany()
    assert stats.resumed == 1


async def test_a_resume_may_repeat_events_before_the_asked_id(client):
    params = {"resumable": "1", "tokens": "5", "silence": "0", "cut": "4", "repeat": "2"}
    async with client.get("/", params=params) as resp:
        first = decode(await read_until_cut(resp))
    async with client.get("/", headers={"Last-Event-ID": first[-1].id}) as resp:
        rest = decode(await resp.read())
    assert [i.id for i in rest] == [i.id for i in first[2:]] + [
        first[0].id.replace("-1", f"-{n}") for n in (5, 6)
    ]


async def test_a_run_it_no_longer_has_is_a_404(client, stats):
    async with client.get("/", headers={"Last-Event-ID": "0123456789ab-4"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found"
    # An id of another form is no resume: the request starts a stream as before.
    async with client.get("/", params={"tokens": "1", "silence": "0"},
                          headers={"Last-Event-ID": "41"}) as resp:  # fmt: skip
        assert kinds(decode(await resp.read())) == ["token", "done"]
    assert stats.as_json() == counts(1, 1, 0, 0, misses=1)


async def test_the_responses_style_resumes_by_starting_after(client, stats):
    params = {"resumable": "1", "style": "responses", "tokens": "4", "silence": "0", "cut": "3"}
    async with client.post("/v1/responses", params=params) as resp:
        first = decode(await read_until_cut(resp))
    assert kinds(first) == ["response.created"] + ["response.output_text.delta"] * 2
    assert all(i.id is None for i in first)
    response_id = json.loads(first[0].data or "")["response"]["id"]
    query = {"stream": "true", "starting_after": "2"}
    async with client.get(f"/v1/responses/{response_id}", params=query) as resp:
        rest = decode(await resp.read())
    assert [json.loads(i.data or "")["sequence_number"] for i in rest] == [3, 4, 5]
    assert kinds(rest)[-1] == "response.completed"
    deltas = [json.loads(i.data or "")["delta"] for i in first[1:] + rest[:-1]]
    assert "".join(deltas) == " ".join(ANSWER.split()[:4])
    assert stats.resumed == 1


@pytest.mark.parametrize(
    "query",
    ["cut=2", "style=responses", "resumable=1&mode=crash", "resumable=1&cut_how=gently",
     "resumable=1&repeat=-1"],
)  # fmt: skip
async def test_bad_resumable_parameters_are_a_400(client, query):
    async with client.get(f"/?{query}") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request"
