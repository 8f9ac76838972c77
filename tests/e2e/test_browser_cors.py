"""A page on another loopback origin streams through the sidecar, as browsers enforce CORS.

The page is served from 127.0.0.1:<page port>, the sidecar listens on
127.0.0.1:<its port>: two origins, one site, so the page's cookie goes along
when credentials are asked for. Headless Chromium enforces CORS for real.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import Config, from_mapping
from tests.conftest import Script, ScriptedUpstream

PAGE = (Path(__file__).parent / "cors_page.html").read_bytes()
TOKENS = ["Hello", " from", " another", " origin"]
TIMEOUT = 45.0


class PageServer:
    """The page's own origin: the page, and the place it reports to."""

    def __init__(self) -> None:
        self.report: asyncio.Future[dict[str, Any]] | None = None
        self.runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> None:
        self.report = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/page.html", self._page)
        app.router.add_post("/collect", self._collect)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"

    async def _page(self, _: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    async def _collect(self, request: web.Request) -> web.Response:
        assert self.report is not None
        if not self.report.done():
            self.report.set_result(json.loads(await request.read()))
        return web.json_response({"ok": True})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def answer(_: web.Request) -> Script:
    steps: list[bytes | float | str] = []
    for token in TOKENS:
        steps += [f"event: token\ndata: {json.dumps({'text': token})}\n\n".encode(), 0.05]
    steps.append(b"event: done\ndata: [DONE]\n\n")
    return Script(steps)


def config(upstream_url: str, page_origin: str) -> Config:
    return from_mapping(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "drain_timeout": "1s",
            "routes": [
                {
                    "name": "es",
                    "path": "/es",
                    "upstream": upstream_url + "/es",
                    "session": {"from": "cookie:sid"},
                    "cors": {"origins": [page_origin], "credentials": True},
                },
                {
                    "name": "chat",
                    "path": "/chat",
                    "upstream": upstream_url + "/chat",
                    "cors": {"origins": [page_origin], "headers": ["Content-Type"]},
                },
                {
                    "name": "closed",
                    "path": "/closed",
                    "upstream": upstream_url + "/closed",
                    "cors": {"origins": ["http://elsewhere.example"]},
                },
            ],
        }
    )


@pytest.mark.browser
async def test_a_page_on_another_origin_streams_through_the_sidecar(
    upstream: ScriptedUpstream, start_sidecar, launch_browser
):
    upstream.script = answer
    page = PageServer()
    await page.start()
    try:
        sc = await start_sidecar(config(upstream.url, page.origin))
        browser = launch_browser(
            f"{page.origin}/page.html?sidecar=http://127.0.0.1:{sc.sidecar.port}"
        )
        assert page.report is not None
        try:
            report = await asyncio.wait_for(asyncio.shield(page.report), TIMEOUT)
        except TimeoutError:
            pytest.fail(f"no report from the page; chromium log:\n{browser.log_tail()}")
    finally:
        await page.stop()

    assert "error" not in report, report
    assert report["eventSource"] == {"tokens": TOKENS, "end": "done"}, report
    assert report["post"]["status"] == 200
    assert "event: done" in report["post"]["text"]
    assert report["post"]["requestId"]  # exposed to the page
    assert report["refused"] == "blocked"
    by_path = {r.path: r for r in upstream.requests}
    assert by_path["/es"].headers.get("Cookie") == "sid=cookie-user-1"  # credentials went along
    assert by_path["/chat"].headers.get("X-Session-Key") == "fetch-1"
    assert "/closed" not in by_path  # its preflight was refused: nothing went upstream
    text = await sc.metrics()
    assert 'sse_sidecar_cors_preflights_total{result="allowed",route="chat"} 1.0' in text
    assert 'sse_sidecar_cors_preflights_total{result="refused",route="closed"} 1.0' in text
