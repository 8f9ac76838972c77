"""Header tests: what crosses the proxy in each direction (RFC 9110 §7.6.1)."""

from __future__ import annotations

import tracemalloc

from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import headers as hdrs

STREAM = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
]


def md(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def request(
    peer: str | None = "10.0.0.9",
    host: str | None = "api.example",
    trusted: bool = True,
    **headers: str,
) -> CIMultiDict[str]:
    return hdrs.upstream_request(
        md(*headers.items()),
        peer=peer,
        scheme="https",
        host=host,
        request_id="req-1",
        local="10.0.0.1:8080",
        trusted=trusted,
    )


# --- strip -------------------------------------------------------------------------


def test_strip_removes_every_hop_by_hop_header_in_any_case() -> None:
    given = md(
        ("connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("PROXY-AUTHENTICATE", "Basic"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Sum"),
        ("transfer-encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Content-Type", "application/json"),
        ("X-Keep", "1"),
    )
    assert list(hdrs.strip(given).items()) == [
        ("Content-Type", "application/json"),
        ("X-Keep", "1"),
    ]


def test_strip_removes_connection_listed_headers() -> None:
    given = md(
        ("Connection", "X-A, x-b ,,  "),
        ("connection", "X-C"),
        ("x-a", "1"),
        ("X-B", "2"),
        ("X-C", "3"),
        ("X-D", "4"),
        ("X-AB", "5"),
    )
    assert list(hdrs.strip(given).items()) == [("X-D", "4"), ("X-AB", "5")]


def test_strip_keeps_repeated_headers_and_leaves_the_input_alone() -> None:
    given = md(("Set-Cookie", "a=1"), ("Connection", "close"), ("set-cookie", "b=2"))
    out = hdrs.strip(given)
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("set-cookie", "b=2")]
    assert len(given) == 3
    assert out is not given


def test_strip_accepts_a_proxy() -> None:
    given = CIMultiDictProxy(md(("Upgrade", "h2c"), ("X-A", "1")))
    assert list(hdrs.strip(given).items()) == [("X-A", "1")]


def test_strip_also_is_case_insensitive() -> None:
    # Regression: `also` was once compared as given against lowercased names,
    # so a capitalised name (how headers are usually written) stayed.
    given = md(("X-Internal", "1"), ("x-other", "2"), ("X-Keep", "3"))
    out = hdrs.strip(given, also=["X-Internal", "x-other"])
    assert list(out.items()) == [("X-Keep", "3")]


# --- upstream_request -----------------------------------------------------------------


def test_upstream_request_exact() -> None:
    given = md(
        ("Host", "sidecar.local"),
        ("Content-Length", "12"),
        ("Expect", "100-continue"),
        ("Accept-Encoding", "gzip, br"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Authorization", "Bearer t"),
        ("Accept", "text/event-stream"),
        ("X-Request-ID", "client-chosen"),
    )
    out = hdrs.upstream_request(
        given,
        peer="10.0.0.9",
        scheme="http",
        host="sidecar.local",
        request_id="req-1",
        trusted=True,
    )
    assert list(out.items()) == [
        ("Authorization", "Bearer t"),
        ("Accept", "text/event-stream"),
        ("Accept-Encoding", "identity"),
        ("X-Forwarded-For", "10.0.0.9"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "sidecar.local"),
        ("X-Request-ID", "req-1"),
    ]


def test_upstream_request_appends_to_existing_forwarded_for() -> None:
    given = md(("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 3.3.3.3"))
    out = hdrs.upstream_request(
        given, peer="10.0.0.9", scheme="https", host=None, request_id="r", trusted=True
    )
    assert out.getall("X-Forwarded-For") == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]


def test_upstream_request_without_peer_keeps_forwarded_for() -> None:
    assert request(peer=None, **{"X-Forwarded-For": "1.1.1.1"})["X-Forwarded-For"] == "1.1.1.1"
    assert "X-Forwarded-For" not in request(peer=None)


def test_upstream_request_keeps_existing_forwarded_proto_and_host() -> None:
    out = request(**{"x-forwarded-proto": "http", "X-Forwarded-Host": "public.example"})
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out.getall("X-Forwarded-Host") == ["public.example"]


def test_upstream_request_sets_forwarded_proto_and_host_otherwise() -> None:
    out = request()
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["api.example"]
    assert "X-Forwarded-Host" not in request(host=None)


