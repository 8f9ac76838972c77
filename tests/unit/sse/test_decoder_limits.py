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


# --- caps at their exact edge ----------------------------------------------------------
# An event's size is its data lines on the wire, each with one byte for its line end.


def test_event_of_exactly_max_event_bytes_passes(chunker: Chunker) -> None:
    raw = b"data: " + b"x" * 25 + b"\n\n"  # 31 bytes + 1 for the line end = 32
    check(chunker, raw, [Event("x" * 25)], max_event_bytes=32)


def test_event_one_byte_over_max_event_bytes_raises(chunker: Chunker) -> None:
    check_raises(chunker, b"data: " + b"x" * 26 + b"\n\n", EventTooLarge, max_event_bytes=32)


def test_event_of_many_lines_at_and_over_the_cap(chunker: Chunker) -> None:
    raw = b"data: 0123456789\n" * 2 + b"\n"  # 2 x (16 + 1) = 34
    check(chunker, raw, [Event("0123456789\n0123456789")], max_event_bytes=34)
    check_raises(chunker, raw, EventTooLarge, max_event_bytes=33)


def test_only_data_lines_count_toward_the_event_cap(chunker: Chunker) -> None:
    raw = b"event: " + b"e" * 20 + b"\nid: " + b"i" * 20 + b"\ndata: x\n\n"
    check(chunker, raw, [Event("x", event="e" * 20, id="i" * 20)], max_event_bytes=20)


def test_the_event_cap_starts_again_after_an_error_was_avoided() -> None:
    decoder = Decoder(max_event_bytes=32)
    assert decoder.feed(b"data: " + b"x" * 25 + b"\n\n") == [Event("x" * 25)]
    assert decoder.pending_bytes == 0
    assert decoder.feed(b"data: " + b"y" * 25 + b"\n") == []
    assert decoder.pending_bytes == 32
    assert decoder.feed(b"\n") == [Event("y" * 25)]


def test_line_at_the_cap_on_the_slow_path_passes() -> None:
    # Invalid UTF-8 later in the chunk sends every line through the one-by-one
    # path; a line of exactly the cap there is still fine.
    at_cap = b"data: 0123456789\n\n"  # the line is 16 bytes
    decoder = Decoder(max_line_bytes=16)
    assert decoder.feed(at_cap + b"data: \xff\n\n") == [Event("0123456789")]
    assert str(decoder.error) == "upstream sent invalid UTF-8 at byte 6 of a line"


def test_line_over_the_cap_on_the_slow_path_raises_after_the_lines_before() -> None:
    decoder = Decoder(max_line_bytes=16)
    assert decoder.feed(b"data: a\n\n" + b"data: 0123456789A\n\n") == [Event("a")]
    assert str(decoder.error) == "upstream line longer than 16 bytes"


def test_unfinished_line_at_and_over_the_cap() -> None:
    decoder = Decoder(max_line_bytes=16)
    assert decoder.feed(b"data: 0123456789") == []
    assert decoder.pending_bytes == 16
    with pytest.raises(LineTooLong, match=r"^upstream line longer than 16 bytes$"):
        decoder.feed(b"A")


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        (b"data: \xff\n\n", 6),
        (b"ev\xffent: x\n\n", 2),
        (b": \xff\n", 2),
        (b"data: ok\n\nid: ab\xed\xa0\x80\n\n", 6),
    ],
)
def test_invalid_utf8_names_its_offset_in_the_line(
    chunker: Chunker, raw: bytes, offset: int
) -> None:
    before = [Event("ok")] if raw.startswith(b"data: ok") else []
    message = f"upstream sent invalid UTF-8 at byte {offset} of a line"
    check_raises(chunker, raw, InvalidUTF8, before, message=message)


def test_default_caps_are_one_mebibyte() -> None:
    decoder = Decoder()
    assert (decoder.max_line_bytes, decoder.max_event_bytes) == (1024 * 1024, 1024 * 1024)
    line = b"data: " + b"x" * (1024 * 1024 - 6)
    assert decoder.feed(line) == []
    with pytest.raises(LineTooLong, match=r"^upstream line longer than 1048576 bytes$"):
        decoder.feed(b"x")


# --- the byte order mark ------------------------------------------------------------------


def test_a_stream_of_only_a_bom_is_empty_and_clean(chunker: Chunker) -> None:
    check(chunker, b"\xef\xbb\xbf", [])


def test_a_bom_then_nothing_else_is_a_boundary() -> None:
    decoder = Decoder()
    assert not decoder.at_boundary  # a BOM may still come
    assert decoder.feed(b"\xef\xbb") == []
    assert not decoder.at_boundary
    assert decoder.feed(b"\xbf") == []
    assert decoder.at_boundary
    assert decoder.close() == []


def test_only_the_first_bom_is_skipped(chunker: Chunker) -> None:
    check(chunker, b"\xef\xbb\xbfdata: a\n\n", [Event("a")])
    # A second BOM is part of the next line: here a field name nobody knows.
    check(chunker, b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [Event("b")])


def test_a_truncated_stream_holds_nothing_after_close() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.pending_bytes > 0
    with pytest.raises(TruncatedEvent, match=r"^upstream stream ended inside an event "):
        decoder.close()
    assert decoder.pending_bytes == 0
    assert decoder.at_boundary


def test_a_first_line_feed_is_a_blank_line_not_half_a_crlf() -> None:
    # Only a CR at the end of a chunk makes a leading LF the rest of a CRLF;
    # taken as such here, the BOM behind it would look like the stream's first.
    assert Decoder().feed(b"\n\xef\xbb\xbfdata: x\n\n") == []
