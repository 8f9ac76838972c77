"""Numbering on bytes (``Normalizer.number``) is the decoder path's numbering, for any block.

A resumable run's fast path gives each event of a read its id on the bytes,
without the decoder. Whatever block the raw check passes, the events a client
decodes from the numbered bytes, and the log entries, must be those of the
awaiting rule: decode the block, then ``Normalizer.batch`` with the same ids.
``None`` (the decoder decides) is always allowed; wrong ids never are.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import Keepalive, Limits, Terminal
from sidecar.normalize import IdSource, Normalizer
from sidecar.sse import Decoder, Event
from tests.budget import examples

text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=6)
id_values = st.one_of(text, st.sampled_from(["", " ", "7", "a\x00b", "  x"]))
line = st.one_of(
    st.builds(lambda sep, v: f"data{sep}{v}", st.sampled_from([": ", ":", ""]), text),
    st.builds(lambda sep, v: f"id{sep}{v}", st.sampled_from([": ", ":", ":  ", ""]), id_values),
    st.builds(lambda v: f"event: {v}", st.sampled_from(["tok", "delta", "x"])),
    st.builds(lambda v: f"retry: {v}", st.sampled_from(["10", "x", ""])),
    st.sampled_from(["ID: 3", "idx: 4", "id : 5", "foo: 1"]),
)
event = st.lists(line, min_size=1, max_size=4).map(lambda ls: "\n".join(ls) + "\n\n")
blocks = st.lists(event, min_size=1, max_size=4).map(lambda es: "".join(es).encode())

NORMALIZER = Normalizer("convert", Keepalive(), Terminal())
RAW = NORMALIZER.raw_events(Limits())


def decoded(data: bytes) -> list[Event]:
    items = Decoder().feed(data)
    return [item for item in items if isinstance(item, Event)]


def wire(events: list[Event]) -> list[tuple[str | None, str | None, str | None, int | None]]:
    return [(e.data, e.event, e.id, e.retry) for e in events]


@given(blocks)
@settings(max_examples=examples(4))
def test_numbered_bytes_decode_as_the_decoder_paths_batch(block: bytes) -> None:
    if RAW(block) < 0:
        return  # the raw check sends it to the decoder: nothing to number on bytes
    numbered = NORMALIZER.number(block, IdSource("run"))
    if numbered is None:
        return
    awaited = NORMALIZER.batch(Decoder().feed(block), IdSource("run"))
    assert wire(decoded(numbered.data)) == wire(decoded(awaited.data))
    assert [(e.seq, e.event_id) for e in numbered.entries] == [
        (e.seq, e.event_id) for e in awaited.entries
    ]
    assert numbered.forwarded == awaited.forwarded
    assert numbered.data == b"".join(e.data for e in numbered.entries)


def test_an_event_without_an_id_gets_the_runs_next_one() -> None:
    ids = IdSource("r")
    ids.next()
    batch = NORMALIZER.number(b"data: a\n\nevent: tok\ndata: b\n\n", ids)
    assert batch is not None
    assert [(e.seq, e.event_id) for e in batch.entries] == [(2, "r-2"), (3, "r-3")]
    assert batch.data == b"id: r-2\ndata: a\n\nid: r-3\nevent: tok\ndata: b\n\n"


def test_an_upstream_id_is_kept_byte_for_byte() -> None:
    batch = NORMALIZER.number(b"id: 41\ndata: a\n\nid:42\ndata: b\n\n", IdSource("r"))
    assert batch is not None
    assert [(e.seq, e.event_id) for e in batch.entries] == [(1, "41"), (2, "42")]
    assert batch.data == b"id: 41\ndata: a\n\nid:42\ndata: b\n\n"


def test_what_the_bytes_alone_cannot_settle_goes_to_the_decoder() -> None:
    ids = IdSource("r")
    for block in (
        b"data: a\nid: 4\n\n",  # an id line after the first
        b"id: 4\nid: 5\ndata: a\n\n",  # two ids: the last wins
        b"id:\ndata: a\n\n",  # an empty id: the decoder's rule, ours in its place
        b"id\ndata: a\n\n",  # the same, without the colon
        b"data: a\nid\n\n",
        b"id: a\x00b\ndata: x\n\n",  # an id with NUL is ignored (WHATWG 9.2.6)
        b"event: tok\n\n",  # no data line: not dispatched, no seq
    ):
        assert NORMALIZER.number(block, ids) is None, block
    assert ids.seq == 0  # nothing was numbered by a refusal
