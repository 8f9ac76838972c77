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
    ],
)
def test_id_lines_the_decoder_must_judge_leave_the_block_to_it(block: bytes) -> None:
    ids = IdSource("n")
    assert NORMALIZER.number(block, ids) is None
    assert ids.seq == 0  # nothing numbered


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
