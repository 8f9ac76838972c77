"""Paths and queries reach the upstream as the client meant them, or not at all.

The prefix is matched on the decoded path and cut segment by segment; the
tail and the query go upstream byte for byte; whatever climbs out of the
prefix once fully decoded is a 400 before any upstream request.
"""

from __future__ import annotations

import json

import pytest

from tests.adversarial.conftest import RawUpstream, get, raw_request
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial

DONE_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 21\r\n\r\n"
    b"event: done\ndata: x\n\n"
)


async def done(reader, writer) -> None:
    writer.write(DONE_STREAM)
    await writer.drain()


def request_line(raw_upstream: RawUpstream) -> str:
    (head,) = raw_upstream.heads
    return head.split(b"\r\n", 1)[0].decode("latin-1")


async def start(start_sidecar, raw_upstream, path: str = "/raw", base: str = "/raw"):
    raw_upstream.handler = done
    config = make_config(raw_upstream.url + base)
    config = type(config)(**{**config.__dict__, "routes": (
        type(config.routes[0])(**{**config.routes[0].__dict__, "path": path}),
    )})  # fmt: skip
    return await start_sidecar(config)


@pytest.mark.parametrize(
    "query",
    [
        "prompt=hello%20world&z=caf%C3%A9",
        "a=%2520&b=%zz&c=a+b&d=%2F%3F%23",  # double-encoded, invalid, plus, reserved
        "q=%E2%80%A8&empty=&=x&flag",
    ],
)
async def test_query_reaches_the_upstream_byte_for_byte(raw_upstream, start_sidecar, query):
    sc = await start(start_sidecar, raw_upstream)
    resp = await raw_request(sc.sidecar.port, get(f"/raw/x?{query}"))
    assert resp.status == 200, resp.raw[:200]
    assert request_line(raw_upstream) == f"GET /raw/x?{query} HTTP/1.1"


@pytest.mark.parametrize(
    ("sent", "upstream_path"),
    [
        ("/r%61w/x", "/raw/x"),  # was /raw1w/x
        ("/%72%61%77/-admin/echo", "/raw/-admin/echo"),  # was /raw%61%77/-admin/echo
        ("/raw/a%2Fb", "/raw/a%2Fb"),  # an encoded slash in the tail stays encoded
        ("/raw/caf%C3%A9", "/raw/caf%C3%A9"),
        ("/raw", "/raw"),
    ],
)
async def test_prefix_is_cut_on_the_decoded_path(raw_upstream, start_sidecar, sent, upstream_path):
    sc = await start(start_sidecar, raw_upstream)
    resp = await raw_request(sc.sidecar.port, get(sent))
    assert resp.status == 200, resp.raw[:200]
    assert request_line(raw_upstream) == f"GET {upstream_path} HTTP/1.1"


@pytest.mark.parametrize(
    "sent",
    [
        "/v1/chat/..%2F..%2Fadmin",
        "/v1/chat/%2e%2e%2fadmin",
        "/v1/chat/..%5cadmin",
        "/v1/chat/x%5C..%5Cadmin",
        "/v1/chat/%252e%252e/admin",  # double-encoded ..
        "/v1/chat/./x",
        "/v1/chat/%2E/x",
    ],
)
async def test_paths_that_climb_or_hide_the_prefix_are_refused(raw_upstream, start_sidecar, sent):
    prefix = "/raw" if sent.startswith("/raw") else "/v1/chat"
    sc = await start(start_sidecar, raw_upstream, path=prefix, base="/api")
    resp = await raw_request(sc.sidecar.port, get(sent))
    assert resp.status == 400, resp.raw[:300]
    assert json.loads(resp.body)["error"]["code"] == "bad_path"
    assert raw_upstream.heads == []


@pytest.mark.parametrize("sent", ["/raw%2Fx", "/raw%2F..%2Fadmin"])
async def test_an_encoded_slash_after_the_prefix_matches_no_route(
    raw_upstream, start_sidecar, sent
):
    sc = await start(start_sidecar, raw_upstream, path="/raw", base="/api")
    resp = await raw_request(sc.sidecar.port, get(sent))
    assert resp.status in (400, 404)
    assert raw_upstream.heads == []
