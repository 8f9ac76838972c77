"""A stop with Redis that no message carries: the stop mark, read by the owner's next renewal.

The stop message is plain pub/sub, which Redis keeps no copy of; while the
owner's subscription is down it reaches nobody. The STOP script also leaves
a mark naming the owner's value, and the owner's RENEW returns 3 for it.
First the scripts against a real Redis, then two real sidecar processes
where the owner cannot hear the replace channel at all.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sidecar.sessions.redis_scripts import (
    CLAIM,
    RELEASE,
    RENEW,
    STOP,
    fence_key,
    owner_key,
    stop_key,
)
from tests.conftest import Script
from tests.integration.processes import SidecarProcess
from tests.integration.streams import read_stream
from tests.integration.test_sessions_redis import stores

__all__ = ["stores"]  # the store factory of the session tests

pytestmark = pytest.mark.redis

ROUTE, KEY = "chat", "k"
LEASE_MS = 3000
CHANNEL = "test:replace"


class Scripts:
    """The session scripts on a raw client, with one session's key names."""

    def __init__(self, raw: Redis) -> None:
        self.raw = raw
        prefix = f"test-{secrets.token_hex(4)}:"
        self.owner = owner_key(prefix, ROUTE, KEY)
        self.fence = fence_key(prefix, ROUTE, KEY)
        self.mark = stop_key(prefix, ROUTE, KEY)
        self._claim, self._renew = raw.register_script(CLAIM), raw.register_script(RENEW)
        self._release, self._stop = raw.register_script(RELEASE), raw.register_script(STOP)

    async def claim(self, value: str) -> int:
        args = [value, LEASE_MS, "replace", CHANNEL, 86_400_000, ROUTE, KEY]
        token, _ = await self._claim(keys=[self.owner, self.fence], args=args)
        return int(token)

    async def renew(self, value: str, token: int) -> int:
        keys = [self.owner, self.fence, self.mark]
        return int(await self._renew(keys=keys, args=[value, LEASE_MS, token, 86_400_000]))

    async def stop(self, value: str) -> int:
        message = json.dumps({"op": "stop", "route": ROUTE, "key": KEY, "value": value})
        args = [value, LEASE_MS, CHANNEL, message]
        return int(await self._stop(keys=[self.owner, self.mark], args=args))

    async def release(self, value: str) -> int:
        script: AsyncScript = self._release
        return int(await script(keys=[self.owner, self.mark], args=[value, CHANNEL, "{}"]))


@pytest.fixture
def scripts(raw) -> Scripts:
    return Scripts(raw)


async def test_stop_marks_the_owner_read_and_publishes(scripts, raw):
    token = await scripts.claim("a:1")
    pubsub = raw.pubsub()
    await pubsub.subscribe(CHANNEL)
    assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"
    assert await scripts.stop("a:0") == 0  # not the owner now: no mark, no message
    assert await raw.exists(scripts.mark) == 0
    assert await scripts.stop("a:1") == 1
    assert await raw.get(scripts.mark) == "a:1"
    assert 0 < await raw.pttl(scripts.mark) <= LEASE_MS
    heard = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    assert json.loads(heard["data"])["value"] == "a:1"
    await pubsub.aclose()
    # The owner's renewal reads the mark once: 3, not renewed, the mark spent.
    await raw.pexpire(scripts.owner, 1000)
    assert await scripts.renew("a:1", token) == 3
    assert await raw.exists(scripts.mark) == 0
    assert await raw.pttl(scripts.owner) <= 1000
    assert await scripts.renew("a:1", token) == 1  # no mark left: an ordinary renewal


async def test_a_mark_for_an_older_owner_never_stops_the_newer_one(scripts, raw):
    old = await scripts.claim("a:1")
    assert await scripts.stop("a:1") == 1
    new = await scripts.claim("b:1")  # replaced before the old owner renewed
    assert await scripts.renew("b:1", new) == 1
    assert await raw.get(scripts.owner) == "b:1"
    assert await scripts.stop("a:1") == 0  # a stop for the old value marks nothing more
    # The old holder reads its mark (it was stopped before it was replaced).
    assert await scripts.renew("a:1", old) == 3
    assert await scripts.renew("b:1", new) == 1


async def test_release_takes_its_own_mark_with_it_and_no_other(scripts, raw):
    await scripts.claim("a:1")
    assert await scripts.stop("a:1") == 1
    assert await scripts.release("a:1") == 1
    assert await raw.exists(scripts.owner, scripts.mark) == 0
    await scripts.claim("a:2")
    assert await scripts.stop("a:2") == 1
    assert await scripts.release("a:1") == 0  # an older claim letting go late
    assert await raw.get(scripts.mark) == "a:2"


