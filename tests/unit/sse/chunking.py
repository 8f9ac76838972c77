"""Run a decoder input three ways, plus with trailing data (STYLE.md habit 2).

``check`` feeds the input whole, one byte at a time, and split in two at every
position (the ``chunker`` fixture in conftest.py picks one), and a complete
input again followed by an unfinished further event: same items, then
``close()`` must raise :class:`TruncatedEvent`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from sidecar.errors import EventTooLarge, LineTooLong, ProtocolError, TruncatedEvent
from sidecar.sse import Decoder, Item
from sidecar.sse.decoder import DEFAULT_MAX_EVENT_BYTES as MAX_EVENT
from sidecar.sse.decoder import DEFAULT_MAX_LINE_BYTES as MAX_LINE

Chunker = Callable[[bytes], Iterator[list[bytes]]]


def _whole(raw: bytes) -> Iterator[list[bytes]]:
    yield [raw]


def _bytewise(raw: bytes) -> Iterator[list[bytes]]:
    yield [raw[i : i + 1] for i in range(len(raw))]


def _two_chunks(raw: bytes) -> Iterator[list[bytes]]:
    for i in range(1, len(raw)):
        yield [raw[:i], raw[i:]]


CHUNKERS: dict[str, Chunker] = {"whole": _whole, "bytewise": _bytewise, "two_chunks": _two_chunks}

# Unfinished further events: mid-line, mid-character, after a field, a bare colon.
TRAILERS = (b"data: unfinished", b"data: \xe2\x82", b"data: unfinished\n", b"id: 9\r\n", b":")


def feed_all(decoder: Decoder, chunks: list[bytes]) -> list[Item]:
    items: list[Item] = []
    for chunk in chunks:
        items.extend(decoder.feed(chunk))
    return items


def _expect(
    chunks: list[bytes], expected: list[Item], truncated: bool, caps: dict[str, int]
) -> None:
    decoder = Decoder(**caps)
    assert feed_all(decoder, chunks) == expected, chunks
    if truncated:
        with pytest.raises(TruncatedEvent, match=r"^upstream stream ended inside an event "):
            decoder.close()
    else:
        assert decoder.close() == [], chunks


def check(
    chunker: Chunker, raw: bytes, expected: list[Item], *, truncated: bool = False, **caps: int
) -> None:
    """Every chunking of ``raw`` yields ``expected``; close() is clean unless ``truncated``."""
    for chunks in chunker(raw):
        _expect(chunks, expected, truncated, caps)
    if not truncated:
        for trailer in TRAILERS:
            for chunks in chunker(raw + trailer):
                _expect(chunks, expected, True, caps)


def decode_until_error(
    decoder: Decoder, chunks: list[bytes]
) -> tuple[list[Item], ProtocolError | None, str]:
    """Items delivered, the protocol error that ended decoding, and the call that raised it."""
    items: list[Item] = []
    try:
        for chunk in chunks:
            items.extend(decoder.feed(chunk))
    except ProtocolError as exc:
        return items, exc, "feed"
    try:
        items.extend(decoder.close())
    except ProtocolError as exc:
        return items, exc, "close"
    return items, None, ""


def expected_message(error: type[ProtocolError], caps: dict[str, int]) -> str | None:
    """The decoder's message for ``error`` under ``caps``; None where it names a byte offset."""
    if error is LineTooLong:
        return f"upstream line longer than {caps.get('max_line_bytes', MAX_LINE)} bytes"
    if error is EventTooLarge:
        return f"upstream event larger than {caps.get('max_event_bytes', MAX_EVENT)} bytes"
    if error is TruncatedEvent:
        return "upstream stream ended inside an event (no final blank line)"
    return None


def check_raises(
    chunker: Chunker,
    raw: bytes,
    error: type[ProtocolError],
    before: list[Item] | None = None,
    *,
    message: str | None = None,
    **caps: int,
) -> None:
    """Every chunking of ``raw`` delivers the items ``before`` the bad bytes, then ``error``.

    With nothing to deliver first, feed() itself must raise: a cap that waited for
    close() would not bound the buffer. Otherwise the error may come from the call
    after the feed that found it (decoder.py: "Lose nothing"). The message is
    compared too: ``message``, else the one the error type and caps give, else
    (invalid UTF-8, whose message names an offset) its fixed shape.
    """
    before = before or []
    message = message or expected_message(error, caps)
    for chunks in chunker(raw):
        items, exc, where = decode_until_error(Decoder(**caps), chunks)
        assert (items, type(exc)) == (before, error), chunks
        if message is not None:
            assert str(exc) == message, chunks
        else:
            assert re.fullmatch(r"upstream sent invalid UTF-8 at byte \d+ of a line", str(exc))
        if not before:
            assert where == "feed", chunks
