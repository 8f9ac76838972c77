"""The Redis session store's pure parts: key names and the replace channel's messages."""

from __future__ import annotations

import asyncio
import json

from sidecar.sessions.redis import RedisSessionStore, fence_key, owner_key
from sidecar.sessions.redis_leases import (
    LOST,
    REASSERTED,
    RENEWED,
    STOP_MARKED,
    Health,
    Held,
    Leases,
)
from sidecar.sessions.redis_scripts import bound_to, owner_value, stop_key


class Recorder:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def stop(self, code: str) -> None:
        self.codes.append(code)


def test_key_names():
    assert owner_key("sse-sidecar:", "chat", "u-1") == "sse-sidecar:session:{chat:u-1}"
    assert fence_key("sse-sidecar:", "chat", "u-1") == "sse-sidecar:fence:{chat:u-1}"
    # Same hash tag as the owner key: the cluster runs STOP and RENEW on one slot.
    assert stop_key("sse-sidecar:", "chat", "u-1") == "sse-sidecar:stop:{chat:u-1}"


def test_an_owner_value_carries_its_binding_after_the_last_slash():
    # CLAIM reads it back with '/(%x+)$'; unbound values keep the old form.
    fingerprint = "0f" * 32
    assert owner_value("ab12", 7, fingerprint) == f"ab12:7/{fingerprint}"
    assert owner_value("ab12", 7, "") == "ab12:7"
    assert bound_to(owner_value("ab12", 7, fingerprint)) == fingerprint
    # Unbound, or written before bindings (always ending in :SEQ): nothing to compare.
    for unbound in ("ab12:7", "pod/7f:3"):
        assert bound_to(unbound) == ""


def test_routes_and_keys_with_colons_never_share_a_name():
    names = {
        owner_key("p:", "a", "b:c"),
        owner_key("p:", "a:b", "c"),
        owner_key("p:", "a%3Ab", "c"),
    }
    assert len(names) == 3


def store_holding(value: str) -> tuple[RedisSessionStore, Recorder, Held]:
    store = RedisSessionStore("redis://127.0.0.1:1/0", owner="me")
    holder = Recorder()
    entry = Held("chat", "k", value, holder, token=3)
    store._held[value] = entry
    return store, holder, entry


def message(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_replace_message_stops_the_holder_of_that_value_once():
    store, holder, _ = store_holding("me:1")
    store._on_message(message(op="replace", route="chat", key="k", value="other:9"))
    assert holder.codes == []
    for _ in range(2):
        store._on_message(message(op="replace", route="chat", key="k", value="me:1"))
    assert holder.codes == ["replaced"]


def test_a_claim_that_is_letting_go_is_not_stopped_again():
    store, holder, entry = store_holding("me:1")
    entry.releasing = True
    store._on_message(message(op="replace", route="chat", key="k", value="me:1"))
    assert holder.codes == []


def test_released_message_wakes_its_waiter_and_is_remembered():
    store, _, _ = store_holding("me:1")
    waiter = asyncio.Event()
    store._waiters["other:4"] = waiter
    store._on_message(message(op="released", route="chat", key="k", value="other:4"))
    assert waiter.is_set()
    assert "other:4" in store._released


def test_foreign_or_broken_messages_are_ignored():
    store, holder, _ = store_holding("me:1")
    for data in (b"not json", b"[]", b"{}", message(op="replace"), message(op="x", value="me:1")):
        store._on_message(data)
    store._on_message(message(op="replace", value=["me:1"]))
    assert holder.codes == []


def test_each_renewal_answer_has_its_own_outcome():
    let_go: list[Held] = []
    leases = Leases("p:", 3.0, None, lambda: [], Health(), let_go.append)  # no script: no Redis
    entries = [Held("chat", f"k{n}", f"me:{n}", Recorder(), token=1) for n in range(5)]
    entries[4].releasing = True  # let go while its renewal was on its way
    leases._settle(entries, [LOST, RENEWED, REASSERTED, STOP_MARKED, REASSERTED])
    codes = [e.holder.codes for e in entries]
    assert codes == [["replaced"], [], [], ["stopped"], []]
    assert let_go == [entries[4]]  # its re-set key is deleted again