async def test_a_store_that_hears_nothing_is_stopped_by_its_next_renewal(stores):
    lease = 1.5
    a, b = await stores(lease=lease), await stores(lease=lease)
    listener = a._tasks[0]  # the replace channel's subscriber: gone, as when its node died
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    stopped = asyncio.Event()
    holder = Holder(stopped)
    await a.claim(ROUTE, KEY, "replace", holder)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    assert await b.stop(ROUTE, KEY)
    await asyncio.wait_for(stopped.wait(), lease)
    assert holder.codes == ["stopped"]
    assert loop.time() - asked < lease / 3 + 0.5


class Holder:
    def __init__(self, stopped: asyncio.Event) -> None:
        self.codes: list[str] = []
        self.stopped = stopped

    def stop(self, code: str) -> None:
        self.codes.append(code)
        self.stopped.set()


# --- two real sidecar processes, the owner deaf to the replace channel -----------

LEASE = 1.5
HEADERS = {"X-Session-Key": "user-1"}
DEAF_USER, DEAF_PASSWORD = "sidecar-a", "a-secret"


def process_config(url: str, prefix: str, upstream) -> dict:
    return {
        "backend": {"kind": "redis", "url": url, "prefix": prefix, "lease": f"{LEASE:g}s"},
        "routes": [
            {
                "name": "test",
                "path": "/s",
                "upstream": upstream.url,
                "session": {"from": "header:X-Session-Key"},
            }
        ],
    }


@dataclass
class DeafOwnerPair:
    a: SidecarProcess
    b: SidecarProcess
    http: aiohttp.ClientSession
    prefix: str


@pytest.fixture
async def deaf_owner_pair(tmp_path, redis_server, raw, upstream) -> AsyncIterator[DeafOwnerPair]:
    """A connects as its own Redis user (so its channel rights can be taken), B as default."""
    await raw.execute_command(
        "ACL", "SETUSER", DEAF_USER, "on", f">{DEAF_PASSWORD}", "~*", "&*", "+@all"
    )
    prefix = f"test-{secrets.token_hex(4)}:"
    a_url = f"redis://{DEAF_USER}:{DEAF_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    a = SidecarProcess(tmp_path, process_config(a_url, prefix, upstream), "a")
    b = SidecarProcess(tmp_path, process_config(redis_server.url, prefix, upstream), "b")
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        await asyncio.gather(a.start(), b.start())
        yield DeafOwnerPair(a, b, http, prefix)
    finally:
        await http.close()
        a.kill()
        b.kill()


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        return resp.status


async def _until(check, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.05)


async def test_a_stop_the_owner_cannot_hear_ends_its_run_at_the_next_renewal(
    deaf_owner_pair, raw, upstream
):
    a, b, http = deaf_owner_pair.a, deaf_owner_pair.b, deaf_owner_pair.http
    natural_end = 10.0
    upstream.script = Script([b"data: 1\n\n", natural_end, b"data: 2\n\n"])
    loop = asyncio.get_running_loop()
    await _until(lambda: _is(_status(http, a.admin_url + "/readyz"), 200), within=5.0)
    reading = asyncio.ensure_future(
        read_stream(http, "GET", a.url + "/s", headers=HEADERS, limit_s=natural_end + 5)
    )
    await _until(lambda: _true(bool(upstream.requests)), within=5.0)

    # A loses its subscription and cannot take it again: Redis disconnects a
    # subscriber whose channel rights are taken, and refuses its resubscribe.
    await raw.execute_command("ACL", "SETUSER", DEAF_USER, "resetchannels")

    async def deaf() -> bool:
        subscribers = await raw.client_list(_type="pubsub")
        return not any(c["user"] == DEAF_USER for c in subscribers)

    await _until(deaf, within=5.0)
    await _until(lambda: _is(_status(http, a.admin_url + "/readyz"), 503), within=5.0)
    assert not reading.done()

    stopped_at = loop.time()
    async with http.delete(b.url + "/s", headers=HEADERS) as resp:
        assert resp.status == 202
    got = await reading
    took = got.times[-1] - stopped_at
    assert got.kinds() == ["message", "end"]
    assert got.data("end") == [{"type": "end", "reason": "stopped", "partial": True}]
    assert took < LEASE / 3 + 1.0, took  # A's next renewal, not the run's natural end
    await asyncio.wait_for(upstream.requests[0].finished.wait(), 2.0)  # upstream closed
    assert upstream.requests[0].client_gone_at is not None
    async with http.delete(b.url + "/s", headers=HEADERS) as resp:
        assert resp.status == 404  # the run let go of its claim
    mark = stop_key(deaf_owner_pair.prefix, "test", HEADERS["X-Session-Key"])
    assert await raw.exists(mark) == 0  # spent by the renewal that read it


async def _is(status, expected: int) -> bool:
    return await status == expected


async def _true(value: bool) -> bool:
    return value
