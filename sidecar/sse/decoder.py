"""Incremental event-stream decoder (WHATWG HTML §9.2.6, "Interpreting an event stream").

Strategy: ``feed(bytes)`` appends to a small buffer holding at most one
unfinished line, splits every complete line with bytes methods (C speed: no
per-character Python loop), interprets each line by the spec's steps and
returns the items completed by that chunk. ``close()`` marks end of stream.

Line ends are CRLF, LF or CR. A CR at the very end of a chunk ends its line at
once; an LF at the start of the next chunk is then the second half of that
CRLF and is skipped. Splitting on bytes is safe for UTF-8 because CR and LF
never occur inside a multi-byte sequence.

Deliberate divergences from the spec, each for a proxy's sake:

* Invalid UTF-8 raises :class:`InvalidUTF8` instead of decoding to U+FFFD: a
  proxy must not silently hand on text the producer never wrote.
* A stream that ends inside an event raises :class:`TruncatedEvent` from
  ``close()``; the spec drops the event silently, which would let a truncated
  answer look complete.
* Lines and events are capped (:class:`LineTooLong`, :class:`EventTooLarge`),
  so a producer that never sends a newline cannot grow the buffer forever.
"""

from __future__ import annotations

from sidecar.errors import EventTooLarge, InvalidUTF8, LineTooLong, ProtocolError, TruncatedEvent
from sidecar.sse.events import MAX_RETRY_MS, Comment, Event, Item

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class Decoder:
    """Turns chunks of an event stream into :class:`Event` and :class:`Comment` items."""

    __slots__ = (
        "_bom_pending",
        "_buf",
        "_closed",
        "_cr_pending",
        "_data",
        "_event",
        "_has_fields",
        "_id",
        "_retry",
        "_size",
        "error",
        "max_event_bytes",
        "max_line_bytes",
    )

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        self._buf = b""
        self._bom_pending = True
        self._cr_pending = False
        self._closed = False
        #: A protocol error found after items that ``feed`` still returned;
        #: the caller delivers those items, then ends the stream with it.
        self.error: ProtocolError | None = None
        self._reset_event()

    def _reset_event(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False
        self._size = 0

    @property
    def at_boundary(self) -> bool:
        """Between events: everything fed so far was complete events and lines."""
        return not (self._buf or self._has_fields or self._cr_pending or self._bom_pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an unfinished line or event (what a cap must bound)."""
        return len(self._buf) + self._size

    def feed(self, chunk: bytes) -> list[Item]:
        """Take the next chunk; return the items it completes, in stream order."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        if self.error is not None:
            raise self.error
        if not chunk:
            return []
        if self._cr_pending:
            self._cr_pending = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if self._bom_pending:
            # §9.2.6: one leading U+FEFF is skipped. Wait until three bytes are
            # here, since the BOM itself may be split across reads.
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._bom_pending = False
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            if buf[-1:] == b"\r":
                self._cr_pending = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        items: list[Item] = []
        try:
            if lines:
                self._lines(buf, lines, items)
            if len(self._buf) > self.max_line_bytes:
                raise LineTooLong(f"upstream line longer than {self.max_line_bytes} bytes")
        except ProtocolError as exc:
            self._buf = b""
            self._reset_event()
            if not items:
                raise
            # Lose nothing: hand out what was complete before the bad bytes;
            # the error is raised by the next call (see ``error``).
            self.error = exc
        return items

    def close(self) -> list[Item]:
        """End of stream. Raises :class:`TruncatedEvent` if it ended inside an event."""
        self._closed = True
        if self.error is not None:
            raise self.error
        if self._buf or self._has_fields:
            self._buf = b""
            self._reset_event()
            raise TruncatedEvent("upstream stream ended inside an event (no final blank line)")
        return []

    def _lines(self, buf: bytes, raw_lines: list[bytes], items: list[Item]) -> None:
        """Interpret complete lines, decoding them to text in one call when valid."""
        complete = len(buf) - len(self._buf)
        if complete > self.max_line_bytes and max(map(len, raw_lines)) > self.max_line_bytes:
            # Lines before the long one still count: interpret them one by one.
            texts = None
        else:
            try:
                texts = buf[:complete].decode("utf-8").split("\n")
            except UnicodeDecodeError:
                texts = None  # find the bad line below, after the good ones
        if texts is not None:
            for raw, line in zip(raw_lines, texts, strict=False):
                if line:
                    self._line(line, len(raw), items)
                elif self._has_fields:
                    items.append(self._dispatch())
            return
        for raw in raw_lines:
            if raw:
                if len(raw) > self.max_line_bytes:
                    raise LineTooLong(f"upstream line longer than {self.max_line_bytes} bytes")
                self._line(_text(raw), len(raw), items)
            elif self._has_fields:
                items.append(self._dispatch())

    def _line(self, line: str, nbytes: int, items: list[Item]) -> None:
        colon = line.find(":")
        if colon == 0:
            items.append(Comment(line[2:] if line[1:2] == " " else line[1:]))
            return
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == " " else line[colon + 1 :]
        if name == "data":
            self._size += nbytes + 1
            if self._size > self.max_event_bytes:
                self._reset_event()
                raise EventTooLarge(f"upstream event larger than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" in value:
                return  # §9.2.6: an id containing NULL is ignored
            self._id = value
        elif name == "retry":
            if not (value.isascii() and value.isdigit()):
                return  # §9.2.6: retry must be ASCII digits only, else ignored
            # Clamped: no reconnect delay needs more, and Python refuses
            # int() of over 4300 digits.
            value = value.lstrip("0") or "0"
            self._retry = min(int(value), MAX_RETRY_MS) if len(value) <= 10 else MAX_RETRY_MS
        else:
            return  # unknown fields are ignored
        self._has_fields = True

    def _dispatch(self) -> Event:
        event = Event(
            "\n".join(self._data) if self._data else None,
            self._event,
            self._id,
            self._retry,
        )
        self._reset_event()
        return event


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUTF8(f"upstream sent invalid UTF-8 at byte {exc.start} of a line") from None
