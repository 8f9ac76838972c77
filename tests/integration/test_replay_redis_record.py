"""The append record (sidecar/replay/redis_scripts.py) on a real Redis: entries come back as sent.

One argument carries a log's entries to the append script, which parses it
by the lengths it holds. So ids and data of any bytes (newlines, digits and
spaces that look like the record's own fields, non-ASCII), any cursor, and
any batching must come back from Redis exactly, read by another replica (a
second store, which has no local copy of the log).
"""

from __future__ import annotations

import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sidecar.replay.base import Entry
from sidecar.replay.redis import RedisReplayStore
from sidecar.replay.redis_scripts import append_head, append_record
from tests.budget import examples

pytestmark = pytest.mark.redis

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Bytes that mimic the record's own syntax, and anything else.
tricky = st.sampled_from([b"", b"\n", b"1 2 3 0\n", b"0\n", b" ", b"\x00", b"\xc3\xa9", b"9" * 12])
payloads = st.lists(st.one_of(tricky, st.binary(max_size=40)), max_size=4).map(b"".join)
ids = st.one_of(st.just(""), st.text(max_size=12).filter(lambda t: "\x00" not in t))


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[list[Entry]], bytes]:
    """A run's entries in batches (each batch one round), seq 1.., the last maybe terminal."""
    count = draw(st.integers(1, 12))
    made = [Entry(seq, draw(ids), draw(payloads)) for seq in range(1, count + 1)]
    if draw(st.booleans()):
        made[-1] = made[-1]._replace(terminal=True)
    cuts = sorted(draw(st.sets(st.integers(1, count - 1), max_size=4))) if count > 1 else []
    batches = [made[a:b] for a, b in zip([0, *cuts], [*cuts, count], strict=True)]
    return batches, draw(st.one_of(tricky, st.binary(max_size=20)))


@pytest.fixture
async def replicas(redis_server):
    """Two stores on one prefix (two replicas), and a plain client that reads bytes."""
    prefix = f"test-{secrets.token_hex(4)}:"
    made = [RedisReplayStore(redis_server.url, prefix=prefix) for _ in range(2)]
    for store in made:
        await store.start()
    plain = Redis.from_url(redis_server.url)
    yield (*made, plain)
    await plain.aclose()
    for store in made:
        await store.close()


@settings(SETTINGS, max_examples=examples(0.3))
@given(case=runs())
async def test_any_entries_and_cursor_come_back_from_redis_as_sent(replicas, case) -> None:
    batches, cursor = case
    owner, other, plain = replicas
    key = secrets.token_hex(4)
    log = await owner.open("chat", key, f"run{key}", 100, 1 << 20)
    log.keep_cursor(lambda: cursor)
    for batch in batches:  # each batch goes in its own round
        log.append_nowait(batch)
        await log.flush()
    sent = [e for batch in batches for e in batch]
    found = await other.find("chat", key)
    assert found is not None
    assert await found.read(0, 0) == sent
    # An empty cursor leaves the stored one as it was (there is none yet).
    assert await plain.hget(log.keys.index, "cur") == (cursor or None)


def test_a_record_states_every_length_it_holds():
    head = append_head("run1", "1", (1000, 4096))
    assert head == b"run1\n1\n1000\n4096\n"
    one = append_record(head, b"c\n", [Entry(7, "\u00e9", b"a\nb", terminal=True)])
    assert one == b"run1\n1\n1000\n4096\n2\nc\n7 2 3 1\n\xc3\xa9a\nb"
    two = append_record(head, b"", [Entry(1, "", b"k"), Entry(2, "x", b"")])
    assert two == b"run1\n1\n1000\n4096\n0\n1 0 1 0\nk2 1 0 0\nx"
