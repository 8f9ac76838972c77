"""The request head sent to an HTTP upstream (pure: no socket)."""

from __future__ import annotations

import httptools
import pytest
from multidict import CIMultiDict
from yarl import URL

from sidecar.errors import UpstreamUnreachable
from sidecar.upstream.connect import request_head


class _Parsed:
    """What a real HTTP/1.1 request parser (llhttp) makes of a head."""

    def __init__(self, head: bytes) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(head)
        self.method = parser.get_method()
        self.version = parser.get_http_version()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True


def head_lines(method: str, url: str, body: bytes | None = None, **headers: str) -> list[str]:
    head = request_head(method, URL(url), CIMultiDict(headers), body)
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].decode("utf-8").split("\r\n")


def test_request_line_has_path_and_query_and_host_follows():
    lines = head_lines("GET", "http://127.0.0.1:9000/v1/chat/run?model=x&n=2")
    assert lines == ["GET /v1/chat/run?model=x&n=2 HTTP/1.1", "Host: 127.0.0.1:9000"]


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:9000", "/"),
        ("http://127.0.0.1:9000/a%0Ab?x=%0D%0A&y=%20", "/a%0Ab?x=%0D%0A&y=%20"),
        ("http://127.0.0.1:9000/a/b/?", "/a/b/"),
    ],
)
def test_request_target_stays_percent_encoded(url, target):
    assert head_lines("GET", url)[0] == f"GET {target} HTTP/1.1"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://up.example/x", "up.example"),
        ("http://up.example:80/x", "up.example"),
        ("http://up.example:8000/x", "up.example:8000"),
        ("https://up.example:443/x", "up.example"),
        ("https://up.example:8443/x", "up.example:8443"),
        ("http://[::1]:8080/x", "[::1]:8080"),
        ("http://[::1]/x", "[::1]"),
    ],
)
def test_host_header(url, host):
    assert head_lines("GET", url)[1] == f"Host: {host}"


def test_headers_follow_in_order_with_repeats():
    headers = CIMultiDict([("Accept", "text/event-stream"), ("X-A", "1"), ("X-A", "2")])
    head = request_head("GET", URL("http://127.0.0.1:1/"), headers, None)
    assert head == (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"
        b"Accept: text/event-stream\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [
        ("POST", b'{"prompt":"hi"}', "15"),
        ("POST", "é".encode() * 3, "6"),
        ("PUT", b"", "0"),
        ("GET", b"", "0"),  # a body given is announced, whatever the method
        ("POST", None, "0"),
        ("PUT", None, "0"),
        ("PATCH", None, "0"),
        ("GET", None, None),
        ("DELETE", None, None),
    ],
)
def test_content_length(method, body, length):
    lines = head_lines(method, "http://127.0.0.1:1/", body)
    lengths = [line for line in lines if line.lower().startswith("content-length:")]
    assert lengths == ([] if length is None else [f"Content-Length: {length}"])


def test_the_body_itself_is_not_part_of_the_head():
    head = request_head("POST", URL("http://127.0.0.1:1/"), CIMultiDict(), b"payload")
    assert b"payload" not in head
    assert head.endswith(b"Content-Length: 7\r\n\r\n")


def test_a_real_parser_reads_the_head_as_one_complete_request():
    headers = CIMultiDict({"Accept": "text/event-stream", "X-Request-ID": "r1"})
    head = request_head("GET", URL("http://[::1]:8080/p?q=1"), headers, None)
    parsed = _Parsed(head)
    assert (parsed.method, parsed.version, parsed.url) == (b"GET", "1.1", b"/p?q=1")
    assert parsed.headers == [
        (b"Host", b"[::1]:8080"),
        (b"Accept", b"text/event-stream"),
        (b"X-Request-ID", b"r1"),
    ]
    assert parsed.complete  # no body expected: a GET without Content-Length


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "\r\n", "end\n"])
def test_crlf_in_a_header_value_is_refused(value):
    headers = CIMultiDict({"X-Ok": "fine", "X-Bad": value})
    with pytest.raises(UpstreamUnreachable, match="X-Bad") as info:
        request_head("GET", URL("http://127.0.0.1:1/"), headers, None)
    assert info.value.code == "upstream_unreachable"


@pytest.mark.parametrize("name", ["X-Bad\r\nX-Evil", "X\nB", "X-Colon:", "Host: evil"])
def test_crlf_or_colon_in_a_header_name_is_refused(name):
    with pytest.raises(UpstreamUnreachable):
        request_head("GET", URL("http://127.0.0.1:1/"), CIMultiDict({name: "v"}), None)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("café ☕", "café ☕".encode()),
        # aiohttp's server decodes an undecodable byte to a lone surrogate:
        # forwarded, the upstream gets the client's byte back.
        ("caf\udce9", b"caf\xe9"),
    ],
)
def test_non_ascii_header_values_round_trip_as_utf8(value, wire):
    head = request_head("GET", URL("http://127.0.0.1:1/"), CIMultiDict({"X-Name": value}), None)
    assert b"\r\nX-Name: " + wire + b"\r\n" in head
    (got,) = [v for k, v in _Parsed(head).headers if k == b"X-Name"]
    assert got.decode("utf-8", "surrogateescape") == value  # as aiohttp's server reads it


def test_request_head_is_pure():
    headers = CIMultiDict({"X-A": "1"})
    url = URL("http://127.0.0.1:1/a")
    first = request_head("POST", url, headers, b"xy")
    assert request_head("POST", url, headers, b"xy") == first
    assert list(headers.items()) == [("X-A", "1")]
