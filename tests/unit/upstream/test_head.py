"""The response head's bookkeeping and bounds (sidecar/upstream/head.py), without a parser."""

from __future__ import annotations

import pytest

from sidecar.errors import (
    UpstreamBadHead,
    UpstreamHeadTooLarge,
    UpstreamInterimFlood,
    UpstreamTooManyHeaders,
)
from sidecar.upstream.head import HeadLimits, HeadReader


def test_a_final_answer_gives_its_reason_and_headers_decoded_as_aiohttp_does() -> None:
    head = HeadReader(HeadLimits())
    assert not head.started
    head.status(b"O")
    head.status(b"K")
    assert head.started
    head.header(b"Content-Type", b"text/event-stream")
    head.header(b"X-Name", "é".encode())
    head.header(b"X-Raw", b"\xff")
    final = head.complete(200)
    assert final is not None
    reason, headers = final
    assert reason == "OK"
    assert headers["content-type"] == "text/event-stream"
    assert headers["X-Name"] == "é"
    assert headers["X-Raw"].encode("utf-8", "surrogateescape") == b"\xff"


def test_a_1xx_is_skipped_and_counted() -> None:
    head = HeadReader(HeadLimits(max_interim=2))
    for _ in range(2):
        head.status(b"Continue")
        head.header(b"X-Early", b"1")
        assert head.complete(100) is None
    head.status(b"OK")
    final = head.complete(200)
    assert final is not None
    assert final[0] == "OK"
    assert "X-Early" not in final[1]  # the 1xx's headers are not the answer's
    flood = HeadReader(HeadLimits(max_interim=2))
    for _ in range(2):
        flood.complete(103)
    with pytest.raises(UpstreamInterimFlood, match="over 2 1xx"):
        flood.complete(103)
    assert isinstance(flood.bad, UpstreamInterimFlood)


def test_headers_are_bounded_by_count_and_by_bytes() -> None:
    head = HeadReader(HeadLimits(max_headers=2))
    head.header(b"A", b"1")
    head.header(b"B", b"2")
    with pytest.raises(UpstreamTooManyHeaders, match="over 2"):
        head.header(b"C", b"3")
    small = HeadReader(HeadLimits(max_bytes=20))
    small.header(b"A", b"x" * 10)
    with pytest.raises(UpstreamHeadTooLarge, match="over 20 bytes"):
        small.header(b"B", b"x" * 10)
    assert small.bad is not None


def test_the_bytes_fed_before_the_head_is_complete_are_bounded_per_read() -> None:
    # One endless header line never reaches a callback: each read counts.
    head = HeadReader(HeadLimits(max_bytes=100))
    assert head.fed(60) is None
    assert head.started
    error = head.fed(60)
    assert isinstance(error, UpstreamHeadTooLarge)


def test_control_characters_are_refused_in_values_and_the_reason() -> None:
    head = HeadReader(HeadLimits())
    head.header(b"Tab", b"a\tb")  # a tab is allowed
    with pytest.raises(UpstreamBadHead, match="control character in a header"):
        head.header(b"X", b"a\x00b")
    reason = HeadReader(HeadLimits())
    reason.status(b"O\x01K")
    with pytest.raises(UpstreamBadHead, match="control character in its reason"):
        reason.complete(200)
