"""The Redis log's local tail holds what a list under the same caps would, for any appends.

``LocalTail`` is the run's own entries in its process (its followers read
them there, not from Redis), evicted by the rule of the Redis script and of
the in-process log: oldest first while over either cap, never the newest.
Whatever the appends, batch by batch (``add``) or event by event as the
splice's steady reads go in (``add_one``), what it holds, counts and finds
by id must be the plain rule's (tests/property/test_replay_memory.py's
model; an id no longer held is Redis's to answer, so no boundary here)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.replay.base import Entry
from sidecar.replay.redis_follow import LocalTail
from tests.budget import examples
from tests.property.test_replay_memory import Model, batches, entries_of


@given(
    batches,
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=400),
    st.lists(st.booleans(), max_size=300),
)
@settings(max_examples=examples(2), deadline=None)
def test_the_tail_holds_what_the_plain_rule_holds(
    appends: list[list[tuple[str, int]]], max_events: int, max_bytes: int, one_by_one: list[bool]
) -> None:
    tail = LocalTail(max_events, max_bytes)
    model = Model(max_events, max_bytes)
    seq = 0
    for n, batch in enumerate(appends):
        entries = entries_of(batch, seq)
        seq += len(entries)
        if n < len(one_by_one) and one_by_one[n]:
            for entry in entries:
                tail.add_one(entry, entry.seq, len(entry.data))
        else:
            tail.add(entries)
        model.append(entries)
        assert list(tail.entries) == model.held
        assert tail.bytes == model.bytes()
        assert tail.last_seq == seq
        for event_id in ("a", "b", "c", "7", "", "nope"):
            held = model.after(event_id) if event_id in {e.event_id for e in model.held} else None
            assert tail.after_id(event_id) == held
        for after_seq in {0, seq - 1, seq - len(model.held), seq - len(model.held) - 1}:
            if 0 <= after_seq < seq:
                assert tail.after(after_seq) == [e for e in model.held if e.seq > after_seq]


def test_a_retried_batch_is_not_held_twice() -> None:
    """``add`` skips what it has (a retried append); ``add_one`` is for new entries only."""
    tail = LocalTail(10, 1000)
    first = Entry(1, "a", b"x\n\n")
    tail.add_one(first, 1, 3)
    tail.add([first, Entry(2, "b", b"y\n\n")])
    assert [e.seq for e in tail.entries] == [1, 2]
    assert tail.bytes == 6
