"""Streams through a real nginx configured from deploy/nginx/sse-sidecar.conf.

Every nginx here runs the shipped snippet with `proxy_read_timeout 2s`:
(a) it cuts a producer that is silent for 5 s when it proxies it directly, and
(b) the same producer arrives intact through nginx -> sidecar (heartbeat 1 s);
(c) `sse-sidecar doctor` reads the sidecar's probe route through nginx and
reports the cut-off (buffering, compression and other chains: test_doctor_chains.py).
The probe route itself is also checked without nginx.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar, create_app
from sidecar.config import Config
from sidecar.sse import Decoder, Event
from tests.conftest import Script, ScriptedUpstream, make_config
from tests.e2e.nginx import ROOT, Nginx, start_nginx

DONE = b"event: done\ndata: [DONE]\n\n"
#: Three events, 5 s of silence (over nginx's 2 s read timeout), one more, done.
SILENT_FOR_5S = Script(
    [b"data: 1\n\n", 0.2, b"data: 2\n\n", 0.2, b"data: 3\n\n", 5.0, b"data: 4\n\n", DONE]
)
PROBE = "/_sse-sidecar/probe"

StartNginx = Callable[..., Awaitable[Nginx]]
StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[StartNginx]:
    started: list[Nginx] = []

    async def start(upstream: str, replace: Mapping[str, str] | None = None) -> Nginx:
        server = await start_nginx(tmp_path, upstream, read_timeout="2s", replace=replace)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def sidecar() -> AsyncIterator[StartSidecar]:
    """Start a Sidecar (its probe route is on unless the config says probe_path: null)."""
    started: list[Sidecar] = []

    async def start(config: Config) -> Sidecar:
        running = Sidecar(config)
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


def address(url: str) -> str:
    return url.removeprefix("http://")


def probe_config(heartbeat: float = 15.0, *, probe: bool = True) -> Config:
    """The probe needs no upstream; it reports the routes' heartbeat interval."""
    top = {} if probe else {"probe_path": None}
    return make_config("http://127.0.0.1:9", heartbeat={"interval": heartbeat}, top=top)


@dataclass
class Received:
    events: list[Event] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    ended: float = 0.0
    #: The response ended without its last chunk (nginx cut it).
    truncated: bool = False

    def kinds(self) -> list[str]:
        return [e.event or "message" for e in self.events]

    def data(self, kind: str = "message") -> list[str | None]:
        return [e.data for e in self.events if (e.event or "message") == kind]


async def read_events(url: str, limit: float = 15.0) -> Received:
    """Read a stream to its end, noting when each event arrived (seconds from the request)."""
    loop = asyncio.get_running_loop()
    got = Received()
    decoder = Decoder()
    start = loop.time()
    async with aiohttp.ClientSession() as http, asyncio.timeout(limit):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            try:
                async for chunk in resp.content.iter_any():
                    for item in decoder.feed(chunk):
                        if isinstance(item, Event):
                            got.events.append(item)
                            got.times.append(loop.time() - start)
            except aiohttp.ClientPayloadError:
                got.truncated = True
    got.ended = loop.time() - start
    return got


# --- (a) and (b): a silent producer, directly and through the sidecar --------------------------


@pytest.mark.nginx
async def test_nginx_cuts_a_silent_producer_it_proxies_directly(
    upstream: ScriptedUpstream, nginx: StartNginx
) -> None:
    upstream.script = SILENT_FOR_5S
    front = await nginx(address(upstream.url))
    got = await read_events(front.url + "/stream")
    assert got.data() == ["1", "2", "3"]
    assert "done" not in got.kinds()
    assert got.truncated  # nginx closed the client connection mid-response
    silence = got.ended - got.times[-1]
    assert 1.8 <= silence <= 3.0, silence
    assert "upstream timed out" in front.log()


@pytest.mark.nginx
async def test_heartbeats_carry_a_silent_producer_through_nginx(
    upstream: ScriptedUpstream, nginx: StartNginx, sidecar: StartSidecar
) -> None:
    upstream.script = SILENT_FOR_5S
    running = await sidecar(make_config(upstream.url, heartbeat={"interval": "1s"}))
    front = await nginx(f"127.0.0.1:{running.port}")
    got = await read_events(front.url + "/s")
    assert not got.truncated
    assert got.data() == ["1", "2", "3", "4"]
    kinds = got.kinds()
    assert kinds[-1] == "done"
    three, four = kinds.index("message", 2), len(kinds) - 2
    assert kinds[three + 1 : four] == ["keepalive"] * (four - three - 1)
    assert four - three - 1 >= 4  # a keepalive each second of the 5 s silence
    gaps = [b - a for a, b in zip(got.times, got.times[1:], strict=False)]
    assert max(gaps) < 1.5
    assert "upstream timed out" not in front.log()


# --- (c) doctor through nginx to the sidecar's probe -------------------------------------------

DOCTOR = "import sys; from sidecar.doctor import main; sys.exit(main(sys.argv[1:]))"
FINDING = re.compile(r"^  (\w+):\s+(ok|PROBLEM|note|UNTESTED)\s+(.*)$", re.MULTILINE)


@dataclass
class DoctorRun:
    code: int
    out: str
    err: str

    def finding(self, topic: str) -> tuple[str, str]:
        found = {m[1]: (m[2], m[3]) for m in FINDING.finditer(self.out)}
        assert topic in found, self.out + self.err
        return found[topic]


async def doctor(*args: str) -> DoctorRun:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DOCTOR,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return DoctorRun(proc.returncode, out.decode(), err.decode())


