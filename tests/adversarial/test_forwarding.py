"""What the upstream hears about the client: forwarding headers and request ids."""

from __future__ import annotations

import pytest

from tests.adversarial.conftest import RawUpstream, get, metric, raw_request
from tests.adversarial.test_paths_and_query import done
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial


def upstream_headers(raw_upstream: RawUpstream) -> dict[str, list[str]]:
    (head,) = raw_upstream.heads
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


SPOOF = (
    "X-Forwarded-For: 6.6.6.6",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: evil.example",
    "Forwarded: for=6.6.6.6;host=evil.example;proto=https",
    "X-Real-IP: 6.6.6.6",
)


async def test_an_untrusted_clients_forwarding_headers_are_replaced(raw_upstream, start_sidecar):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, get("/s", *SPOOF, host="evil.example"))
    assert resp.status == 200
    got = upstream_headers(raw_upstream)
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == [f"127.0.0.1:{sc.sidecar.port}"]  # not evil.example
    assert "forwarded" not in got
    assert "x-real-ip" not in got
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_client_headers_dropped_total", kind="forwarding") == 1


async def test_a_trusted_proxys_forwarding_headers_are_kept(raw_upstream, start_sidecar):
    raw_upstream.handler = done
    sc = await start_sidecar(
        make_config(raw_upstream.url, top={"trusted_proxies": ["10.0.0.0/8", "127.0.0.0/8"]})
    )
    resp = await raw_request(sc.sidecar.port, get("/s", *SPOOF, host="public.example"))
    assert resp.status == 200
    got = upstream_headers(raw_upstream)
    assert got["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert got["x-forwarded-proto"] == ["https"]
    assert got["x-forwarded-host"] == ["evil.example"]
    assert got["forwarded"] == ["for=6.6.6.6;host=evil.example;proto=https"]


@pytest.mark.parametrize(
    "given", ["x" * 8000, "a b", "id<script>", 'a"b'], ids=["8k", "space", "html", "quote"]
)
async def test_an_odd_request_id_is_replaced_by_a_fresh_one(raw_upstream, start_sidecar, given):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    resp = await raw_request(sc.sidecar.port, get("/s", f"X-Request-ID: {given}"))
    assert resp.status == 200
    echoed = resp.header("X-Request-ID")
    assert echoed is not None
    assert echoed != given
    assert len(echoed) <= 128
    assert upstream_headers(raw_upstream)["x-request-id"] == [echoed]
    text = await sc.metrics()
    assert metric(text, "sse_sidecar_client_headers_dropped_total", kind="request_id") == 1


async def test_a_plain_request_id_is_kept(raw_upstream, start_sidecar):
    raw_upstream.handler = done
    sc = await start_sidecar(make_config(raw_upstream.url))
    rid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    resp = await raw_request(sc.sidecar.port, get("/s", f"X-Request-ID: {rid}"))
    assert resp.header("X-Request-ID") == rid
    assert upstream_headers(raw_upstream)["x-request-id"] == [rid]
