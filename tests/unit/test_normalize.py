"""Normaliser tests: the exact bytes a client gets for each upstream item and each ending."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import Keepalive, Terminal
from sidecar.normalize import (
    Batch,
    IdSource,
    Normalizer,
    heartbeat_due,
    opening,
)
from sidecar.replay.base import Entry
from sidecar.sse import Comment, Decoder, Event, Item
from tests.budget import examples

KEEPALIVE = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


def normalizer(comments: str = "convert", terminal: Terminal | None = None) -> Normalizer:
    return Normalizer(comments, Keepalive(), terminal or Terminal())  # type: ignore[arg-type]


def decode(raw: bytes) -> list[Item]:
    decoder = Decoder()
    return decoder.feed(raw) + decoder.close()


# --- keepalive and comments ------------------------------------------------------


def test_default_keepalive_bytes() -> None:
    assert normalizer().keepalive == KEEPALIVE


def test_custom_keepalive_bytes() -> None:
    custom = Normalizer("convert", Keepalive(event="ping", data="{}"), Terminal())
    assert custom.keepalive == b"event: ping\ndata: {}\n\n"
    assert custom.batch([Comment("x")]).data == b"event: ping\ndata: {}\n\n"


def test_convert_merges_consecutive_comments_and_counts_each() -> None:
    items: list[Item] = [Comment("a"), Comment("b"), Comment(""), Event("x"), Comment("c")]
    assert normalizer("convert").batch(items) == Batch(
        data=KEEPALIVE + b"data: x\n\n" + KEEPALIVE,
        forwarded=1,
        comments_converted=4,
    )


def test_convert_only_comments_gives_one_keepalive() -> None:
    batch = normalizer("convert").batch([Comment("ping")] * 5)
    assert batch == Batch(data=KEEPALIVE, comments_converted=5)


def test_convert_keepalives_do_not_merge_across_batches() -> None:
    n = normalizer("convert")
    assert n.batch([Comment("a")]).data + n.batch([Comment("b")]).data == KEEPALIVE * 2


def test_pass_encodes_each_comment() -> None:
    items: list[Item] = [Comment("a"), Comment(" b"), Event("x"), Comment("two\nlines")]
    assert normalizer("pass").batch(items) == Batch(
        data=b": a\n:  b\ndata: x\n\n: two\n: lines\n",
        forwarded=1,
        comments_passed=3,
    )


def test_drop_counts_and_writes_nothing_for_comments() -> None:
    items: list[Item] = [Comment("a"), Event("x"), Comment("b"), Comment("c")]
    assert normalizer("drop").batch(items) == Batch(
        data=b"data: x\n\n", forwarded=1, comments_dropped=3
    )


def test_empty_batch() -> None:
    assert normalizer().batch([]) == Batch()


# --- forwarding and terminal events ------------------------------------------------------


def test_events_are_forwarded_with_every_field() -> None:
    items: list[Item] = [
        Event("a\nb", event="delta", id="1", retry=2000),
        Event("", id="2"),
        Event(None, id="3"),
    ]
    assert normalizer().batch(items) == Batch(
        data=(b"event: delta\nid: 1\nretry: 2000\ndata: a\ndata: b\n\nid: 2\ndata: \n\nid: 3\n\n"),
        forwarded=3,
    )


@pytest.mark.parametrize("name", ["done", "final"])
def test_terminal_by_event_name_ends_the_batch(name: str) -> None:
    items: list[Item] = [
        Event("x"),
        Comment("c1"),
        Event('{"ok":true}', event=name),
        Event("after"),
        Comment("c2"),
        Event("[DONE]"),
    ]
    assert normalizer().batch(items) == Batch(
        data=b"data: x\n\n" + KEEPALIVE + f'event: {name}\ndata: {{"ok":true}}\n\n'.encode(),
        forwarded=2,
        comments_converted=1,
        terminal=True,
    )


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        ("[DONE]", b"data: [DONE]\n\n"),
        ("  [DONE]  ", b"data:   [DONE]  \n\n"),
        ("\t[DONE]\n", b"data: \t[DONE]\ndata: \n\n"),
    ],
)
def test_terminal_by_data_sentinel_ignores_surrounding_whitespace(data: str, wire: bytes) -> None:
    batch = normalizer("pass").batch([Event(data), Comment("after"), Event("after")])
    assert batch == Batch(data=wire, forwarded=1, terminal=True)


@pytest.mark.parametrize(
    "event",
    [
        Event("[DONE] more"),
        Event("[done]"),
        Event("done"),
        Event("final"),
        Event("x", event="message"),
        Event("x", event="Done"),
        Event(None),
        Event(None, event="delta"),
    ],
)
def test_not_terminal(event: Event) -> None:
    n = normalizer()
    assert n.is_terminal(event) is False
    assert n.batch([event]).terminal is False


def test_terminal_rules_come_from_config() -> None:
    n = normalizer(terminal=Terminal(events=("end",), data=("<EOF>",)))
    assert n.is_terminal(Event("x", event="end")) is True
    assert n.is_terminal(Event(" <EOF> ")) is True
    assert n.is_terminal(Event("x", event="done")) is False
    assert n.is_terminal(Event("[DONE]")) is False
    off = normalizer(terminal=Terminal(events=(), data=()))
    assert off.batch([Event("[DONE]", event="done"), Event("y")]).forwarded == 2


# --- heartbeats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "last_write", "interval", "due"),
    [
        (115.0, 100.0, 15.0, True),
        (114.999, 100.0, 15.0, False),
        (100.0, 100.0, 15.0, False),
        (1000.0, 100.0, 15.0, True),
        (100.25, 100.0, 0.25, True),
        (100.0, 100.0, 0.0, False),
        (1e9, 0.0, 0.0, False),
    ],
)
def test_heartbeat_due(now: float, last_write: float, interval: float, due: bool) -> None:
    assert heartbeat_due(now, last_write, interval) is due


# --- endings the sidecar writes --------------------------------------------------------


KA = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


@pytest.mark.parametrize(
    ("retry_ms", "open_event", "keepalive", "wire"),
    [
        # retry: never alone in a block: real parsers dispatch it as an empty message
        (3000, None, KA, b"retry: 3000\n" + KA),
        (3000, None, None, b""),
        (3000, None, b": keepalive\n\n", b""),  # a comment cannot carry it
        (None, "open", KA, b'event: open\ndata: {"type":"open"}\n\n'),
        (3000, "open", KA, b'retry: 3000\nevent: open\ndata: {"type":"open"}\n\n'),
        (0, None, KA, b"retry: 0\n" + KA),
        (None, None, KA, b""),
        (None, "", KA, b""),
    ],
)
def test_opening(
    retry_ms: int | None, open_event: str | None, keepalive: bytes | None, wire: bytes
) -> None:
    out = opening(retry_ms, open_event, keepalive)
    assert out == wire
    # Every block of it is an event with data: nothing a parser turns into an empty event.
    for block in out.split(b"\n\n")[:-1]:
        assert b"\ndata: " in b"\n" + block


# --- raw_events: the bytes-only test of the fast path ------------------------------


def _raw(comments: str = "convert", **limits: int):
    from sidecar.config import Limits

    return Normalizer(comments, Keepalive(), Terminal()).raw_events(Limits(**limits))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("block", "comments", "events"),
    [
        (b"data: a\n\nevent: token\ndata: b\n\n", "convert", 2),
        (b"id: 7\ndata: a\ndata: b\n\n", "convert", 1),
        (b"data: caf\xc3\xa9\n\n", "convert", 1),
        (b"data: a\r\n\r\n", "convert", -1),
        (b": ping\ndata: a\n\n", "convert", -1),
        (b"data: a\n\n: ping\n\n", "drop", -1),
        (b"data: a\n\n: ping\n\n", "pass", -1),  # a comment is no event to count
        (b"event: done\ndata: x\n\n", "convert", -1),
        (b"data: [DONE]\n\n", "convert", -1),
        (b"data: I am done here\n\n", "convert", 1),  # one event: judged exactly
        (b"id: 7\nevent: token\ndata: done\n\n", "convert", 1),  # a marker only as data text
        (b"data:  [DONE] \n\n", "convert", -1),  # the sentinel, stripped as the decoder does
        (b"data: \x1c[DONE]\n\n", "convert", -1),  # str.strip() takes \x1c as well
        (b"event: final\ndata: x\n\n", "convert", -1),
        (b"event:done\ndata: x\n\n", "convert", -1),
        (b"event:  done\ndata: x\n\n", "convert", 1),  # type " done": one space is the separator
        (b"id: 1\rdata: x\n\n", "convert", -1),  # CR inside the one-event shape
        (b"data: x\n\ndata: I am done\n\n", "convert", -1),  # several events: conservative
        (b"data: \xff\n\n", "convert", -1),
        # events that are not dispatched must not be counted: the decoder counts them
        (b"retry: 3000\n\n", "convert", -1),
        (b"foo: 1\n\nfoo: 2\n\n", "convert", -1),
        (b"data: a\n\n\n\n", "convert", -1),  # a run of blank lines
        (b"\n\ndata: a\n\n", "convert", -1),
        (b"id: metadata\n\n", "convert", -1),  # "data" inside a value is no data line
        # a second BOM first in a block would be taken by the client as the stream's own
        (b"\xef\xbb\xbfdata: x\n\n", "convert", -1),
    ],
)
def test_raw_events(block: bytes, comments: str, events: int) -> None:
    assert _raw(comments)(block) == events


def test_raw_events_leaves_large_blocks_to_the_decoder() -> None:
    check = _raw(max_event_bytes=64, max_line_bytes=1024)
    assert check(b"data: " + b"x" * 50 + b"\n\n") == 1
    assert check(b"data: " + b"x" * 60 + b"\n\n") == -1


@pytest.mark.parametrize(
    "limits", [{"max_event_bytes": 64, "max_line_bytes": 1024}, {"max_line_bytes": 64}]
)
def test_raw_events_takes_a_block_of_exactly_the_smaller_cap(limits: dict[str, int]) -> None:
    check = _raw(**limits)
    assert check(b"data: " + b"x" * 56 + b"\n\n") == 1  # 64 bytes
    assert check(b"data: " + b"x" * 57 + b"\n\n") == -1


def test_raw_events_counts_data_lines_against_blank_lines() -> None:
    check = _raw()
    assert check(b"data: a\n\n") == 1  # a block starting with its data line
    assert check(b"id: 1\ndata: a\n\ndata: b\n\n") == 2
    assert check(b"id: 1\n\ndata: a\n\n") == -1  # an event of no data is not dispatched
    # A run of blank lines is left to the decoder even where the counts agree.
    assert check(b"data: a\ndata: b\n\n\ndata: c\n\n") == -1


# --- comments rewritten on bytes (the fast path's second try) ---------------------------


def _decoded_events(data: bytes) -> list[Item]:
    return Decoder().feed(data)


@pytest.mark.parametrize(
    ("block", "comments", "expected"),
    [
        # the bench's shape: an event, then a ping in the same write
        (b"id: 1\ndata: a\n\n: ping\n\n", "convert", (1, 1, 0)),
        # consecutive comment events (and blank-line runs) become one keepalive
        (b": a\n\n\n\n: b\n:c\n\ndata: x\n\n: d\n\n", "convert", (1, 4, 0)),
        (b"data: a\n\n: ping\n\n", "drop", (1, 0, 1)),
        (b": only\n\n", "drop", (0, 0, 1)),
    ],
)
def test_rewrite_comments_matches_the_decoder_path(
    block: bytes, comments: str, expected: tuple[int, int, int]
) -> None:
    n = normalizer(comments)
    fast = n.rewrite_comments(block)
    slow = n.batch(Decoder().feed(block))
    assert fast is not None
    assert (fast.forwarded, fast.comments_converted, fast.comments_dropped) == expected
    assert (slow.forwarded, slow.comments_converted, slow.comments_dropped) == expected
    assert fast.data == slow.data


@pytest.mark.parametrize(
    ("block", "comments"),
    [
        (b": x\ndata: a\n\n", "convert"),  # a field after a comment in one event
        (b"data: a\n\n: ping\n\n", "pass"),  # passed comments are counted by the decoder
        (b": ping\r\n\r\n", "convert"),  # CR: the decoder's job
        (b"data: 1\n\n: \xff\n\n", "convert"),  # invalid UTF-8 ends the stream (decoder)
        (b"retry: 10\n\n: ping\n\n", "convert"),  # dispatched or not: the decoder knows
        (b"foo: 1\n\n: ping\n\n", "convert"),
    ],
)
def test_rewrite_comments_declines_what_it_cannot_keep_in_order(
    block: bytes, comments: str
) -> None:
    assert normalizer(comments).rewrite_comments(block) is None


def test_rewrite_comments_leaves_a_field_then_comment_for_the_raw_check() -> None:
    n = normalizer("convert")
    batch = n.rewrite_comments(b"data: a\n: late\n\n")
    assert batch is not None
    assert batch.data == b"data: a\n: late\n\n"
    assert _raw()(batch.data) == -1  # so the caller falls back to the decoder


_piece = st.one_of(
    st.lists(st.from_regex(r"[a-z]{0,6}", fullmatch=True), min_size=1, max_size=3).map(
        lambda ls: "\n".join(f": {x}" for x in ls)
    ),
    st.from_regex(r"data: [a-z ]{0,8}", fullmatch=True),
    st.from_regex(r"event: [a-z]{1,5}\ndata: [a-z]{0,5}", fullmatch=True),
    st.just(""),  # a run of blank lines
)


@settings(max_examples=examples(1.5))
@given(
    pieces=st.lists(_piece, min_size=1, max_size=8), comments=st.sampled_from(["convert", "drop"])
)
def test_rewrite_comments_is_the_decoder_path_on_bytes(pieces: list[str], comments: str) -> None:
    block = "".join(p + "\n\n" for p in pieces).encode()
    n = normalizer(comments)
    fast = n.rewrite_comments(block)
    assert fast is not None  # only whole comment events and plain events here
    slow = n.batch(Decoder().feed(block))
    assert _decoded_events(fast.data) == _decoded_events(slow.data)
    # Byte for byte, too: every field here is written as the encoder writes it.
    assert fast.data == slow.data
    assert (fast.forwarded, fast.comments_converted, fast.comments_dropped) == (
        slow.forwarded,
        slow.comments_converted,
        slow.comments_dropped,
    )


@pytest.mark.parametrize("repeat", [1, 40])  # one regex pass, or needle by needle
@pytest.mark.parametrize(
    "bad", [b"data: x\r\n\r\n", b": c\n\n", b"data: [DONE]\n\n", b"event: done\ndata: 1\n\n"]
)
def test_raw_events_finds_the_same_in_small_and_large_blocks(repeat: int, bad: bytes) -> None:
    good = b"id: 1\ndata: hello\n\n" * repeat
    assert _raw()(good) == repeat
    assert _raw()(good + bad) == -1


# --- resume on: ids and log entries ---------------------------------------------------


def test_id_source_counts_from_one_under_its_nonce() -> None:
    ids = IdSource("n0nce")
    assert (ids.nonce, ids.seq) == ("n0nce", 0)
    assert [ids.next(), ids.next(), ids.next()] == [(1, "n0nce-1"), (2, "n0nce-2"), (3, "n0nce-3")]
    assert ids.seq == 3


def test_batch_with_ids_numbers_events_and_logs_them() -> None:
    ids = IdSource("n")
    items: list[Item] = [
        Comment("a"),
        Comment("b"),
        Event("x"),
        Event("y", event="tok", id="up-7", retry=5),  # the upstream's own id wins
        Comment("c"),
        Event("[DONE]"),
        Event("after the end"),
    ]
    x = b"id: n-2\ndata: x\n\n"
    y = b"event: tok\nid: up-7\nretry: 5\ndata: y\n\n"
    done = b"id: n-5\ndata: [DONE]\n\n"
    assert normalizer("convert").batch(items, ids) == Batch(
        data=KEEPALIVE + x + y + KEEPALIVE + done,
        forwarded=3,
        comments_converted=3,
        terminal=True,
        entries=[
            Entry(1, "", KEEPALIVE),  # one keepalive for two comments: one entry
            Entry(2, "n-2", x),
            Entry(3, "up-7", y),
            Entry(4, "", KEEPALIVE),
            Entry(5, "n-5", done, terminal=True),
        ],
    )
    assert ids.seq == 5  # nothing after the terminal event took a number
    assert normalizer().batch([Event("z")], ids).entries == [
        Entry(6, "n-6", b"id: n-6\ndata: z\n\n")
    ]


@pytest.mark.parametrize(
    ("comments", "data"),
    [("pass", b": a\nid: r-1\ndata: x\n\n"), ("drop", b"id: r-1\ndata: x\n\n")],
)
def test_batch_with_ids_logs_no_passed_or_dropped_comment(comments: str, data: bytes) -> None:
    ids = IdSource("r")
    batch = normalizer(comments).batch([Comment("a"), Event("x")], ids)
    assert batch.data == data
    assert batch.entries == [Entry(1, "r-1", b"id: r-1\ndata: x\n\n")]
    assert not batch.terminal


def test_batch_with_ids_and_terminal_by_name() -> None:
    batch = normalizer().batch([Event("1", event="done")], IdSource("t"))
    assert batch.terminal
    assert batch.entries == [Entry(1, "t-1", b"event: done\nid: t-1\ndata: 1\n\n", True)]
