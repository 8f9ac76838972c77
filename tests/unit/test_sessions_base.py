"""Who may replace or stop a session's live stream (sidecar/sessions/base.py)."""

from __future__ import annotations

from sidecar.sessions.base import may_end

ALICE, MALLORY = "a1" * 32, "b2" * 32


def test_only_the_same_credentials_end_a_bound_owner() -> None:
    assert may_end(ALICE, ALICE)
    assert not may_end(ALICE, MALLORY)
    assert not may_end(ALICE, "")


def test_an_owner_bound_to_nothing_may_be_ended_by_anyone() -> None:
    # bind: [], or a Redis claim written before claims carried a binding.
    assert may_end("", MALLORY)
    assert may_end("", "")
