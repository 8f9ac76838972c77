"""Decoder tests (WHATWG HTML §9.2.6): the spec's examples, small cases, chunk boundaries.

Each ``check`` runs its input whole, byte by byte, split in two at every
position, and followed by an unfinished further event (see chunking.py).
"""

from __future__ import annotations

import pytest

from sidecar.sse import Comment, Decoder, Event, Item
from sidecar.sse.events import MAX_RETRY_MS
from tests.unit.sse.chunking import Chunker, check

# --- the spec's examples, verbatim ---------------------------------------------------------


def test_spec_stock_example(chunker: Chunker) -> None:
    check(chunker, b"data: YHOO\ndata: +2\ndata: 10\n\n", [Event("YHOO\n+2\n10")])


def test_spec_comment_and_id_example(chunker: Chunker) -> None:
    raw = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    expected: list[Item] = [
        Comment("test stream"),
        Event("first event", id="1"),
        Event("second event", id=""),  # an empty id resets the last event id
        Event(" third event"),  # only one leading space is stripped
    ]
    check(chunker, raw, expected)


def test_spec_empty_data_example_last_block_truncated(chunker: Chunker) -> None:
    # The spec silently discards the final "data:" block; we raise (decoder.py divergence).
    check(chunker, b"data\n\ndata\ndata\n\ndata:", [Event(""), Event("\n")], truncated=True)


def test_spec_space_after_colon_example(chunker: Chunker) -> None:
    check(chunker, b"data:test\n\ndata: test\n\n", [Event("test"), Event("test")])


# --- table of small cases ------------------------------------------------------------------

CASES = [
    pytest.param(b"", [], id="empty-stream"),
    pytest.param(b"data: a\ndata: b\n\n", [Event("a\nb")], id="lf"),
    pytest.param(b"data: a\rdata: b\r\r", [Event("a\nb")], id="cr"),
    pytest.param(b"data: a\r\ndata: b\r\n\r\n", [Event("a\nb")], id="crlf"),
    pytest.param(b"data: a\r\ndata: b\rdata: c\n\r\n", [Event("a\nb\nc")], id="mixed"),
    pytest.param(b"data: a\r\rdata: b\n\n", [Event("a"), Event("b")], id="cr-cr"),
    pytest.param(b"data: a\n\rdata: b\r\n\n", [Event("a"), Event("b")], id="lf-cr"),
    pytest.param(b"\xef\xbb\xbfdata: x\n\n", [Event("x")], id="bom-stripped"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [], id="second-bom-in-field-name"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\ndata: y\n\n", [Event("y")], id="second-bom"),
    pytest.param(b"data: \xef\xbb\xbfx\n\n", [Event("\ufeffx")], id="bom-inside-value-kept"),
    pytest.param("data: héllo €𝄞\n\n".encode(), [Event("héllo €𝄞")], id="multibyte-utf8"),
    pytest.param("data: a\u2028b\x85c\n\n".encode(), [Event("a\u2028b\x85c")], id="no-unicode-eol"),
    pytest.param(b"data: a\x00b\n\n", [Event("a\x00b")], id="nul-in-data-kept"),
    pytest.param(b"data\n\n", [Event("")], id="field-without-colon"),
    pytest.param(b"data:\n\n", [Event("")], id="empty-value"),
    pytest.param(b"data: \n\n", [Event("")], id="only-the-space"),
    pytest.param(b"data:x\n\n", [Event("x")], id="no-space"),
    pytest.param(b"data:  x \n\n", [Event(" x ")], id="one-space-stripped"),
    pytest.param(b"data: a:b: c\n\n", [Event("a:b: c")], id="colons-in-value"),
    pytest.param(b"data\ndata: x\ndata\n\n", [Event("\nx\n")], id="empty-lines-joined"),
    pytest.param(b"Data: x\n\n", [], id="field-names-case-sensitive"),
    pytest.param(b"data : x\n\n", [], id="space-before-colon-other-field"),
    pytest.param(b"foo: bar\nbaz\n\n", [], id="only-unknown-fields"),
    pytest.param(b"foo: bar\ndata: x\nbaz\n\n", [Event("x")], id="unknown-fields-ignored"),
    pytest.param(b"event: update\ndata: x\n\n", [Event("x", event="update")], id="event-type"),
    pytest.param(b"event: a\nevent: b\ndata: x\n\n", [Event("x", event="b")], id="last-event"),
    pytest.param(b"event:\ndata: x\n\n", [Event("x", event="")], id="empty-event-type"),
    pytest.param(b"id: 7\n\n", [Event(None, id="7")], id="only-id"),
    pytest.param(b"id\n\n", [Event(None, id="")], id="only-id-reset"),
    pytest.param(b"retry: 1500\n\n", [Event(None, retry=1500)], id="only-retry"),
    pytest.param(b"event: ping\n\n", [Event(None, event="ping")], id="only-event"),
    pytest.param(b"retry: 0\ndata: x\n\n", [Event("x", retry=0)], id="retry-zero"),
    pytest.param(b"retry: 0042\ndata: x\n\n", [Event("x", retry=42)], id="retry-leading-zeros"),
    pytest.param(b"retry: 5\nretry: x\ndata: d\n\n", [Event("d", retry=5)], id="bad-retry-keeps"),
    pytest.param(b"id: 1\x002\ndata: x\n\n", [Event("x")], id="id-with-nul-ignored"),
    pytest.param(b"id: 1\nid: 2\x00\ndata: x\n\n", [Event("x", id="1")], id="nul-id-keeps-earlier"),
    pytest.param(b"id: \x00\n\n", [], id="block-with-only-nul-id"),
    pytest.param(
        b"event: e\nid: 7\nretry: 10\ndata: d\n\n", [Event("d", "e", "7", 10)], id="all-fields"
    ),
    pytest.param(
        b"event: e\nid: 1\nretry: 5\ndata: a\n\ndata: b\n\n",
        [Event("a", "e", "1", 5), Event("b")],
        id="fields-reset-between-events",
    ),
    pytest.param(b"\n\n\r\n\rdata: x\n\n\n\n\r\r", [Event("x")], id="blank-lines-no-events"),
    pytest.param(b": keepalive\n", [Comment("keepalive")], id="comment"),
    pytest.param(b":no space\n", [Comment("no space")], id="comment-no-space"),
    pytest.param(b":  two\n", [Comment(" two")], id="comment-one-space-stripped"),
    pytest.param(b":\n", [Comment("")], id="empty-comment"),
    pytest.param(b": a: b\n", [Comment("a: b")], id="comment-with-colon"),
    pytest.param(
        b"data: a\n: note\ndata: b\n\n", [Comment("note"), Event("a\nb")], id="comment-mid-event"
    ),
    pytest.param(b"data: x\n: c\n\n", [Comment("c"), Event("x")], id="comment-before-blank"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_decodes(chunker: Chunker, raw: bytes, expected: list[Item]) -> None:
    check(chunker, raw, expected)


@pytest.mark.parametrize(
    "value",
    [
        *(b"-1", b"+5", b"1.5", b"1e3", b"0x10", b"", b" 5", b"5 ", b"1_000"),
        *("١٢".encode(), "²".encode(), "１２".encode()),  # non-ASCII digits
    ],
)
def test_retry_other_than_ascii_digits_is_ignored(chunker: Chunker, value: bytes) -> None:
    check(chunker, b"data: x\nretry: " + value + b"\n\n", [Event("x")])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"999999999", 999_999_999, id="below-max"),
        pytest.param(b"1000000000", MAX_RETRY_MS, id="max"),
        pytest.param(b"1000000001", MAX_RETRY_MS, id="max-plus-one"),
        pytest.param(b"99999999999", MAX_RETRY_MS, id="eleven-digits"),
        pytest.param(b"0000000000001", 1, id="leading-zeros-small"),
        pytest.param(b"00000000000000000000", 0, id="twenty-zeros"),
        pytest.param(b"00000000001000000001", MAX_RETRY_MS, id="leading-zeros-large"),
    ],
)
def test_retry_is_clamped_to_max_retry_ms(chunker: Chunker, value: bytes, expected: int) -> None:
    # The codec's documented clamp (events.MAX_RETRY_MS); below it the value is the spec's
    # base-ten integer, leading zeros included.
    check(chunker, b"retry: " + value + b"\n\n", [Event(None, retry=expected)])


