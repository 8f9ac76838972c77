"""Encode events and comments into bytes that can never break SSE framing.

Every value that is not data is stripped of the characters that end a line
(and ``id`` of NUL, which makes browsers ignore the field, WHATWG §9.2.6), so
nothing a client or an upstream put into an event name or an id can start a
new field or a new event. Data is split into one ``data:`` line per line.
"""

from __future__ import annotations

import re

from sidecar.sse.events import MAX_RETRY_MS, Comment, Event, Item

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_NO_BREAKS = str.maketrans("", "", "\r\n")
_NO_BREAKS_OR_NUL = str.maketrans("", "", "\r\n\x00")


def encode_event(
    data: str | None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """The wire form of one event block, ending with its blank line.

    Values are always written as ``field: value``: the decoder strips exactly
    one space after the colon, so a value that starts with a space survives.
    """
    lines: list[str] = []
    if event is not None:
        lines.append("event: " + event.translate(_NO_BREAKS))
    if id is not None:
        lines.append("id: " + id.translate(_NO_BREAKS_OR_NUL))
    if retry is not None:
        lines.append(f"retry: {min(max(int(retry), 0), MAX_RETRY_MS)}")
    if data is not None:
        if "\n" in data or "\r" in data:
            lines.extend("data: " + line for line in _LINE_BREAK.split(data))
        else:
            lines.append("data: " + data)
    if not lines:
        return b""
    lines.append("\n")
    # "replace": a lone surrogate (json.loads('"\\ud800"') makes one) becomes
    # "?" instead of an exception in the middle of a stream.
    return "\n".join(lines).encode("utf-8", "replace")


def encode_comment(text: str) -> bytes:
    """Comment lines for ``text``; a multi-line text becomes several comments."""
    return "".join(": " + line + "\n" for line in _LINE_BREAK.split(text)).encode(
        "utf-8", "replace"
    )


def encode_item(item: Item) -> bytes:
    if isinstance(item, Comment):
        return encode_comment(item.text)
    return encode_event(item.data, item.event, item.id, item.retry)


__all__ = ["Event", "encode_comment", "encode_event", "encode_item"]
