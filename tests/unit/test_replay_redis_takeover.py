"""The takeover script's reply, decoded (sidecar/replay/redis_takeover.py)."""

from __future__ import annotations

from sidecar.replay.base import Entry
from sidecar.replay.redis_takeover import Claimed, claimed


def test_no_takeover_says_why():
    assert claimed(0) == "owned"
    assert claimed(-1) == "impossible"


def test_a_won_takeover_carries_the_runs_state():
    raw = [[b"0-7", [b"i", b"up-7", b"d", b"data: 7\n\n", b"t", b"0"]]]
    got = claimed([3, b"req", b"cur", b"100", b"4096", raw])
    assert got == Claimed("3", b"req", b"cur", (100, 4096), [Entry(7, "up-7", b"data: 7\n\n")])
    assert isinstance(got, Claimed)
    assert got.last_seq == 7


def test_an_empty_log_has_no_last_seq():
    got = claimed([2, b"req", b"cur", b"1", b"1", []])
    assert isinstance(got, Claimed)
    assert got.last_seq == 0
