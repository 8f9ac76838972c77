"""`sse-sidecar doctor` through real front chains: each configured to show one verdict.

nginx, HAProxy and Caddy run on loopback in front of a real sidecar, and a
small relay stands in for a load balancer's connection age cap. Silences are
short (a second or two) so the whole file stays well inside CI's budget.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from sidecar.app import Sidecar
from tests.e2e.agecap import AgeCap
from tests.e2e.nginx import BUFFERING_ON, GZIP_ON, Nginx, start_nginx
from tests.e2e.proxies import Proxy, caddy_root_ca, start_caddy, start_haproxy
from tests.e2e.test_nginx import PROBE, doctor, probe_config

Fronts = Callable[..., Awaitable[Nginx | Proxy]]
Sidecars = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecars]:
    started: list[Sidecar] = []

    async def start(heartbeat: float = 15.0) -> Sidecar:
        running = Sidecar(probe_config(heartbeat))
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Fronts]:
    """Start a front of one kind ("nginx", "haproxy", "caddy") before ``upstream``."""
    started: list[Nginx | Proxy] = []

    async def start(kind: str, upstream: str, **conf: object) -> Nginx | Proxy:
        server: Nginx | Proxy
        if kind == "nginx":
            server = await start_nginx(tmp_path, upstream, **conf)  # type: ignore[arg-type]
        elif kind == "haproxy":
            server = await start_haproxy(tmp_path, upstream, **conf)  # type: ignore[arg-type]
        else:
            server = await start_caddy(tmp_path, upstream, **conf)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def at(url: str) -> str:
    return url.removeprefix("http://").removeprefix("https://")


STAMPS = "by the probe's send stamps"


@pytest.mark.nginx
async def test_nginx_buffering_is_found_and_named(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar()
    nginx = await front("nginx", f"127.0.0.1:{running.port}", replace=BUFFERING_ON)
    run = await doctor(nginx.url, "--events", "8", "--max-silence", "1", "--heartbeat", "0.5")
    verdict, text = run.finding("buffering")
    assert verdict == "PROBLEM"
    # Held until the probe ended: every event late, against the send stamps (one clock here).
    # The least late (the last one sent) may be under a second, which prints in ms.
    late = r"[\d.]+ m?s"
    assert re.match(rf"buffered: 8 of 8 events arrived late \({late} to {late}, {STAMPS}", text)
    assert "nginx (Server: nginx/1.22" in text
    assert "proxy_buffering off" in text
    assert run.code == 1


@pytest.mark.nginx
async def test_nginx_gzip_is_found_and_named(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar()
    nginx = await front("nginx", f"127.0.0.1:{running.port}", replace=GZIP_ON)
    run = await doctor(nginx.url, "--events", "5", "--max-silence", "1", "--heartbeat", "0.5")
    verdict, text = run.finding("compression")
    assert verdict == "PROBLEM"
    assert text.startswith("compressed: Content-Encoding: gzip.")
    assert "nginx (Server: nginx/1.22" in text
    assert "gzip_types" in text
    assert run.code == 1


@pytest.mark.nginx
async def test_nginx_idle_cut_is_told_from_an_age_cap(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar(15.0)
    nginx = await front("nginx", f"127.0.0.1:{running.port}", read_timeout="1s")
    run = await doctor(nginx.url, "--events", "4", "--interval", "0.5", "--max-silence", "4")
    verdict, text = run.finding("silence")
    cut = re.search(r"closed the stream after ([\d.]+) s without data \(an idle cut: ", text)
    assert cut is not None, run.out
    assert 0.8 <= float(cut[1]) <= 1.5
    verdict, text = run.finding("heartbeat")
    assert verdict == "PROBLEM"
    assert "set heartbeat.interval to 0.5s or less" in text
    assert "nginx (Server: nginx/1.22" in text
    assert "proxy_read_timeout" in text
    assert run.code == 1


@pytest.mark.haproxy
async def test_haproxy_idle_cut_names_timeout_server(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar(15.0)
    haproxy = await front("haproxy", f"127.0.0.1:{running.port}", server_timeout="1500ms")
    run = await doctor(haproxy.url, "--events", "4", "--interval", "0.5", "--max-silence", "5")
    verdict, text = run.finding("silence")
    cut = re.search(r"closed the stream after ([\d.]+) s without data \(an idle cut: ", text)
    assert cut is not None, run.out
    assert 1.3 <= float(cut[1]) <= 2.0
    verdict, text = run.finding("heartbeat")
    assert verdict == "PROBLEM"
    assert "timeout server" in text
    assert run.code == 1


@pytest.mark.haproxy
async def test_haproxy_defaults_delay_every_event(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar(0.5)
    haproxy = await front("haproxy", f"127.0.0.1:{running.port}")
    run = await doctor(haproxy.url, "--events", "8", "--max-silence", "1")
    assert run.finding("buffering")[0] == "ok", run.out
    verdict, text = run.finding("delay")
    assert verdict == "PROBLEM", run.out
    late = re.match(r"every event arrived at least (\d+) ms late", text)
    assert late is not None, text
    assert int(late[1]) >= 150
    assert "option http-no-delay" in text
    assert run.code == 1

    fixed = await front("haproxy", f"127.0.0.1:{running.port}", extra="  option http-no-delay\n")
    run = await doctor(fixed.url, "--events", "8", "--max-silence", "1")
    assert run.finding("delay")[0] == "ok", run.out
    assert run.code == 0, run.out


async def test_an_age_cap_while_events_flow(sidecar: Sidecars) -> None:
    running = await sidecar(0.5)
    cap = AgeCap(running.port, 2.0)
    await cap.start()
    try:
        run = await doctor(cap.url, "--events", "20", "--interval", "0.25", "--max-silence", "2")
    finally:
        await cap.stop()
    verdict, text = run.finding("silence")
    assert verdict == "PROBLEM", run.out
    age = re.match(r"age cap: the chain closes a stream about ([\d.]+) s after it opened", text)
    assert age is not None, text
    assert 1.8 <= float(age[1]) <= 2.4
    assert "while events were still arriving" in text
    assert "resume.enabled: true" in text
    assert run.finding("heartbeat")[1].startswith("cannot help")
    assert "heartbeat.interval" not in run.out
    assert run.code == 1


async def test_an_age_cap_in_the_silence_needs_a_second_burst(sidecar: Sidecars) -> None:
    running = await sidecar(0.5)
    cap = AgeCap(running.port, 2.5)
    await cap.start()
    try:
        run = await doctor(cap.url, "--events", "5", "--interval", "0.25", "--max-silence", "4")
    finally:
        await cap.stop()
    verdict, text = run.finding("silence")
    assert verdict == "PROBLEM", run.out
    assert text.startswith("age cap: the chain closes a stream about 2.")
    assert "cut at the same age" in text
    assert "second probe" in run.err
    assert run.code == 1


@pytest.mark.caddy
async def test_caddy_write_timeout_is_an_age_cap_of_caddy(sidecar: Sidecars, front: Fronts) -> None:
    # Go's write timeout runs from the request: it caps the whole response.
    running = await sidecar(0.5)
    write_2s = "    timeouts {\n      write 2s\n    }\n"
    caddy = await front("caddy", f"127.0.0.1:{running.port}", server=write_2s)
    run = await doctor(caddy.url, "--events", "20", "--max-silence", "2")
    verdict, text = run.finding("silence")
    assert verdict == "PROBLEM", run.out
    assert re.match(r"age cap: the chain closes a stream about (1\.[89]|2\.[0-4]) s after", text)
    assert "Caddy (Server: Caddy): servers { timeouts { write } }" in text
    assert run.finding("heartbeat")[1].startswith("cannot help")
    assert run.code == 1


@pytest.mark.nginx
@pytest.mark.haproxy
async def test_two_proxies_the_smaller_cut_and_its_hop(sidecar: Sidecars, front: Fronts) -> None:
    # client -> HAProxy (idle 5 s) -> nginx (idle 1 s) -> sidecar: nginx cuts first.
    running = await sidecar(15.0)
    nginx = await front("nginx", f"127.0.0.1:{running.port}", read_timeout="1s")
    haproxy = await front(
        "haproxy", at(nginx.url), server_timeout="5s", extra="  option http-no-delay\n"
    )
    run = await doctor(haproxy.url, "--events", "4", "--interval", "0.5", "--max-silence", "4")
    verdict, text = run.finding("silence")
    cut = re.search(r"closed the stream after ([\d.]+) s without data \(an idle cut", text)
    assert cut is not None, run.out
    assert 0.8 <= float(cut[1]) <= 1.5
    verdict, text = run.finding("heartbeat")
    assert verdict == "PROBLEM"
    assert "nginx (Server: nginx/1.22" in text
    assert run.code == 1


@pytest.mark.caddy
async def test_a_clean_chain_over_tls_with_http2(sidecar: Sidecars, front: Fronts) -> None:
    running = await sidecar(0.5)
    caddy = await front("caddy", f"127.0.0.1:{running.port}", tls=True)
    assert isinstance(caddy, Proxy)
    args = ("--events", "5", "--max-silence", "1.5")
    untrusted = await doctor(caddy.url, *args)
    assert untrusted.code == 2
    assert "--cacert" in untrusted.err
    run, insecure = await asyncio.gather(
        doctor(caddy.url, *args, "--cacert", str(caddy_root_ca(caddy))),
        doctor(caddy.url, *args, "--insecure"),
    )
    for each in (run, insecure):
        assert each.code == 0, each.out + each.err
        assert each.finding("http2")[0] == "ok"
        assert each.finding("http2")[1].startswith("offered (ALPN h2)")
    assert run.finding("buffering")[0] == "ok"
    assert run.finding("delay")[0] == "ok"
    assert run.finding("comments") == ("ok", "passed: the probe's comment line arrived")
    assert "front: Caddy" in run.finding("headers")[1]
    assert run.out.endswith("result: no problem found\n")


@pytest.mark.caddy
async def test_caddy_over_plain_http_explains_the_connection_limit(
    sidecar: Sidecars, front: Fronts
) -> None:
    running = await sidecar(0.5)
    caddy = await front("caddy", f"127.0.0.1:{running.port}")
    run = await doctor(caddy.url, "--events", "4", "--max-silence", "1")
    verdict, text = run.finding("http2")
    assert verdict == "note"
    assert text.startswith("plain http (the front ")
    assert "at most 6 HTTP/1.1 connections per origin" in text
    assert run.code == 0, run.out


async def test_a_timeout_shorter_than_the_test_could_not_test(sidecar: Sidecars) -> None:
    running = await sidecar(0.5)
    url = f"http://127.0.0.1:{running.port}"
    run = await doctor(url, "--events", "3", "--max-silence", "5", "--timeout", "2")
    assert run.code == 2, run.out
    assert run.finding("silence")[0] == "UNTESTED"
    assert "result: could not test (silence)" in run.out
    assert "shorter than the test" in run.err


async def test_busy_probes_get_their_own_hint(sidecar: Sidecars) -> None:
    running = await sidecar(0.5)
    url = f"http://127.0.0.1:{running.port}{PROBE}?events=1&silence=10"
    async with aiohttp.ClientSession() as http:
        held = [await http.get(url) for _ in range(4)]
        try:
            run = await doctor(f"http://127.0.0.1:{running.port}", "--max-silence", "1")
        finally:
            for resp in held:
                resp.close()
    assert run.code == 2
    assert "answered 503" in run.err
    assert "try again shortly" in run.err
    assert "is the probe route on" not in run.err
