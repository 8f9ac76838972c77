"""Session bindings with the Redis backend: a replace needs the live stream's credentials.

The comparison runs inside the claim script, so no replica can pass a check
that another replica's claim makes stale before it writes. A claim written
by a version that stored no binding stays replaceable by anyone (rolling
upgrades). A real redis-server on loopback (tests/fixtures_redis.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from sidecar.errors import SessionConflict, SessionForbidden
from sidecar.sessions.base import Claim
from sidecar.sessions.redis_scripts import stop_key
from tests.conftest import Script
from tests.integration.streams import read_stream
from tests.integration.test_sessions_redis import (
    ROUTE,
    FakeHolder,
    crash,
    eventually,
    key_of,
    redis_config,
    stores,
)

pytestmark = pytest.mark.redis

__all__ = ["stores"]  # the fixture, from the single-server module

ALICE, MALLORY = "a1" * 32, "b2" * 32  # fingerprints (sessions/binding.py)


async def next_message(pubsub) -> object:
    return await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)


@pytest.mark.parametrize("same_process", [True, False])
async def test_a_replace_with_other_credentials_is_refused_and_the_owner_goes_on(
    stores, raw, same_process
):
    a = await stores(lease=30.0)
    b = a if same_process else await stores(lease=30.0)
    owner = FakeHolder(a)
    owner.claim = await a.claim(ROUTE, "k", "replace", owner, ALICE)
    value = await raw.get(key_of(a, "k"))
    assert value.endswith("/" + ALICE)
    pubsub = raw.pubsub()
    await pubsub.subscribe(a.channel)
    await pubsub.get_message(timeout=1.0)
    for binding in (MALLORY, ""):
        with pytest.raises(SessionForbidden):
            await b.claim(ROUTE, "k", "replace", FakeHolder(), binding)
    assert await raw.get(key_of(a, "k")) == value
    assert await next_message(pubsub) is None  # no replace message went out
    await pubsub.aclose()
    assert owner.codes == []
    assert list(b._held) == ([value] if same_process else [])  # nothing of the refused ones
    assert len(b._owned) == (1 if same_process else 0)


async def test_the_same_credentials_replace_across_processes(stores, raw):
    a, b = await stores(lease=30.0), await stores(lease=30.0)
    old_holder = FakeHolder(a)
    old = await a.claim(ROUTE, "k", "replace", old_holder, ALICE)
    old_holder.claim = old
    new = await b.claim(ROUTE, "k", "replace", FakeHolder(), ALICE)
    assert new.replaced
    assert old_holder.codes == ["replaced"]
    value = await raw.get(key_of(b, "k"))
    assert value.startswith(b.owner_id + ":")
    assert value.endswith("/" + ALICE)


async def test_reject_answers_a_conflict_whatever_the_credentials(stores):
    a, b = await stores(), await stores()
    await a.claim(ROUTE, "k", "reject", FakeHolder(), ALICE)
    for binding in (ALICE, MALLORY):
        with pytest.raises(SessionConflict):
            await b.claim(ROUTE, "k", "reject", FakeHolder(), binding)


async def test_concurrent_claims_with_two_credentials_leave_one_of_them_owning(stores, raw):
    # Whichever lands first owns the session; every claim with the other
    # credentials is refused, in both processes, however they interleave.
    a, b = await stores(replace_wait=0.05), await stores(replace_wait=0.05)
    for round_ in range(10):
        key = f"k{round_}"
        bindings = [ALICE if i % 4 < 2 else MALLORY for i in range(12)]
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).claim(ROUTE, key, "replace", FakeHolder(), binding)
                for i, binding in enumerate(bindings)
            ),
            return_exceptions=True,
        )
        won = {w for w, r in zip(bindings, results, strict=True) if isinstance(r, Claim)}
        assert len(won) == 1, results
        (binding,) = won
        losers = [r for r in results if not isinstance(r, Claim)]
        assert len(losers) == 6
        assert all(isinstance(r, SessionForbidden) for r in losers)
        assert (await raw.get(key_of(a, key))).endswith("/" + binding)


async def test_a_claim_written_without_a_binding_may_be_replaced_by_anyone(stores, raw):
    # What a replica of a version before bindings leaves in the owner key
    # during a rolling upgrade: replaced as it was, neither refused nor a crash.
    store = await stores()
    await raw.set(key_of(store, "k"), "0123456789abcdef:7", px=30_000)
    pubsub = raw.pubsub()
    await pubsub.subscribe(store.channel)
    await pubsub.get_message(timeout=1.0)
    claim = await store.claim(ROUTE, "k", "replace", FakeHolder(), MALLORY)
    assert claim.replaced
    message = await next_message(pubsub)
    assert message is not None
    assert json.loads(message["data"])["value"] == "0123456789abcdef:7"
    await pubsub.aclose()
    assert (await raw.get(key_of(store, "k"))).endswith("/" + MALLORY)


async def test_a_dead_replicas_bound_session_is_free_for_anyone_after_its_lease(stores):
    lease = 1.0
    a, b = await stores(lease=lease), await stores(lease=lease)
    await a.claim(ROUTE, "k", "replace", FakeHolder(), ALICE)
    await crash(a)
    with pytest.raises(SessionForbidden):
        await b.claim(ROUTE, "k", "replace", FakeHolder(), MALLORY)
    taken: list[Claim] = []

    async def claimed() -> bool:
        try:
            taken.append(await b.claim(ROUTE, "k", "replace", FakeHolder(), MALLORY))
        except SessionForbidden:
            return False
        return True

    assert await eventually(claimed, within=3.0, every=0.05) <= lease + 0.2
    assert not taken[0].replaced  # the lease had freed it: nobody to replace


@pytest.mark.parametrize("same_process", [True, False])
async def test_a_stop_with_other_credentials_is_refused_and_leaves_no_mark(
    stores, raw, same_process
):
    a = await stores(lease=30.0)
    b = a if same_process else await stores(lease=30.0)
    owner = FakeHolder()
    await a.claim(ROUTE, "k", "replace", owner, ALICE)
    for binding in (MALLORY, ""):
        with pytest.raises(SessionForbidden):
            await b.stop(ROUTE, "k", binding)
    assert await raw.exists(stop_key(a.prefix, ROUTE, "k")) == 0
    assert owner.codes == []
    assert await b.stop(ROUTE, "k", ALICE)
    await eventually(lambda: owner.codes == ["stopped"], within=2.0)


async def test_a_claim_written_without_a_binding_may_be_stopped_by_anyone(stores, raw):
    store = await stores()
    await raw.set(key_of(store, "k"), "0123456789abcdef:7", px=30_000)
    assert await store.stop(ROUTE, "k", MALLORY)
    assert await raw.get(stop_key(store.prefix, ROUTE, "k")) == "0123456789abcdef:7"


# --- through the proxy: two sidecars sharing one Redis ----------------------------

KEY = {"X-Session-Key": "conv-1"}
ALICE_HEADERS = {**KEY, "Authorization": "Bearer alice-secret"}
MALLORY_HEADERS = {**KEY, "Authorization": "Bearer mallory"}
FIRST = b"data: 1\n\n"


async def test_a_replace_on_another_sidecar_needs_the_owners_credentials(
    redis_server, upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    a = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    b = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    old = asyncio.ensure_future(read_stream(a.http, "GET", a.url + "/s", headers=ALICE_HEADERS))
    await eventually(lambda: upstream.requests)
    await asyncio.sleep(0.05)
    refused = await read_stream(b.http, "GET", b.url + "/s", headers=MALLORY_HEADERS)
    assert refused.status == 403
    assert json.loads(refused.raw)["error"]["code"] == "session_forbidden"
    await asyncio.sleep(0.3)
    assert not old.done()  # Alice's stream goes on
    assert len(upstream.requests) == 1
    assert (
        'sse_sidecar_rejected_requests_total{reason="session_forbidden",route="test"} 1.0'
        in await b.metrics()
    )
    async with b.http.get(b.url + "/s", headers=ALICE_HEADERS) as mine:
        assert mine.status == 200
        got = await asyncio.wait_for(old, 2.0)
        assert got.error()["code"] == "replaced"
        assert await mine.content.readuntil(b"\n\n") == FIRST


async def test_a_stop_on_another_sidecar_needs_the_owners_credentials(
    redis_server, upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    a = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    b = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    reading = asyncio.ensure_future(read_stream(a.http, "GET", a.url + "/s", headers=ALICE_HEADERS))
    await eventually(lambda: upstream.requests)
    await asyncio.sleep(0.05)
    async with b.http.delete(b.url + "/s", headers=MALLORY_HEADERS) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "session_forbidden"
    await asyncio.sleep(0.3)
    assert not reading.done()
    async with b.http.delete(b.url + "/s", headers=ALICE_HEADERS) as resp:
        assert resp.status == 202
    got = await asyncio.wait_for(reading, 5)
    assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
