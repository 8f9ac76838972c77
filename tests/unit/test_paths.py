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


# The client reads why in the 400's body (error.message): each refusal says its own reason.
@pytest.mark.parametrize(
    ("raw", "prefix", "message"),
    [
        ("/v1/chat/a\\b", "/v1/chat", "backslashes are not allowed in paths"),
        ("/v1/chat/a%5Cb", "/v1/chat", "backslashes are not allowed in paths"),
        ("/v1/chat/a%00b", "/v1/chat", "NUL is not allowed in paths"),
        ("/v1/chat/%2e%2e/x", "/v1/chat", "path segments . and .. are not allowed"),
        ("/v1/chat/./x", "/v1/chat", "path segments . and .. are not allowed"),
        ("/v1/chat/%25252525252e", "/v1/chat", "path is percent-encoded too many times over"),
        ("v1/chat/x", "/v1/chat", "path must start with /"),
        ("/v1", "/v1/chat", "path is not under the route's prefix"),
        ("/v1/chatx/y", "/v1/chat", "path does not decode to the route's prefix"),
        ("/v1%2Fchat/y", "/v1/chat", "path does not decode to the route's prefix"),
    ],
)
def test_each_refusal_says_why(raw, prefix, message) -> None:
    with pytest.raises(BadPath) as info:
        upstream_tail(raw, prefix)
    assert str(info.value) == message


def test_undecodable_bytes_stay_apart_from_every_character() -> None:
    # A percent-encoded byte that is not UTF-8 decodes to its own surrogate,
    # never to U+FFFD: "%FF" is not the text "\ufffd", nor another bad byte.
    assert fully_decoded("/%FF") == "/\udcff"
    assert fully_decoded("/%FF") != fully_decoded("/%FE")
    with pytest.raises(BadPath, match=r"^path does not decode to the route's prefix$"):
        upstream_tail("/%FF/x", "/\ufffd")
    assert upstream_tail("/%EF%BF%BD/x", "/\ufffd") == "/x"
    assert upstream_tail("/raw/%FF", "/raw") == "/%FF"
