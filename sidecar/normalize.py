"""What the client is sent: pure decisions for each upstream item, heartbeats, the opening.

Which upstream event is terminal is decided here; the sidecar's own
terminal events (error, end) are written in the route's dialect
(sidecar/dialects.py).

The proxy feeds decoded items in and writes what comes out; no clock and no
socket here, so every rule of DESIGN.md's "normalised stream" is testable
without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sidecar.config import CommentMode, Keepalive, Limits, Terminal
from sidecar.dialects import Dialect, dialect
from sidecar.replay.base import Entry
from sidecar.sse import Comment, Event, Item, encode_comment, encode_event


class IdSource:
    """Event ids of a resumable run: ``<nonce>-<seq>``.

    The nonce is random per run, so an id tells nothing about other runs or
    sessions, and seq orders the run's events.
    """

    __slots__ = ("nonce", "seq")

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.seq = 0

    def next(self) -> tuple[int, str]:
        self.seq += 1
        return self.seq, f"{self.nonce}-{self.seq}"

    def next_seq(self) -> int:
        """The next seq alone, for an event that keeps the upstream's id."""
        self.seq += 1
        return self.seq


@dataclass(slots=True)
class Batch:
    """What one chunk of upstream items turns into."""

    data: bytes = b""
    forwarded: int = 0
    comments_converted: int = 0
    comments_passed: int = 0
    comments_dropped: int = 0
    #: True when the chunk held the upstream's terminal event; nothing after it is kept.
    terminal: bool = False
    #: With an IdSource (resume on): the events and keepalives as log entries;
    #: ``data`` is their bytes joined, and any comment passed on (no entry).
    entries: list[Entry] = field(default_factory=list)


#: Up to this size a block is searched by one regex, past it needle by needle.
_REGEX_MAX = 512

#: First bytes that keep a block off the fast path: a comment, a blank line, a BOM.
_NOT_FIRST = frozenset({b":", b"\n", b"\xef"})
#: Numbering on bytes: an event's data line; its own leading id (one optional
#: space, not empty, no NUL: else the decoder's rules apply); an id line after it.
_DATA_LINE = re.compile(rb"(?:^|\n)data:")
_OWN_ID = re.compile(rb"id: ?+([^\n\x00]+)\n")  # possessive: the space is never the value
_ID_LINE = re.compile(rb"\nid(?::|\n|$)")
#: The steady read's shape, an own id (group 1, the one it keeps) and one
#: data line, judged in one match (tried by the callers of _event_id first: a
#: call less per event; `.*+`, not a class, for the data: sre's fastest
#: scan). Public for the splice, which numbers the steady read inline.
steady_event = re.compile(rb"id: ?+([^\n\x00]++)\ndata:.*+\n\n").fullmatch
#: One event of the steady shapes (an id, an event type, one data line), for
#: the raw check: its type and its data line's value, as the decoder reads
#: them. Possessive `.*+`: sre's fastest scan (CR is looked for apart).
_one_event = re.compile(rb"(?:id:.*+\n)?(?:event: ?+(.*+)\n)?data:(.*+)\n\n").fullmatch
#: What str.strip() strips of ASCII text (the decoder's terminal check strips a str).
_STR_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
#: An Entry made as the tuple it is: a named tuple's own __new__ is a Python
#: function, a third of the cost of numbering an event.
new_entry = tuple.__new__


def _event_id(event: bytes) -> str | None:
    """The own id of a complete event ("" for none), or None: the decoder decides."""
    end = len(event) - 2  # its blank line
    if _DATA_LINE.search(event, 0, end) is None:
        return None
    event_id, rest_at = "", 0
    if event.startswith(b"id"):
        found = _OWN_ID.match(event, 0, end)
        if found is None:
            return None  # empty, with NUL, or another field that starts so
        event_id, rest_at = found.group(1).decode(), found.end() - 1
    if _ID_LINE.search(event, rest_at, end) is not None:
        return None
    return event_id


