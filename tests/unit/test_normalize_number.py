"""Normalizer.number at its edges: which id lines leave a block to the decoder.

The property test (tests/property/test_normalize_number.py) checks any block
against the decoder's numbering; these pin the id-line cases one by one.
"""

from __future__ import annotations

import pytest

from sidecar.config import Keepalive, Terminal
from sidecar.normalize import Entry, IdSource, Normalizer

NORMALIZER = Normalizer("convert", Keepalive(), Terminal())


@pytest.mark.parametrize(
    "block",
    [
        b"data: x\nid\ndata: y\n\n",  # a bare `id` line resets the id: the decoder's rule
        b"data: x\nid\n\n",  # the same as the event's last line
        b"data: x\nid: 7\n\n",  # an id line after the first
        b"id: 7\ndata: x\nid: 8\n\n",  # two id lines
        b"id\ndata: x\n\n",  # a bare `id` line first
        b"id: \ndata: x\n\n",  # an empty id
        b"id: a\x00b\ndata: x\n\n",  # NUL: the decoder ignores such an id
        b"event: tok\n\n",  # no data line: not dispatched, so no seq
        # refused at a later event: the events before it take no seq either
        *(
            b"id: 1\ndata: a\n\ndata: b\n\n" + bad
            for bad in (b"data: x\nid: 7\n\n", b"id: \ndata: x\n\n", b"event: tok\n\n")
        ),
        # not a block of complete events
        b"id: 1\ndata: a",
        b"id: 1\ndata: a\n\nid: 2\ndata: b\n",
    ],
)
def test_id_lines_the_decoder_must_judge_leave_the_block_to_it(block: bytes) -> None:
    ids = IdSource("n")
    assert NORMALIZER.number(block, ids) is None
    assert ids.seq == 0  # nothing numbered


def test_events_that_all_keep_their_own_ids_go_as_the_block_came() -> None:
    ids = IdSource("n")
    block = b"id: up-1\ndata: a\n\nid: up-2\nevent: tok\ndata: b\n\n"
    batch = NORMALIZER.number(block, ids)
    assert batch is not None
    assert batch.data is block  # no copy
    assert batch.entries == [
        Entry(1, "up-1", b"id: up-1\ndata: a\n\n"),
        Entry(2, "up-2", b"id: up-2\nevent: tok\ndata: b\n\n"),
    ]
    assert ids.seq == 2


def test_an_events_own_first_id_is_kept_and_the_others_get_ours() -> None:
    ids = IdSource("n")
    batch = NORMALIZER.number(b"id: up-1\ndata: a\n\ndata: b\n\n", ids)
    assert batch is not None
    assert batch.entries == [
        Entry(1, "up-1", b"id: up-1\ndata: a\n\n"),
        Entry(2, "n-2", b"id: n-2\ndata: b\n\n"),
    ]
    assert batch.data == b"id: up-1\ndata: a\n\nid: n-2\ndata: b\n\n"
    assert batch.forwarded == 2


@pytest.mark.parametrize(
    "block",
    [
        b"id: 7\ndata: x\nid: 8\n\n",  # the one-match shape, then a second id line
        b"id: a\x00b\ndata: x\n\n",  # NUL in the id of the one-match shape
        b"id: \ndata: x\n\n",  # an empty id of that shape
        b"id: 7\n\n",  # an id and no data line
    ],
)
def test_one_event_the_decoder_must_judge_takes_no_seq(block: bytes) -> None:
    ids = IdSource("n")
    assert NORMALIZER.number_one(block, ids) is None
    assert ids.seq == 0


def test_one_event_with_its_own_id_is_its_entry_as_it_came() -> None:
    ids = IdSource("n")
    for block, own in (
        (b"id: up-1\ndata: a\n\n", "up-1"),  # the steady shape: one match
        (b"id:up-2\ndata: a\n\n", "up-2"),  # no space after the colon
        (b"id: up-3\nevent: tok\ndata: a\ndata: b\n\n", "up-3"),  # other fields: the long way
        (b"event: tok\nid: up-4\ndata: a\n\n", None),  # an id line not first: the decoder's
    ):
        entry = NORMALIZER.number_one(block, ids)
        if own is None:
            assert entry is None
            continue
        assert entry is not None
        assert entry.event_id == own
        assert entry.data is block  # sent without a copy
    assert ids.seq == 3


def test_one_event_without_an_id_gets_ours_first() -> None:
    ids = IdSource("n")
    entry = NORMALIZER.number_one(b"data: a\n\n", ids)
    assert entry == Entry(1, "n-1", b"id: n-1\ndata: a\n\n")
    batch = NORMALIZER.number(b"data: b\n\n", ids)
    assert batch is not None
    assert (batch.forwarded, batch.entries) == (1, [Entry(2, "n-2", b"id: n-2\ndata: b\n\n")])