def test_retry_of_thousands_of_digits_is_clamped() -> None:
    # Python's int() refuses over 4300 digits; that must not escape the decoder.
    decoder = Decoder()
    assert decoder.feed(b"retry: " + b"1" * 5000 + b"\n\n") == [Event(None, retry=MAX_RETRY_MS)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"data: x", [], id="unterminated-line"),
        pytest.param(b"data: x\n", [], id="no-blank-line"),
        pytest.param(b"data: x\r", [], id="cr-then-end"),
        pytest.param(b"id: 1\n", [], id="only-id-no-blank-line"),
        pytest.param(b": c", [], id="unterminated-comment"),
        pytest.param(b"data: a\n\ndata: b\n", [Event("a")], id="second-event-truncated"),
    ],
)
def test_stream_ending_inside_an_event_is_truncated(
    chunker: Chunker, raw: bytes, expected: list[Item]
) -> None:
    check(chunker, raw, expected, truncated=True)


# --- chunk boundaries, step by step --------------------------------------------------------


def test_crlf_split_across_reads_is_one_line_end() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # not a blank line: no dispatch of "a" alone
    assert decoder.feed(b"\n\r") == [Event("a\nb")]
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


def test_lone_cr_then_chunk_without_lf() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [Event("a\nb")]
    assert decoder.feed(b"data: c\n\n") == [Event("c")]


def test_cr_dispatches_without_waiting_for_next_chunk() -> None:
    assert Decoder().feed(b"data: a\n\r") == [Event("a")]


def test_empty_feed_keeps_pending_cr() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [Event("a")]


def test_items_come_from_the_feed_that_completes_them() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b": c") == []
    assert decoder.feed(b"\n") == [Comment("c")]
    assert decoder.feed(b"\n") == [Event("a")]


def test_bom_split_byte_by_byte_is_stripped_once() -> None:
    decoder = Decoder()
    assert [decoder.feed(bytes([b])) for b in b"\xef\xbb\xbf"] == [[], [], []]
    assert decoder.feed(b"\xef\xbb\xbfdata: x\n\n") == []  # second BOM: unknown field name
    assert decoder.feed(b"data: y\n\n") == [Event("y")]


def test_feed_after_close_is_a_programming_error() -> None:
    decoder = Decoder()
    assert decoder.close() == []
    with pytest.raises(RuntimeError, match=r"^feed\(\) after close\(\)$"):
        decoder.feed(b"data: x\n\n")