class Normalizer:
    """Per-route rules, shared by every stream of the route (it holds no stream state)."""

    __slots__ = ("_comments", "_terminal_data", "_terminal_events", "dialect", "keepalive")

    def __init__(
        self,
        comments: CommentMode,
        keepalive: Keepalive,
        terminal: Terminal,
        dialect_: Dialect | None = None,
    ) -> None:
        self._comments = comments
        #: What the sidecar writes of its own, in the form the route's clients read.
        self.dialect = dialect_ or dialect("generic", encode_event(keepalive.data, keepalive.event))
        # The dialect's own terminal markers (message_stop, response.completed)
        # count as well as the configured ones.
        self._terminal_events = frozenset(terminal.events) | self.dialect.terminal_events
        self._terminal_data = frozenset(terminal.data) | self.dialect.terminal_data
        #: The keepalive, encoded once: converted comments and heartbeats.
        self.keepalive = self.dialect.keepalive

    def is_terminal(self, event: Event) -> bool:
        if event.event is not None and event.event in self._terminal_events:
            return True
        return event.data is not None and event.data.strip() in self._terminal_data

    def raw_events(self, limits: Limits) -> Callable[[bytes], int]:
        """A test, on bytes alone, that a block of complete events needs no change.

        It returns how many events the block holds, or -1 when the decoder
        must look at it. Conservative: any comment (even one passed on, which
        is no event to count), CR, a terminal marker anywhere (an event name
        or a data sentinel, even inside text), invalid UTF-8, a leading BOM
        (the client would drop it as the stream's own), a run of blank lines,
        more blank lines than ``data:`` lines (an event without data is not
        dispatched, so it must not count), or a block longer than one event
        or line may be. What passes is forwarded byte for byte (the fast path).
        With one ``data:`` line per event the count is exact; a block that
        also holds an event of no data and one of several data lines counts
        the former, and ``partial`` is still right (an event did go out).

        The steady read, one ASCII event of an optional ``id:`` and
        ``event:`` line and one ``data:`` line, is judged exactly instead, in
        one match: terminal only as the decoder would find it (so text that
        merely mentions a marker takes the fast path too).
        """
        terminal_events = frozenset(e.encode() for e in self._terminal_events)
        terminal_data = frozenset(d.encode() for d in self._terminal_data)
        needles = [b"\n:", b"\n\n\n"]
        needles += [m.encode() for m in (*self._terminal_events, *self._terminal_data) if m]
        # A small block (a read of one or a few events, the steady case) is
        # searched with one regex pass: each `needle in block` costs ~0.3 us
        # of call overhead, as much as the whole search. The regex tries every
        # alternative at every byte, though, so a large block (a burst read)
        # is searched needle by needle: CR by memchr, the rest by a regex of
        # one literal each, whose scan (~0.3 ns/byte) is two to three times
        # faster than `in` for needles that begin or end with a common byte.
        search = re.compile(b"|".join(re.escape(n) for n in [b"\r", *needles])).search
        scans = [re.compile(re.escape(n)).search for n in needles]
        limit = min(limits.max_event_bytes, limits.max_line_bytes)

        def events(block: bytes) -> int:
            if len(block) > limit:
                return -1
            if (one := _one_event(block)) is not None and block.find(b"\r") < 0 and block.isascii():
                name, value = one.groups()
                if name in terminal_events or value.strip(_STR_SPACE) in terminal_data:
                    return -1
                return 1
            if block[:1] in _NOT_FIRST:
                return -1
            if len(block) <= _REGEX_MAX:
                if search(block) is not None:
                    return -1
            elif b"\r" in block or any(scan(block) for scan in scans):
                return -1
            count = block.count(b"\n\n")
            if block.count(b"\ndata:") + block.startswith(b"data:") < count:
                return -1
            if not block.isascii():
                try:
                    block.decode("utf-8")
                except UnicodeDecodeError:
                    return -1
            return count

        return events

    def number(self, block: bytes, ids: IdSource) -> Batch | None:
        """Ids on the bytes of a block the raw check passed: a resumable run's fast path.

        An event that starts with an ``id:`` line of its own keeps it (the
        upstream's id is the one clients resume by) and goes as it came; any
        other gets ``id: <nonce>-<seq>`` as its first line (the order of
        fields is free, WHATWG §9.2.6). Each becomes a log entry. None when
        that is not all: an id line elsewhere or twice, an empty id or one
        with NUL (the decoder's rules apply), or an event without a data
        line (it is not dispatched, so it takes no seq): the decoder decides
        those.
        """
        end = block.find(b"\n\n")
        if end == len(block) - 2:
            entry = self.number_one(block, ids)
            return None if entry is None else Batch(data=entry.data, forwarded=1, entries=[entry])
        # Event by event in place: each slice, blank line included, is its
        # entry's data as it came, judged as number_one judges it; the seq is
        # a local until the whole block passed (a refusal takes no seq).
        entries: list[Entry] = []
        seq, nonce, kept, start = ids.seq, ids.nonce, True, 0
        while end >= 0:
            event = block[start : end + 2]
            if (simple := steady_event(event)) is not None:
                event_id = simple.group(1).decode()
            elif (event_id := _event_id(event)) is None:
                return None
            seq += 1
            if event_id:
                entries.append(new_entry(Entry, (seq, event_id, event, False)))
            else:
                ours = f"{nonce}-{seq}"
                data = b"id: %b\n%b" % (ours.encode(), event)
                entries.append(new_entry(Entry, (seq, ours, data, False)))
                kept = False
            start = end + 2
            end = block.find(b"\n\n", start)
        if start != len(block):
            return None  # not a block of complete events: the decoder's
        ids.seq = seq
        data = block if kept else b"".join([entry.data for entry in entries])
        return Batch(data=data, forwarded=len(entries), entries=entries)

    def number_one(self, block: bytes, ids: IdSource) -> Entry | None:
        """:meth:`number` of a block of one event (the steady read), as its log entry alone.

        Judged in place, and sent as it came (no copy) when it has its own id.
        """
        if (simple := steady_event(block)) is not None:
            # The steady shape; the seq counted here, not by a call (once
            # per event of every resumable stream).
            seq = ids.seq = ids.seq + 1
            return new_entry(Entry, (seq, simple.group(1).decode(), block, False))
        event_id = _event_id(block)
        if event_id is None:
            return None
        if event_id:
            return new_entry(Entry, (ids.next_seq(), event_id, block, False))
        seq, ours = ids.next()
        return new_entry(Entry, (seq, ours, b"id: %b\n%b" % (ours.encode(), block), False))

    def rewrite_comments(self, block: bytes) -> Batch | None:
        """Comments of a block of complete events handled on bytes: the fast path's second try.

        An upstream that sends ``: ping`` after an event in the same write
        fails the raw check on every such read. Here events made only of
        comment lines become the keepalive (convert; consecutive ones, one
        keepalive, as :meth:`batch` does) or go (drop), and every other
        event is left as it came. None when that is not enough: an event
        mixing comment and field lines, an event without a data line (the
        decoder knows whether it is dispatched), invalid UTF-8, or comments
        to pass on (the decoder counts those). The caller still puts the
        result through the raw check.
        """
        if self._comments == "pass" or b"\r" in block:
            return None
        if not block.isascii():
            try:
                block.decode("utf-8")  # bad bytes in a comment end the stream too
            except UnicodeDecodeError:
                return None
        pieces = block.split(b"\n\n")
        pieces.pop()  # the block ends with a blank line: nothing after it
        out: list[bytes] = []
        batch = Batch()
        keepalive = self.keepalive[:-2]  # the pieces are joined with the blank lines
        after_comment = False
        for piece in pieces:
            if piece[:1] != b":":
                if piece:
                    if not (piece.startswith(b"data:") or b"\ndata:" in piece):
                        return None  # whether it is dispatched at all: the decoder knows
                    out.append(piece)
                    batch.forwarded += 1
                    after_comment = False
                continue
            lines = piece.count(b"\n") + 1
            if piece.count(b"\n:") != lines - 1:
                return None  # a field line among the comments: the decoder knows the order
            if self._comments == "drop":
                batch.comments_dropped += lines
                continue
            batch.comments_converted += lines
            if not after_comment:
                out.append(keepalive)
                after_comment = True
        batch.data = b"\n\n".join(out) + b"\n\n" if out else b""
        return batch

    def batch(self, items: Sequence[Item], ids: IdSource | None = None) -> Batch:
        """Encode a chunk's items for the client, stopping after a terminal event.

        With ``ids``, every event gets an id (the upstream's own when it set
        one) and is also returned as a log entry for resume.
        """
        out: list[bytes] = []
        batch = Batch()
        for item in items:
            if isinstance(item, Comment):
                if self._comments == "convert":
                    # Consecutive comments in one read become one keepalive:
                    # they say the same thing and the client need not see each.
                    if not out or out[-1] is not self.keepalive:
                        out.append(self.keepalive)
                        if ids is not None:
                            # Followers of a resumable run see it too; without
                            # an id, it is never a place to resume from.
                            batch.entries.append(Entry(ids.next()[0], "", self.keepalive))
                    batch.comments_converted += 1
                elif self._comments == "pass":
                    out.append(encode_comment(item.text))
                    batch.comments_passed += 1
                else:
                    batch.comments_dropped += 1
                continue
            batch.forwarded += 1
            terminal = self.is_terminal(item)
            if ids is None:
                out.append(encode_event(item.data, item.event, item.id, item.retry))
            else:
                seq, event_id = ids.next()
                event_id = item.id or event_id
                data = encode_event(item.data, item.event, event_id, item.retry)
                out.append(data)
                batch.entries.append(Entry(seq, event_id, data, terminal))
            if terminal:
                batch.terminal = True
                break
        batch.data = b"".join(out)
        return batch


def heartbeat_due(now: float, last_write: float, interval: float) -> bool:
    """A heartbeat is due when nothing was written for ``interval`` (0: never)."""
    return interval > 0 and now - last_write >= interval


def opening(retry_ms: int | None, open_event: str | None, keepalive: bytes | None = None) -> bytes:
    """What goes out right after the headers: ``retry:`` and the opening, as ONE event.

    A block of ``retry:`` alone is dispatched as an empty ``message`` event by
    httpx-sse, @microsoft/fetch-event-source, the OpenAI SDK and most fetch()
    parsers (they dispatch on any field, not only on data), so ``retry:`` rides
    on the opening event, or else on a keepalive event (what clients already
    ignore). A comment keepalive (the openai dialect) cannot carry it: the
    ``retry:`` is left out there, and ``--check-config`` says so.
    """
    retry = f"retry: {retry_ms}\n".encode() if retry_ms is not None else b""
    if open_event:
        return retry + encode_event(
            json.dumps({"type": open_event}, separators=(",", ":")), open_event
        )
    if retry and keepalive and not keepalive.startswith(b":"):
        return retry + keepalive
    return b""