def test_upstream_request_from_an_untrusted_peer_drops_the_clients_claims() -> None:
    out = request(
        trusted=False,
        host="evil.example",
        **{
            "X-Forwarded-For": "1.1.1.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=1.1.1.1;host=evil.example",
            "X-Real-IP": "1.1.1.1",
        },
    )
    assert out.getall("X-Forwarded-For") == ["10.0.0.9"]
    assert out.getall("X-Forwarded-Proto") == ["https"]  # the connection's own scheme
    assert out.getall("X-Forwarded-Host") == ["10.0.0.1:8080"]  # where it came in
    assert "Forwarded" not in out
    assert "X-Real-IP" not in out


def test_upstream_request_trusts_no_peer_unless_told() -> None:
    # Trust is opt-in: a caller that does not say the peer is a trusted proxy
    # gets the client's forwarding claims replaced by the connection's.
    given = md(("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-Host", "evil.example"))
    out = hdrs.upstream_request(
        given, peer="10.0.0.9", scheme="http", host="evil.example", request_id="r"
    )
    assert out.getall("X-Forwarded-For") == ["10.0.0.9"]
    assert "X-Forwarded-Host" not in out


def test_upstream_request_removes_own_headers_in_any_case() -> None:
    given = md(("host", "a"), ("content-length", "3"), ("EXPECT", "100-continue"))
    out = hdrs.upstream_request(given, peer=None, scheme="http", host=None, request_id="r")
    assert dict(out) == {
        "Accept-Encoding": "identity",
        "X-Forwarded-Proto": "http",
        "X-Request-ID": "r",
    }


def test_upstream_request_sets_one_request_id_and_identity_encoding() -> None:
    given = md(
        ("x-request-id", "a"),
        ("X-Request-ID", "b"),
        ("accept-encoding", "gzip"),
        ("Accept-Encoding", "br"),
    )
    out = hdrs.upstream_request(given, peer=None, scheme="http", host=None, request_id="req-9")
    assert out.getall("X-Request-ID") == ["req-9"]
    assert out.getall("Accept-Encoding") == ["identity"]


# --- responses ----------------------------------------------------------------------------


def test_passthrough_response_drops_framing_and_hop_by_hop_keeps_encoding() -> None:
    given = md(
        ("Content-Type", "application/json"),
        ("Content-Length", "42"),
        ("content-encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        ("Retry-After", "5"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    )
    # The body is passed on as the upstream encoded it, so its encoding stays.
    assert list(hdrs.passthrough_response(given).items()) == [
        ("Content-Type", "application/json"),
        ("content-encoding", "gzip"),
        ("Retry-After", "5"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_stream_response_without_upstream_headers() -> None:
    assert list(hdrs.stream_response(None).items()) == STREAM


def test_stream_response_replaces_the_upstreams_own_headers() -> None:
    given = md(
        ("Content-Type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("Content-Length", "100"),
        ("Content-Encoding", "gzip"),
        ("X-Accel-Buffering", "yes"),
        ("ETag", '"v1"'),
        ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("X-Trace", "abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Access-Control-Allow-Origin", "*"),
    )
    out = hdrs.stream_response(CIMultiDictProxy(given))
    assert list(out.items()) == [
        ("X-Trace", "abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Access-Control-Allow-Origin", "*"),
        *STREAM,
    ]
    assert "Content-Length" not in out
    assert "Content-Encoding" not in out


def test_what_a_stream_keeps_of_the_upstreams_headers_makes_the_same_response() -> None:
    given = md(
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-store"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("X-Trace", "abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    )
    kept = hdrs.stream_kept(CIMultiDictProxy(given))
    assert kept is not None
    assert list(kept.items()) == [("X-Trace", "abc"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert list(hdrs.stream_response(kept).items()) == list(
        hdrs.stream_response(CIMultiDictProxy(given)).items()
    )


def test_a_stream_keeps_nothing_of_headers_that_are_all_its_own_or_hop_by_hop() -> None:
    given = md(("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"))
    assert hdrs.stream_kept(CIMultiDictProxy(given)) is None
    assert hdrs.stream_kept(None) is None
    assert list(hdrs.stream_response(None).items()) == STREAM


def test_serialising_a_streams_own_head_keeps_nothing() -> None:
    # aiohttp's serialiser makes (and the response keeps) an istr of every
    # plain str name: the stream's own names are istr already.
    heads = []
    for i in range(200):
        head = hdrs.stream_response(None)
        head[hdrs.X_REQUEST_ID] = str(i)
        head[hdrs.CONNECTION] = "keep-alive"
        heads.append(head)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for head in heads:
            _serialize_headers("HTTP/1.1 200 OK", head)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 200 * 16
