from __future__ import annotations

import pytest

from sidecar.paths import BadPath, fully_decoded, upstream_tail


@pytest.mark.parametrize(
    ("raw", "prefix", "tail"),
    [
        ("/raw/x", "/raw", "/x"),
        ("/r%61w/x", "/raw", "/x"),
        ("/%72%61%77/-admin/echo", "/raw", "/-admin/echo"),
        ("/raw", "/raw", ""),
        ("/raw/", "/raw", "/"),
        ("/raw/a%2Fb/c%20d", "/raw", "/a%2Fb/c%20d"),
        ("/v1/chat/x", "/v1/chat", "/x"),
        ("/anything/at/all", "", "/anything/at/all"),
        ("/a.b/..c/...", "", "/a.b/..c/..."),
    ],
)
def test_tail_after_the_prefix_is_the_raw_rest(raw, prefix, tail) -> None:
    assert upstream_tail(raw, prefix) == tail


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        ("/raw%2Fx", "/raw"),
        ("/rawx", "/raw"),
        ("/v1", "/v1/chat"),
        ("/v1/chat/../admin", "/v1/chat"),
        ("/v1/chat/..%2Fadmin", "/v1/chat"),
        ("/v1/chat/%2e%2e%2fadmin", "/v1/chat"),
        ("/v1/chat/..%5cadmin", "/v1/chat"),
        ("/v1/chat/%252e%252e/admin", "/v1/chat"),
        ("/v1/chat/%25252525252e", "/v1/chat"),  # encoded too many times over
        ("/v1/chat/./x", "/v1/chat"),
        ("/v1/chat/a%00b", "/v1/chat"),
    ],
)
def test_paths_that_hide_the_prefix_or_climb_are_refused(raw, prefix) -> None:
    with pytest.raises(BadPath):
        upstream_tail(raw, prefix)


def test_fully_decoded_repeats_until_stable() -> None:
    assert fully_decoded("%252e") == "."
    assert fully_decoded("plain") == "plain"
