"""Property tests for the SSE codec: round trips, chunking, arbitrary bytes, bounded buffers."""

from __future__ import annotations

import contextlib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.errors import ProtocolError
from sidecar.sse import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    Comment,
    Decoder,
    Event,
    Item,
    encode_item,
)
from sidecar.sse.events import MAX_RETRY_MS
from tests.budget import examples

SETTINGS = settings(max_examples=examples(1.25))

texts = st.text(st.characters(codec="utf-8"))
one_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
ids = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"))
events = st.builds(
    Event,
    data=st.none() | texts,
    event=st.none() | one_line,
    id=st.none() | ids,
    retry=st.none() | st.integers(min_value=0, max_value=2**63),
).filter(lambda event: event != Event(None))  # encodes to b"": nothing to decode
comments = st.builds(Comment, one_line)
items = st.one_of(events, comments)
line_ends = st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=8)
cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=16)


def normalised(item: Item) -> Item:
    """What the decoder gives back: data line breaks become LF, retry clamped."""
    if isinstance(item, Event):
        if item.data is not None:
            item = item._replace(data=item.data.replace("\r\n", "\n").replace("\r", "\n"))
        if item.retry is not None:
            item = item._replace(retry=min(item.retry, MAX_RETRY_MS))
    return item


def chunked(raw: bytes, positions: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(raw) + 1) for p in positions})
    return [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True)]


def with_line_ends(raw: bytes, ends: list[bytes]) -> bytes:
    """Rewrite each LF of an encoded stream as one of ``ends`` (cycled)."""
    out = bytearray()
    for i, part in enumerate(raw.split(b"\n")):
        if i:
            end = ends[i % len(ends)]
            if out.endswith(b"\r") and end == b"\n":
                end = b"\r\n"  # a lone CR followed by LF would merge into one CRLF line end
            out += end
        out += part
    return bytes(out)


def decode(chunks: list[bytes], **caps: int) -> list[Item]:
    decoder = Decoder(**caps)
    result: list[Item] = []
    for chunk in chunks:
        result.extend(decoder.feed(chunk))
    result.extend(decoder.close())
    return result


def assert_well_typed(item: Item) -> None:
    if isinstance(item, Comment):
        assert isinstance(item.text, str)
        return
    assert isinstance(item, Event)
    assert item.data is None or isinstance(item.data, str)
    assert item.event is None or isinstance(item.event, str)
    assert item.id is None or ("\x00" not in item.id and "\n" not in item.id)
    assert item.retry is None or (isinstance(item.retry, int) and item.retry >= 0)


def assert_within_caps(item: Item, max_line: int, max_event: int) -> None:
    if isinstance(item, Comment):
        assert len(item.text.encode()) <= max_line
        return
    if item.data is not None:
        assert len(item.data.encode()) <= max_event
    for value in (item.event, item.id):
        assert value is None or len(value.encode()) <= max_line


@SETTINGS
@given(events)
def test_event_round_trip(event: Event) -> None:
    assert decode([encode_item(event)]) == [normalised(event)]


@SETTINGS
@given(
    st.text("0123456789", min_size=1, max_size=30)
    | st.builds("{}{}".format, st.text("0", max_size=20), st.integers(0, 10**12))
)
def test_retry_is_the_base_ten_value_clamped(digits: str) -> None:
    raw = f"retry: {digits}\n\n".encode()
    assert decode([raw]) == [Event(None, retry=min(int(digits), MAX_RETRY_MS))]


@SETTINGS
@given(st.lists(items, max_size=10))
def test_stream_round_trip(stream: list[Item]) -> None:
    raw = b"".join(map(encode_item, stream))
    assert decode([raw]) == [normalised(item) for item in stream]


@SETTINGS
@given(st.lists(items, max_size=8), line_ends, cuts)
def test_any_chunking_gives_the_same_items(
    stream: list[Item], ends: list[bytes], positions: list[int]
) -> None:
    raw = with_line_ends(b"".join(map(encode_item, stream)), ends)
    expected = [normalised(item) for item in stream]
    assert decode([raw]) == expected
    assert decode(chunked(raw, positions)) == expected
    assert decode([raw[i : i + 1] for i in range(len(raw))]) == expected


FRAGMENTS = [
    b"data",
    b"id",
    b"retry",
    b"event",
    b":",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"1",
    b"x",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xa9",
    b"\xe2\x82\xac",
]
streams = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(b"".join),
)
line_caps = st.one_of(st.integers(min_value=1, max_value=64), st.just(DEFAULT_MAX_LINE_BYTES))
event_caps = st.one_of(st.integers(min_value=1, max_value=128), st.just(DEFAULT_MAX_EVENT_BYTES))


def feed_arbitrary(raw: bytes, positions: list[int], max_line: int, max_event: int) -> None:
    """Feed until the end or a ProtocolError; anything else escapes and fails the test."""
    decoder = Decoder(max_line_bytes=max_line, max_event_bytes=max_event)
    with contextlib.suppress(ProtocolError):
        for chunk in chunked(raw, positions):
            for item in decoder.feed(chunk):
                assert_well_typed(item)
                assert_within_caps(item, max_line, max_event)
            assert decoder.pending_bytes <= max_line + max_event + len(chunk)
        assert decoder.close() == []


@SETTINGS
@given(streams, cuts, line_caps, event_caps)
@example(b"retry: " + b"9" * 5000 + b"\n\n", [], DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_EVENT_BYTES)
def test_arbitrary_bytes_give_items_or_a_protocol_error(
    raw: bytes, positions: list[int], max_line: int, max_event: int
) -> None:
    feed_arbitrary(raw, positions, max_line, max_event)


def outcome(chunks: list[bytes], max_line: int, max_event: int) -> tuple[list[Item], type | None]:
    """The items delivered and the type of the protocol error that ended decoding, if any."""
    decoder = Decoder(max_line_bytes=max_line, max_event_bytes=max_event)
    result: list[Item] = []
    try:
        for chunk in chunks:
            result.extend(decoder.feed(chunk))
        result.extend(decoder.close())
    except ProtocolError as exc:
        return result, type(exc)
    return result, None


@SETTINGS
@given(
    streams, cuts, st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=128)
)
def test_any_chunking_of_arbitrary_bytes_gives_the_same_items_and_error(
    raw: bytes, positions: list[int], max_line: int, max_event: int
) -> None:
    whole = outcome([raw], max_line, max_event)
    assert outcome(chunked(raw, positions), max_line, max_event) == whole
    assert outcome([raw[i : i + 1] for i in range(len(raw))], max_line, max_event) == whole


# Streams that push the buffers: long lines without an end, many data lines per event.
pressure = st.lists(
    st.sampled_from(
        [b"data: " + b"x" * 10 + b"\n", b"x" * 7, b"\n", b"\r", b": c\n", b"id: 1\n", b"data"]
    ),
    max_size=60,
).map(b"".join)


@SETTINGS
@given(
    pressure,
    cuts,
    st.integers(min_value=1, max_value=32),
    st.integers(min_value=1, max_value=64),
)
def test_pending_bytes_stay_bounded_by_the_caps(
    raw: bytes, positions: list[int], max_line: int, max_event: int
) -> None:
    feed_arbitrary(raw, positions, max_line, max_event)
