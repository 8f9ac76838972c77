"""Who may replace a session's live stream (sidecar/sessions/base.py)."""

from __future__ import annotations

from sidecar.sessions.base import may_replace

ALICE, MALLORY = "a1" * 32, "b2" * 32


def test_only_the_same_credentials_replace_a_bound_owner() -> None:
    assert may_replace(ALICE, ALICE)
    assert not may_replace(ALICE, MALLORY)
    assert not may_replace(ALICE, "")


def test_an_owner_bound_to_nothing_may_be_replaced_by_anyone() -> None:
    # bind: [], or a Redis claim written before claims carried a binding.
    assert may_replace("", MALLORY)
    assert may_replace("", "")