@pytest.mark.nginx
async def test_doctor_through_the_shipped_snippet_finds_the_cut_off(
    nginx: StartNginx, sidecar: StartSidecar
) -> None:
    running = await sidecar(probe_config(15.0))
    front = await nginx(f"127.0.0.1:{running.port}")
    # Events 500 ms apart: nginx re-arms its read timer only when that moves it
    # by over 300 ms, so faster events would make the 2 s cut-off look shorter.
    args = (front.url + PROBE, "--events", "5", "--interval", "0.5", "--max-silence", "6")
    probe_said, told = await asyncio.gather(doctor(*args), doctor(*args, "--heartbeat", "1s"))

    verdict, text = probe_said.finding("buffering")
    assert verdict == "ok"
    gap = re.match(r"not buffered: events arrived (\d+) ms apart as sent", text)
    assert gap is not None, text
    assert abs(int(gap[1]) - 500) <= 30, text  # timers on a busy machine fire a little off
    assert probe_said.finding("compression") == ("ok", "not compressed")
    verdict, text = probe_said.finding("silence")
    cut = re.search(r"closed the stream after ([\d.]+) s without data", text)
    assert cut is not None, text
    assert 1.8 <= float(cut[1]) <= 2.5
    verdict, text = probe_said.finding("heartbeat")
    assert verdict == "PROBLEM"
    assert text.startswith("15 s is too long: this chain cuts silent streams after")
    assert "heartbeat.interval to 1s or less" in text
    assert "X-Accel-Buffering absent" in probe_said.finding("headers")[1]
    assert probe_said.code == 1
    assert "result: 1 problem(s) found (heartbeat)" in probe_said.out

    verdict, text = told.finding("heartbeat")
    assert (verdict, text[:24]) == ("ok", "1 s is short enough for ")
    assert told.code == 0, told.out
    assert "Traceback" not in probe_said.err + told.err


@pytest.mark.nginx
async def test_doctor_without_a_probe_route_says_so(
    nginx: StartNginx, sidecar: StartSidecar
) -> None:
    running = await sidecar(probe_config(probe=False))
    front = await nginx(f"127.0.0.1:{running.port}")
    run = await doctor(front.url + PROBE)
    assert run.code == 2
    assert run.out == ""
    assert f"{PROBE}?" in run.err
    assert "answered 404 Not Found" in run.err
    assert "Traceback" not in run.err


# --- the probe route itself, without nginx -----------------------------------------------------


async def test_probe_sends_stream_headers_a_burst_then_silence(sidecar: StartSidecar) -> None:
    running = await sidecar(probe_config(2.5))
    url = f"http://127.0.0.1:{running.port}{PROBE}?events=3&interval=0.1&silence=0.5&size=10"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache, no-transform"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Length" not in resp.headers
        body = await resp.content.read()
    # The comment line comes right after the probe event, so doctor can tell it was stripped.
    assert body.split(b"\n\n")[1] == b": sse-sidecar probe comment"
    got = await read_events(url)
    assert got.kinds() == ["probe", "tick", "tick", "tick", "probe_end"]
    probe = json.loads(got.events[0].data or "")
    assert probe["heartbeat_interval"] == 2.5
    assert probe["comment"] is True
    assert (probe["events"], probe["interval"], probe["silence"]) == (3, 0.1, 0.5)
    ticks = [json.loads(e.data or "") for e in got.events[1:4]]
    assert [t["n"] for t in ticks] == [0, 1, 2]
    assert all(t["pad"] == "x" * 10 for t in ticks)
    assert ticks[2]["sent"] - ticks[0]["sent"] == pytest.approx(0.2, abs=0.05)
    assert got.times[4] - got.times[3] == pytest.approx(0.5, abs=0.1)


async def test_probe_runs_a_few_at_once_and_refuses_more(sidecar: StartSidecar) -> None:
    from sidecar.probe import MAX_CONCURRENT

    running = await sidecar(probe_config(15.0))
    url = f"http://127.0.0.1:{running.port}{PROBE}?events=1&silence=60"
    async with aiohttp.ClientSession() as http:
        held = [await http.get(url) for _ in range(MAX_CONCURRENT)]
        for resp in held:
            await resp.content.readuntil(b"\n\n")
        async with http.get(url) as refused:
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == "probe_busy"
        held[0].close()
        await asyncio.sleep(0.3)  # the probe notices within 0.1 s
        async with http.get(url) as again:
            assert again.status == 200
        for resp in held[1:]:
            resp.close()


@pytest.mark.parametrize("query", ["events=x", "interval=-1", "silence=nan", "size=1.5"])
async def test_probe_refuses_bad_parameters(sidecar: StartSidecar, query: str) -> None:
    running = await sidecar(probe_config(15.0))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{running.port}{PROBE}?{query}") as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["code"] == "bad_probe_parameter"
    assert query.split("=", maxsplit=1)[0] in body["error"]["message"]


async def test_probe_stops_soon_after_the_client_leaves() -> None:
    """Without handler cancellation (aiohttp's default) the probe notices by itself."""
    ended: list[float] = []
    loop = asyncio.get_running_loop()

    @web.middleware
    async def note_end(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            ended.append(loop.time())

    app = create_app(probe_config())
    app.middlewares.append(note_end)
    runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"http://127.0.0.1:{port}{PROBE}?events=1&silence=60")
            await resp.content.readuntil(b"\n\n")  # the probe event: the stream is on
            resp.close()  # drop the connection during the silence
            left = loop.time()
        async with asyncio.timeout(2):
            while not ended:
                await asyncio.sleep(0.02)
        assert ended[0] - left < 0.5
    finally:
        await runner.cleanup()
