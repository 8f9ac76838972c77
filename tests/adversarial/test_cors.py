"""Cross-origin requests: preflights, Allow-* headers on every response, refused origins."""

from __future__ import annotations

import json

import pytest

from tests.adversarial.conftest import RawUpstream, get, metric, raw_request
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial

APP = "http://app.example:3000"
CORS = {"origins": [APP], "credentials": True, "headers": ["X-Trace"], "max_age": "10m"}


def upstream_with(*extra: bytes):
    async def handler(reader, writer):
        body = b"event: done\ndata: x\n\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + b"".join(extra)
            + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()

    return handler


def preflight(origin: str, method: str = "POST", headers: str = "x-session-key") -> bytes:
    return (
        f"OPTIONS /s HTTP/1.1\r\nHost: sidecar.example\r\nOrigin: {origin}\r\n"
        f"Access-Control-Request-Method: {method}\r\n"
        f"Access-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
    ).encode()


async def test_an_allowed_preflight_is_answered_by_the_sidecar(
    raw_upstream: RawUpstream, start_sidecar
):
    sc = await start_sidecar(make_config(raw_upstream.url, cors=CORS))
    resp = await raw_request(sc.sidecar.port, preflight(APP, headers="x-session-key, content-type"))
    assert resp.status == 204  # before: 405
    assert resp.header("Access-Control-Allow-Origin") == APP
    assert resp.header("Access-Control-Allow-Credentials") == "true"
    assert "POST" in (resp.header("Access-Control-Allow-Methods") or "")
    assert resp.header("Access-Control-Allow-Headers") == "x-session-key, content-type"
    assert resp.header("Access-Control-Max-Age") == "600"  # 10m
    assert "Origin" in (resp.header("Vary") or "")
    assert raw_upstream.heads == []  # never asked
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_cors_preflights_total", result="allowed") == 1


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        ("https://evil.example", "POST", "x-session-key"),
        (APP, "PUT", "x-session-key"),
        (APP, "POST", "x-not-allowed"),
    ],
)
async def test_a_refused_preflight_is_403_json(
    raw_upstream, start_sidecar, origin, method, headers
):
    sc = await start_sidecar(make_config(raw_upstream.url, cors=CORS))
    resp = await raw_request(sc.sidecar.port, preflight(origin, method, headers))
    assert resp.status == 403
    assert json.loads(resp.body)["error"]["code"] == "origin_not_allowed"
    assert resp.header("Access-Control-Allow-Origin") is None


async def test_a_stream_carries_the_routes_cors_headers_not_the_upstreams(
    raw_upstream, start_sidecar
):
    raw_upstream.handler = upstream_with(b"Access-Control-Allow-Origin: *\r\n")
    sc = await start_sidecar(make_config(raw_upstream.url, cors=CORS))
    resp = await raw_request(sc.sidecar.port, get("/s", f"Origin: {APP}"))
    assert resp.status == 200
    assert resp.header("Access-Control-Allow-Origin") == APP
    assert resp.header("Access-Control-Allow-Credentials") == "true"
    assert resp.header("Vary") == "Origin"
    assert "X-Request-ID" in (resp.header("Access-Control-Expose-Headers") or "")


async def test_a_refusal_carries_cors_headers_so_the_page_can_read_it(raw_upstream, start_sidecar):
    sc = await start_sidecar(make_config(raw_upstream.url, cors=CORS))
    resp = await raw_request(sc.sidecar.port, get("/s", f"Origin: {APP}", "X-Session-Key: a b"))
    assert resp.status == 400
    assert resp.header("Access-Control-Allow-Origin") == APP
    assert resp.header("Vary") == "Origin"


async def test_a_refused_origin_gets_403_and_no_stream(raw_upstream, start_sidecar):
    sc = await start_sidecar(make_config(raw_upstream.url, cors=CORS))
    resp = await raw_request(sc.sidecar.port, get("/s", "Origin: https://evil.example"))
    assert resp.status == 403
    assert json.loads(resp.body)["error"]["code"] == "origin_not_allowed"
    assert resp.header("Access-Control-Allow-Origin") is None
    assert raw_upstream.heads == []
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_rejected_requests_total", reason="origin_not_allowed") == 1


async def test_without_cors_the_upstreams_own_headers_pass_through(raw_upstream, start_sidecar):
    raw_upstream.handler = upstream_with(
        b"Access-Control-Allow-Origin: https://own.example\r\nVary: Origin\r\n"
    )
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, get("/s", "Origin: https://own.example"))
    assert resp.status == 200
    assert resp.header("Access-Control-Allow-Origin") == "https://own.example"


async def test_a_cookie_keyed_route_without_cors_refuses_other_origins(raw_upstream, start_sidecar):
    raw_upstream.handler = upstream_with()
    sc = await start_sidecar(make_config(raw_upstream.url, session={"from": "cookie:sid"}))
    evil = await raw_request(
        sc.sidecar.port, get("/s", "Origin: https://evil.example", "Cookie: sid=victim")
    )
    assert evil.status == 403  # before: the cross-site page replaced the user's stream
    assert raw_upstream.heads == []
    same = await raw_request(
        sc.sidecar.port,
        get("/s", f"Origin: http://127.0.0.1:{sc.sidecar.port}", "Cookie: sid=victim",
            host=f"127.0.0.1:{sc.sidecar.port}"),
    )  # fmt: skip
    assert same.status == 200
