"""The demo page a person can watch, driven in headless Chromium.

The example producer serves the page (``/demo``); the sidecar, with the routes
of config/sidecar.yaml, puts page and stream on one origin. The page's
``?auto=1`` mode presses its own buttons: a full answer, a dropped connection
mid-answer (then resumed with ``?last_event_id=``), a stop, a producer crash,
and POSTs what it showed to a collector the test runs. Then a second Chromium
takes a screenshot of the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from sidecar.config import Config, from_mapping
from sidecar.examples.producer import DEFAULT_TOKENS, _answer_tokens, create_app
from tests.e2e.conftest import CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parents[2]
# The 20 s "thinking" silence takes 2 s; tokens 5 ms each.
SPEED = 10.0
TIMEOUT = 30.0
ANSWER_TEXT = "".join(_answer_tokens("", DEFAULT_TOKENS))


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def producer_url() -> AsyncIterator[str]:
    async for url in serve(create_app(speed=SPEED)):
        yield url


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, asyncio.Queue[dict[str, Any]]]]:
    reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def collect(request: web.Request) -> web.Response:
        reports.put_nowait(json.loads(await request.read()))
        return web.Response(text="ok", headers={"Access-Control-Allow-Origin": "*"})

    app = web.Application()
    app.router.add_post("/collect", collect)
    async for url in serve(app):
        yield url + "/collect", reports


def shipped_config(producer_url: str) -> Config:
    """config/sidecar.yaml on free loopback ports, in front of ``producer_url``."""
    data = yaml.safe_load((ROOT / "config" / "sidecar.yaml").read_text())
    data["listen"] = {"host": "127.0.0.1", "port": 0}
    data["admin"] = {"host": "127.0.0.1", "port": 0}
    data["drain_timeout"] = "1s"
    for route in data["routes"]:
        route["upstream"] = route["upstream"].replace("http://127.0.0.1:8000", producer_url)
    return from_mapping(data, environ={})


async def screenshot(chromium: str, url: str, root: Path) -> Path:
    """A PNG of ``url`` once loaded (its answer starting), from a Chromium of its own.

    Run without blocking: the sidecar and producer serve it from this loop."""
    home = root / "home"
    home.mkdir(parents=True)
    png = root / "demo.png"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    proc = await asyncio.create_subprocess_exec(
        *[
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={root / 'profile'}",
            f"--screenshot={png}",
            "--window-size=900,700",
            url,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group, ended as one
    )
    try:
        async with asyncio.timeout(15):
            await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return png


@pytest.mark.browser
async def test_demo_page_streams_resumes_stops_and_shows_a_crash(
    producer_url, collector, start_sidecar, launch_browser, chromium, tmp_path
):
    report_url, reports = collector
    sc = await start_sidecar(shipped_config(producer_url))
    page = f"{sc.url}/demo"
    async with sc.http.get(page) as resp:  # the page passes through the sidecar
        assert resp.status == 200
        assert "EventSource" in await resp.text()

    browser = launch_browser(f"{page}?auto=1&report={report_url}")
    try:
        async with asyncio.timeout(TIMEOUT):
            report = await reports.get()
    except TimeoutError:
        pytest.fail(f"no report from the page; chromium log:\n{browser.log_tail()}")

    assert report["full"] == ANSWER_TEXT
    resumed = report["resumed"]
    assert resumed["end"] == "done"
    assert resumed["opens"] == 2  # dropped once, resumed once
    assert resumed["text"] == ANSWER_TEXT  # nothing lost, nothing doubled
    assert "stopped" in report["stopped"]
    assert "upstream_disconnected" in report["crashed"]

    png = await screenshot(chromium, f"{page}?auto=1", tmp_path / "shot")
    assert png.exists()
    assert png.stat().st_size > 0
