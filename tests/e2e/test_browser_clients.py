"""Tested clients in a real browser: Chromium's EventSource and the README's fetch() parser.

The page (tests/e2e/matrix.html) runs both over each case of a raw producer,
once straight from the producer and once through the sidecar, and posts what
each saw. Through the sidecar every client must get every producer event, no
empty one, exactly one terminal event, last, and the reason on a crash.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import from_mapping
from tests.conftest import Script
from tests.e2e.test_clients_matrix import DONE, RAW, TERMINAL, TOKENS

PAGE = (Path(__file__).parent / "matrix.html").read_bytes()
CASES = ["crlf", "cr", "split", "pings", "crash"]


def producer(request: web.Request) -> Script:
    if request.path.endswith("/matrix.html"):
        return Script([PAGE], content_type="text/html")
    if request.path.endswith("/collect"):
        return Script([b"{}"], content_type="application/json")
    return RAW[request.query["case"]]


def report_of(upstream, which: str) -> dict[str, Any] | None:
    for r in upstream.requests:
        if r.path == f"/collect-{which}":
            return json.loads(r.body)  # type: ignore[no-any-return]
    return None


async def run_page(upstream, launch_browser, url: str, which: str) -> dict[str, Any]:
    browser = launch_browser(url)
    async with asyncio.timeout(60):
        while report_of(upstream, which) is None:
            if not browser.alive():
                pytest.fail(f"chromium exited early:\n{browser.log_tail()}")
            await asyncio.sleep(0.05)
    report = report_of(upstream, which)
    assert report is not None
    return report


def producer_events(events: list[list[str]]) -> list[tuple[str, str]]:
    return [(k, d) for k, d in events if k != "keepalive"]


@pytest.mark.browser
async def test_eventsource_and_fetch_directly_and_through_the_sidecar(
    upstream, start_sidecar, launch_browser
):
    upstream.script = producer
    cases = ",".join(CASES)
    direct = await run_page(
        upstream,
        launch_browser,
        f"{upstream.url}/matrix.html?stream=/x&cases={cases}&collect=/collect-direct",
        "direct",
    )
    sc = await start_sidecar(
        from_mapping(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "admin": {"host": "127.0.0.1", "port": 0},
                "drain_timeout": "1s",
                "routes": [
                    {"name": "page", "path": "/app", "upstream": upstream.url},
                    {"name": "s", "path": "/s", "upstream": upstream.url + "/x",
                     "stream": {"retry": "1s"}},
                ],
            }
        )
    )  # fmt: skip
    through = await run_page(
        upstream,
        launch_browser,
        f"{sc.url}/app/matrix.html?stream=/s&cases={cases}&collect=/app/collect-through",
        "through",
    )
    for case in CASES:
        for client in ("eventsource", "fetch"):
            seen = through[case][client]
            events = seen["events"]
            assert all(data for _, data in events), (case, client, events)  # nothing empty
            terminals = [i for i, (kind, _) in enumerate(events) if kind in TERMINAL]
            assert terminals == [len(events) - 1], (case, client, events)
            got = producer_events(events)
            if case == "crash":
                assert got[:2] == TOKENS[:2], (client, got)
                assert json.loads(got[-1][1])["code"] == "upstream_disconnected"
                # directly: a drop without a reason (EventSource would retry forever)
                assert direct[case][client]["note"] in ("dropped", "broken", "closed")
                assert not any(k in TERMINAL for k, _ in direct[case][client]["events"])
            else:
                assert got == [*TOKENS, DONE], (case, client, got)
                direct_got = producer_events(direct[case][client]["events"])
                if client == "fetch" and case in ("crlf", "cr", "pings"):
                    # The README's parser splits on "\n\n" and reads every block as
                    # an event: straight from a CRLF or CR producer it finds none, and
                    # comment pings become empty messages; through the sidecar, neither.
                    assert direct_got != [*TOKENS, DONE], (case, direct_got)
                else:
                    assert direct_got == [*TOKENS, DONE], (case, client, direct_got)
