"""Decoder caps and malformed bytes: each is a ProtocolError, after every complete item."""

from __future__ import annotations

import pytest

from sidecar.errors import EventTooLarge, InvalidUTF8, LineTooLong, ProtocolError, TruncatedEvent
from sidecar.sse import Comment, Decoder, Event
from tests.unit.sse.chunking import Chunker, check, check_raises


def test_line_of_exactly_max_line_bytes_passes(chunker: Chunker) -> None:
    # "data: 0123456789" is 16 bytes; the line end does not count.
    raw = b"data: 0123456789\r\n\r\n"
    check(chunker, raw, [Event("0123456789")], max_line_bytes=16)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"data: 0123456789A\n\n", id="complete-line"),
        pytest.param(b"data: 0123456789A\r\n\r\n", id="complete-crlf-line"),
        pytest.param(b"data: 0123456789A", id="unterminated-remainder"),
        pytest.param(b": " + b"c" * 20 + b"\n", id="comment-line"),
        pytest.param(b"event: " + b"e" * 20 + b"\ndata: x\n\n", id="event-line"),
    ],
)
def test_line_over_max_line_bytes_raises(chunker: Chunker, raw: bytes) -> None:
    check_raises(chunker, raw, LineTooLong, max_line_bytes=16)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"x" * 40, id="unterminated-remainder"),
        pytest.param(b"data: " + b"x" * 40 + b"\n\n", id="complete-line"),
    ],
)
def test_items_before_a_too_long_line_are_delivered(chunker: Chunker, bad: bytes) -> None:
    raw = b"data: a\n\n: c\n" + bad
    check_raises(chunker, raw, LineTooLong, [Event("a"), Comment("c")], max_line_bytes=16)


def test_event_within_max_event_bytes_passes(chunker: Chunker) -> None:
    # 28 bytes of data lines on the wire, line ends included, against a cap of 32.
    check(
        chunker,
        b"data: 0123456789\ndata: 0123\n\n",
        [Event("0123456789\n0123")],
        max_event_bytes=32,
    )


def test_max_event_bytes_is_per_event(chunker: Chunker) -> None:
    raw = b"data: 0123456789\n\n" * 6
    check(chunker, raw, [Event("0123456789")] * 6, max_event_bytes=32)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"data: " + b"x" * 33 + b"\n\n", id="one-line"),
        pytest.param(b"data: 0123456789\n" * 5 + b"\n", id="many-small-lines"),
        pytest.param(b"data: " + b"x" * 40 + b"\n", id="before-the-blank-line"),
    ],
)
def test_event_over_max_event_bytes_raises(chunker: Chunker, raw: bytes) -> None:
    check_raises(chunker, raw, EventTooLarge, max_event_bytes=32)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"data: \xff\n\n", id="invalid-byte"),
        pytest.param(b"data: \xe2\x82\n\n", id="cut-sequence"),
        pytest.param(b"data: \xc0\xaf\n\n", id="overlong"),
        pytest.param(b"id: \xed\xa0\x80\n\n", id="surrogate"),
        pytest.param(b"ev\xffent: x\n\n", id="in-field-name"),
        pytest.param(b": \xff\n", id="in-comment"),
        pytest.param(b"\xef\xbbdata: x\n\n", id="partial-bom"),
    ],
)
def test_invalid_utf8_raises(chunker: Chunker, raw: bytes) -> None:
    check_raises(chunker, raw, InvalidUTF8)


def test_items_before_invalid_utf8_are_delivered(chunker: Chunker) -> None:
    raw = b"data: a\n\ndata: b\n: c\ndata: \xff\n\n"
    check_raises(chunker, raw, InvalidUTF8, [Event("a"), Comment("c")])


def test_items_before_a_too_large_event_are_delivered(chunker: Chunker) -> None:
    raw = b"data: a\n\n" + b"data: 0123456789\n" * 3
    check_raises(chunker, raw, EventTooLarge, [Event("a")], max_event_bytes=32)


def test_error_found_after_items_is_raised_by_every_later_call() -> None:
    assert Decoder().error is None
    decoder = Decoder()
    assert decoder.feed(b"data: a\n\ndata: \xff\n\n") == [Event("a")]
    assert isinstance(decoder.error, InvalidUTF8)
    with pytest.raises(InvalidUTF8):
        decoder.feed(b"data: b\n\n")
    with pytest.raises(InvalidUTF8):
        decoder.close()


def test_error_found_after_items_is_raised_by_close() -> None:
    decoder = Decoder(max_line_bytes=16)
    assert decoder.feed(b"data: a\n\n" + b"x" * 17) == [Event("a")]
    assert decoder.pending_bytes == 0
    with pytest.raises(LineTooLong):
        decoder.close()


def test_error_with_nothing_before_it_is_raised_by_feed() -> None:
    decoder = Decoder(max_line_bytes=16)
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * 17)
    assert decoder.pending_bytes == 0


ERRORS = [
    (InvalidUTF8, "invalid_utf8"),
    (LineTooLong, "line_too_long"),
    (EventTooLarge, "event_too_large"),
    (TruncatedEvent, "truncated_event"),
]


@pytest.mark.parametrize(("error", "kind"), ERRORS)
def test_errors_are_protocol_errors_with_a_kind(error: type[ProtocolError], kind: str) -> None:
    assert issubclass(error, ProtocolError)
    assert error.code == "upstream_protocol"
    assert error.kind == kind


def test_error_kinds_are_distinct() -> None:
    assert len({error.kind for error, _ in ERRORS} | {ProtocolError.kind}) == len(ERRORS) + 1
