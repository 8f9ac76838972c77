"""Encoder tests: exact bytes, and nothing in a value can break SSE framing."""

from __future__ import annotations

import pytest

from sidecar.sse import Comment, Decoder, Event, Item, encode_comment, encode_event, encode_item
from sidecar.sse.events import MAX_RETRY_MS


def decode(raw: bytes) -> list[Item]:
    decoder = Decoder()
    items = decoder.feed(raw)
    return items + decoder.close()


def without_breaks(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(Event("hello"), b"data: hello\n\n", id="data"),
        pytest.param(Event(""), b"data: \n\n", id="empty-data"),
        pytest.param(Event("a\nb"), b"data: a\ndata: b\n\n", id="two-lines"),
        pytest.param(Event("a\r\nb\rc\nd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n", id="eols"),
        pytest.param(Event("x\n"), b"data: x\ndata: \n\n", id="trailing-newline"),
        pytest.param(Event("\n"), b"data: \ndata: \n\n", id="only-newline"),
        pytest.param(Event(" x"), b"data:  x\n\n", id="leading-space"),
        pytest.param(Event("€"), "data: €\n\n".encode(), id="utf8"),
        pytest.param(Event("a\u2028b"), "data: a\u2028b\n\n".encode(), id="u2028-not-a-break"),
        pytest.param(Event(None, id="7"), b"id: 7\n\n", id="only-id"),
        pytest.param(Event(None, id=""), b"id: \n\n", id="id-reset"),
        pytest.param(Event(None, retry=3000), b"retry: 3000\n\n", id="only-retry"),
        pytest.param(Event(None, retry=-5), b"retry: 0\n\n", id="negative-retry-clamped"),
        pytest.param(Event(None, retry=10**9), b"retry: 1000000000\n\n", id="max-retry"),
        pytest.param(Event(None, retry=10**40), b"retry: 1000000000\n\n", id="huge-retry-clamped"),
        pytest.param(Event(None, event="ping"), b"event: ping\n\n", id="only-event"),
        pytest.param(
            Event("a\nb", event="update", id="42", retry=1500),
            b"event: update\nid: 42\nretry: 1500\ndata: a\ndata: b\n\n",
            id="all-fields",
        ),
        pytest.param(
            Event("d", event="a\r\nb\nc\rd"), b"event: abcd\ndata: d\n\n", id="event-eols"
        ),
        pytest.param(Event("d", id="1\x002\n3\r4"), b"id: 1234\ndata: d\n\n", id="id-eols-nul"),
        pytest.param(
            Event("d", event="a\x00b"), b"event: a\x00b\ndata: d\n\n", id="event-nul-kept"
        ),
        pytest.param(Event(None), b"", id="empty-event"),
    ],
)
def test_encode_event_exact_bytes(event: Event, expected: bytes) -> None:
    assert encode_event(event.data, event.event, event.id, event.retry) == expected
    assert encode_item(event) == expected


def test_encode_event_keyword_arguments() -> None:
    assert (
        encode_event("x", event="e", id="i", retry=1) == b"event: e\nid: i\nretry: 1\ndata: x\n\n"
    )
    assert encode_event(None) == b""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("keepalive", b": keepalive\n", id="text"),
        pytest.param("", b": \n", id="empty"),
        pytest.param(" x", b":  x\n", id="leading-space"),
        pytest.param("a\nb", b": a\n: b\n", id="two-lines"),
        pytest.param("a\r\nb\rc", b": a\n: b\n: c\n", id="eols"),
    ],
)
def test_encode_comment_exact_bytes(text: str, expected: bytes) -> None:
    assert encode_comment(text) == expected
    assert encode_item(Comment(text)) == expected


@pytest.mark.parametrize(
    "item",
    [
        Event("x"),
        Event(" x", event=" e", id=" i", retry=0),
        Event("  two", event="  two", id="  two"),
        Event(" ", event=" ", id=" "),
        Event("", event="", id=""),
        Event(" a\n b\n  c"),
        Event(None, id=" 1"),
        Comment(" x"),
        Comment("  two"),
        Comment(""),
    ],
    ids=repr,
)
def test_leading_spaces_survive_a_round_trip(item: Item) -> None:
    assert decode(encode_item(item)) == [item]


INJECTIONS = [
    "x\n\ndata: injected",
    "x\r\rdata: injected\r\r",
    "x\r\n\r\nevent: evil\r\n\r\n",
    "\ndata: injected\n\n",
    "x\n\nid: 666\n\nretry: 1\n\n",
    "x\n: comment\n\ndata: y",
    "x\x00\ndata: y\n\n",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_event_name_cannot_inject(payload: str) -> None:
    assert decode(encode_event("ok", event=payload)) == [Event("ok", event=without_breaks(payload))]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_id_cannot_inject(payload: str) -> None:
    expected_id = without_breaks(payload).replace("\x00", "")
    assert decode(encode_event("ok", id=payload)) == [Event("ok", id=expected_id)]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_data_cannot_inject(payload: str) -> None:
    expected = payload.replace("\r\n", "\n").replace("\r", "\n")
    assert decode(encode_event(payload, event="e")) == [Event(expected, event="e")]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_comment_cannot_inject(payload: str) -> None:
    items = decode(encode_comment(payload))
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert items == [Comment(line) for line in lines]


def test_injection_through_every_field_at_once_is_one_event() -> None:
    payload = "x\n\ndata: injected\n\n"
    raw = encode_event(payload, event=payload, id=payload, retry=1)
    assert decode(raw) == [Event(payload, event="xdata: injected", id="xdata: injected", retry=1)]


def test_clamped_retry_round_trips() -> None:
    assert decode(encode_event(None, retry=10**40)) == [Event(None, retry=MAX_RETRY_MS)]
    assert MAX_RETRY_MS == 10**9


def test_lone_surrogates_become_question_marks_not_exceptions() -> None:
    # json.loads('"\\ud800"') makes such a string; it must not stop a stream.
    lone = "a\ud800b"
    assert encode_event(lone, event=lone, id=lone) == (b"event: a?b\nid: a?b\ndata: a?b\n\n")
    assert encode_comment(lone) == b": a?b\n"
    assert encode_comment("x\udfff\ny") == b": x?\n: y\n"
