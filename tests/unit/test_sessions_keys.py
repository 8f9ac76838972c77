"""Where a route reads its session key, and what a valid one is (sidecar/sessions/keys.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from yarl import URL

from sidecar.config import Session
from sidecar.errors import BadSessionKey
from sidecar.sessions.keys import SessionKeySource


def read(source: str, *, required: bool = False, pattern: str | None = None, **where):
    session = Session(from_=source, required=required, **({"pattern": pattern} if pattern else {}))
    return SessionKeySource(session).read(
        CIMultiDict(where.get("headers", {})),
        where.get("cookies", {}),
        where.get("query", {}),
        where.get("tail", ""),
    )


def message(source: str, **kw) -> str:
    with pytest.raises(BadSessionKey) as info:
        read(source, **kw)
    return str(info.value)


def test_each_place_reads_its_own_key_only() -> None:
    everywhere = {
        "headers": {"X-Session-Key": "h1"},
        "cookies": {"X-Session-Key": "c1", "sid": "c2"},
        "query": {"X-Session-Key": "q1", "session": "q2"},
        "tail": "/p0/p1",
    }
    assert read("header:X-Session-Key", **everywhere) == "h1"
    assert read("header:x-session-key", **everywhere) == "h1"  # header names ignore case
    assert read("cookie:sid", **everywhere) == "c2"
    assert read("query:session", **everywhere) == "q2"
    assert read("path:0", **everywhere) == "p0"
    assert read("path:1", **everywhere) == "p1"


def test_path_segments_count_after_the_prefix_and_skip_empty_ones() -> None:
    assert read("path:1", tail="//a//b/") == "b"
    assert read("path:2", tail="/a/b") is None


@pytest.mark.parametrize("source", ["header:K", "cookie:K", "query:K", "path:0"])
def test_an_absent_or_empty_key_is_none_unless_required(source: str) -> None:
    assert read(source) is None
    empty = {"headers": {"K": ""}, "cookies": {"K": ""}, "query": {"K": ""}, "tail": "/"}
    assert read(source, **empty) is None


@pytest.mark.parametrize(
    ("source", "description"),
    [
        ("header:X-Session-Key", "header X-Session-Key"),
        ("cookie:sid", "cookie sid"),
        ("query:session", "query session"),
        ("path:1", "path segment 1 after the route prefix"),
    ],
)
def test_a_required_key_that_is_missing_says_where_it_was_looked_for(
    source: str, description: str
) -> None:
    assert SessionKeySource(Session(from_=source)).description == description
    assert message(source, required=True) == f"a session key is required ({description})"
    assert message(source, required=True, headers={source.split(":")[1]: ""}) == (
        f"a session key is required ({description})"
    )


def test_a_key_must_match_the_pattern_whole() -> None:
    # fullmatch: an unanchored pattern still covers the whole key, and a
    # trailing newline (which "$" would let through) is refused.
    assert read("header:K", pattern="[a-z]+", headers={"K": "abc"}) == "abc"
    assert message("header:K", pattern="[a-z]+", headers={"K": "abc1"}) == (
        "invalid session key in header K: it must match [a-z]+"
    )
    default = Session().pattern
    assert message("header:K", headers={"K": "conv-1\n"}) == (
        f"invalid session key in header K: it must match {default}"
    )
    assert read("header:K", headers={"K": "a" * 128}) == "a" * 128
    assert message("header:K", headers={"K": "a" * 129}).startswith("invalid session key")


def test_required_is_taken_from_the_config() -> None:
    assert SessionKeySource(Session(required=True)).required is True
    assert SessionKeySource(Session()).required is False


class Parts:
    """A request whose parts fail the test if read without need (parsing is cached for life)."""

    def __init__(self, **parts: object) -> None:
        self._parts = parts

    def _get(self, name: str):
        if name not in self._parts:
            raise AssertionError(f"{name} read, though the key is not there")
        return self._parts[name]

    headers = property(lambda self: self._get("headers"))
    cookies = property(lambda self: self._get("cookies"))
    rel_url = property(lambda self: self._get("rel_url"))
    match_info = property(lambda self: self._get("match_info"))


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("header:X-Session-Key", {"headers": CIMultiDict({"X-Session-Key": "k1"})}),
        ("cookie:sid", {"headers": CIMultiDict(), "cookies": {"sid": "k1"}}),
        ("query:s", {"headers": CIMultiDict(), "rel_url": URL("/s?a=1&s=k1&s=k2")}),
        ("path:0", {"headers": CIMultiDict(), "match_info": {"tail": "/k1/x"}}),
    ],
)
def test_a_request_is_read_only_where_its_key_is(source: str, parts: dict[str, object]) -> None:
    assert SessionKeySource(Session(from_=source)).of_request(Parts(**parts)) == "k1"
