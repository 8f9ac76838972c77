"""The in-process session store (sidecar/sessions/memory.py): policies and credential bindings."""

from __future__ import annotations

import pytest

from sidecar.errors import SessionConflict, SessionForbidden
from sidecar.sessions.memory import MemorySessionStore

ALICE, MALLORY = "a1" * 32, "b2" * 32  # fingerprints (sessions/binding.py)


class Recorder:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def stop(self, code: str) -> None:
        self.codes.append(code)


async def test_a_replace_with_other_credentials_is_refused_and_the_owner_goes_on() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    owner = Recorder()
    held = await store.claim("chat", "k", "replace", owner, ALICE)
    assert held.binding == ALICE
    with pytest.raises(SessionForbidden):
        await store.claim("chat", "k", "replace", Recorder(), MALLORY)
    assert owner.codes == []
    assert store.owner("chat", "k") is held


async def test_the_same_credentials_replace_and_the_newcomer_is_bound_in_turn() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    first = Recorder()
    await store.claim("chat", "k", "replace", first, ALICE)
    second = await store.claim("chat", "k", "replace", Recorder(), ALICE)
    assert second.replaced
    assert first.codes == ["replaced"]
    with pytest.raises(SessionForbidden):
        await store.claim("chat", "k", "replace", Recorder(), MALLORY)
    assert store.owner("chat", "k") is second


async def test_an_owner_bound_to_nothing_is_replaced_by_anyone() -> None:
    # bind: [] on the route: every request's fingerprint is "".
    store = MemorySessionStore(replace_wait=0.01)
    owner = Recorder()
    await store.claim("chat", "k", "replace", owner, "")
    newer = await store.claim("chat", "k", "replace", Recorder(), MALLORY)
    assert newer.replaced
    assert owner.codes == ["replaced"]


async def test_reject_answers_a_conflict_whatever_the_credentials() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    await store.claim("chat", "k", "reject", Recorder(), ALICE)
    for binding in (ALICE, MALLORY):
        with pytest.raises(SessionConflict):
            await store.claim("chat", "k", "reject", Recorder(), binding)


async def test_a_released_session_is_free_for_other_credentials() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    held = await store.claim("chat", "k", "replace", Recorder(), ALICE)
    await store.release(held)
    claim = await store.claim("chat", "k", "replace", Recorder(), MALLORY)
    assert not claim.replaced


async def test_a_stop_with_other_credentials_is_refused_and_the_owner_goes_on() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    owner = Recorder()
    await store.claim("chat", "k", "replace", owner, ALICE)
    for binding in (MALLORY, ""):
        with pytest.raises(SessionForbidden):
            await store.stop("chat", "k", binding)
    assert owner.codes == []
    assert await store.stop("chat", "k", ALICE)
    assert owner.codes == ["stopped"]


async def test_an_owner_bound_to_nothing_is_stopped_by_anyone() -> None:
    store = MemorySessionStore(replace_wait=0.01)
    owner = Recorder()
    await store.claim("chat", "k", "replace", owner, "")
    assert await store.stop("chat", "k", MALLORY)
    assert owner.codes == ["stopped"]
