"""One stream per session with the Redis backend: the store itself, then sidecars sharing one Redis.

Everything runs against a real redis-server on loopback (tests/fixtures_redis.py).
Store-level tests use stand-in holders; proxy-level tests run two sidecars in
this process, then two real sidecar processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.errors import BackendUnavailable, SessionConflict
from sidecar.sessions.base import Claim
from sidecar.sessions.redis import RedisSessionStore, owner_key
from sidecar.sessions.redis_leases import Held
from tests.conftest import Script, Step, make_config
from tests.fixtures_redis import free_port
from tests.integration.streams import read_stream

pytestmark = pytest.mark.redis

ROUTE = "chat"


class FakeHolder:
    """Records stop codes; lets go of its claim on stop when told to (like a stream does)."""

    def __init__(self, store: RedisSessionStore | None = None) -> None:
        self.codes: list[str] = []
        self.store = store
        self.claim: Claim | None = None
        self.releases: list[asyncio.Task[None]] = []

    def stop(self, code: str) -> None:
        self.codes.append(code)
        if self.store is not None and self.claim is not None:
            self.releases.append(asyncio.ensure_future(self.store.release(self.claim)))


class TaskHolder:
    """Like the proxy's StreamHandle: stopping cancels the task that owns the claim."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def stop(self, code: str) -> None:
        self.codes.append(code)
        assert self.task is not None
        self.task.cancel()


@pytest.fixture
async def stores(redis_server):
    made: list[RedisSessionStore] = []
    prefix = f"test-{secrets.token_hex(4)}:"

    async def make(**kwargs) -> RedisSessionStore:
        kwargs.setdefault("prefix", prefix)
        kwargs.setdefault("lease", 2.0)
        store = RedisSessionStore(redis_server.url, **kwargs)
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def eventually(check, within: float = 5.0, every: float = 0.02):
    """Poll ``check`` (sync or async) until it is truthy; return how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - started
        if loop.time() - started > within:
            raise AssertionError(f"not true within {within}s: {check}")
        await asyncio.sleep(every)


async def crash(store: RedisSessionStore) -> None:
    """What SIGKILL leaves behind: no renewal, no release; only the lease remains."""
    tasks, store._tasks = store._tasks, []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    store._owned.clear()
    store._held.clear()


def key_of(store: RedisSessionStore, key: str) -> str:
    return owner_key(store.prefix, ROUTE, key)


# --- the store ------------------------------------------------------------------


async def test_started_store_is_healthy(stores):
    store = await stores()
    assert store.kind == "redis"
    assert store.healthy()


async def test_reject_refuses_a_taken_session_in_any_process(stores):
    a, b = await stores(), await stores()
    first = await a.claim(ROUTE, "k", "reject", FakeHolder())
    for store in (a, b):
        with pytest.raises(SessionConflict, match="live stream"):
            await store.claim(ROUTE, "k", "reject", FakeHolder())
    # Another key, another route: independent.
    await b.claim(ROUTE, "k2", "reject", FakeHolder())
    await b.claim("other", "k", "reject", FakeHolder())
    await a.release(first)
    assert first.released.is_set()
    second = await b.claim(ROUTE, "k", "reject", FakeHolder())
    assert second.token > first.token
    assert not second.replaced


async def test_routes_with_colons_do_not_collide(stores):
    store = await stores()
    await store.claim("a", "b:c", "reject", FakeHolder())
    await store.claim("a:b", "c", "reject", FakeHolder())


async def test_a_retried_claim_script_answers_as_the_first_run(stores, raw):
    # redis-py retries once on a dropped connection; the reply of the first run
    # may be what was lost. The retry must not see its own value as a rival.
    store = await stores()
    pubsub = raw.pubsub()
    await pubsub.subscribe(store.channel)
    assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"
    entry = Held(ROUTE, "k", "me:1", FakeHolder())
    first = await store._take(entry, "replace", "")
    assert await store._take(entry, "replace", "") == first
    assert await store._take(entry, "reject", "") == first
    assert first == (first[0], None)
    assert first[0] > 0
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await pubsub.aclose()


@pytest.mark.parametrize("same_process", [True, False])
async def test_replace_stops_the_old_holder_and_waits_for_it(stores, raw, same_process):
    # A long lease: the renewal cannot be what tells the old holder.
    a = await stores(lease=30.0)
    b = a if same_process else await stores(lease=30.0)
    old_holder = FakeHolder(a)
    old = await a.claim(ROUTE, "k", "replace", old_holder)
    old_holder.claim = old
    loop = asyncio.get_running_loop()
    started = loop.time()
    new = await b.claim(ROUTE, "k", "replace", FakeHolder())
    assert loop.time() - started < 0.5  # it let go at once; no waiting out replace_wait
    assert old_holder.codes == ["replaced"]
    assert old.released.is_set()
    assert new.replaced
    assert new.token > old.token
    assert (await raw.get(key_of(a, "k"))).startswith(b.owner_id + ":")


async def test_replace_takes_over_when_the_old_holder_does_not_let_go(stores, raw):
    a, b = await stores(), await stores(replace_wait=0.3)
    stuck = FakeHolder()  # never releases: a hung stream, or a dead replica's lease
    old = await a.claim(ROUTE, "k", "replace", stuck)
    loop = asyncio.get_running_loop()
    started = loop.time()
    new = await b.claim(ROUTE, "k", "replace", FakeHolder())
    assert 0.25 < loop.time() - started < 1.0
    assert stuck.codes == ["replaced"]
    assert new.replaced
    # The old owner letting go later leaves the new owner's key alone.
    await a.release(old)
    assert old.released.is_set()
    assert (await raw.get(key_of(a, "k"))).startswith(b.owner_id + ":")
    with pytest.raises(SessionConflict):
        await a.claim(ROUTE, "k", "reject", FakeHolder())


async def test_fifty_concurrent_replaces_leave_exactly_one_owner(stores, raw):
    a, b = await stores(), await stores()
    claims: dict[asyncio.Task[None], RedisSessionStore] = {}
    holders: dict[asyncio.Task[None], TaskHolder] = {}

    async def stream(store: RedisSessionStore, holder: TaskHolder) -> None:
        claim = await store.claim(ROUTE, "k", "replace", holder)
        try:
            await asyncio.sleep(3600)
        finally:
            await store.release(claim)

    for i in range(50):
        store = a if i % 2 else b
        holder = TaskHolder()
        task = asyncio.ensure_future(stream(store, holder))
        holder.task = task
        claims[task] = store
        holders[task] = holder

    await eventually(lambda: sum(not t.done() for t in claims) <= 1)
    await asyncio.sleep(0.3)  # nothing ends the survivor later, and nothing is left over
    alive = [t for t in claims if not t.done()]
    assert len(alive) == 1
    (survivor,) = alive
    assert holders[survivor].codes == []
    assert all(holders[t].codes == ["replaced"] for t in claims if t is not survivor)
    assert (await raw.get(key_of(a, "k"))).startswith(claims[survivor].owner_id + ":")
    survivor.cancel()
    await asyncio.gather(survivor, return_exceptions=True)
    assert await raw.exists(key_of(a, "k")) == 0


async def test_fifty_concurrent_rejects_have_exactly_one_winner(stores):
    a, b = await stores(), await stores()
    results = await asyncio.gather(
        *((a if i % 2 else b).claim(ROUTE, "k", "reject", FakeHolder()) for i in range(50)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Claim)]
    assert len(winners) == 1
    assert all(isinstance(r, SessionConflict) for r in results if r is not winners[0])


@pytest.mark.parametrize("when", ["during the claim script", "while waiting for the old owner"])
async def test_a_cancelled_claim_leaves_no_key_behind(stores, raw, when):
    a, b = await stores(), await stores(replace_wait=5.0)
    if when == "while waiting for the old owner":
        stuck = FakeHolder()
        await a.claim(ROUTE, "k", "replace", stuck)
        task = asyncio.ensure_future(b.claim(ROUTE, "k", "replace", FakeHolder()))
        await eventually(lambda: stuck.codes == ["replaced"])
    else:
        task = asyncio.ensure_future(b.claim(ROUTE, "k", "replace", FakeHolder()))
        await asyncio.sleep(0)  # the script is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: b._held == {}, within=2.0)
    assert await raw.exists(key_of(b, "k")) == 0
    # Free for anyone.
    await a.claim(ROUTE, "k", "reject", FakeHolder())


# --- leases -------------------------------------------------------------------------


async def test_renewal_keeps_a_claim_past_its_lease(stores, raw):
    store = await stores(lease=1.0)
    holder = FakeHolder()
    await store.claim(ROUTE, "k", "replace", holder)
    await asyncio.sleep(2.5)
    assert (await raw.get(key_of(store, "k"))).startswith(store.owner_id + ":")
    assert 0 < await raw.pttl(key_of(store, "k")) <= 1000
    assert holder.codes == []


async def test_a_crashed_store_frees_its_sessions_within_the_lease(stores):
    lease = 1.0
    a, b = await stores(lease=lease), await stores(lease=lease)
    await a.claim(ROUTE, "k", "reject", FakeHolder())
    await asyncio.sleep(0.5)  # renewed at least once
    await crash(a)
    with pytest.raises(SessionConflict):
        await b.claim(ROUTE, "k", "reject", FakeHolder())

    async def claimed() -> bool:
        try:
            await b.claim(ROUTE, "k", "reject", FakeHolder())
        except SessionConflict:
            return False
        return True

    took = await eventually(claimed, within=3.0, every=0.05)
    assert took <= lease + 0.2


async def test_lost_ownership_stops_the_holder(stores, raw):
    store = await stores(lease=1.0)
    holder = FakeHolder()
    await store.claim(ROUTE, "k", "replace", holder)
    # Someone else owns it now (a replace whose message never arrived).
    await raw.set(key_of(store, "k"), "elsewhere:1", px=5000)
    took = await eventually(lambda: holder.codes == ["replaced"], within=2.0)
    assert took < 1.0  # the next renewal, lease/3 later
    assert await raw.get(key_of(store, "k")) == "elsewhere:1"


# --- outages ------------------------------------------------------------------------


async def test_redis_outage_refuses_claims_fast_and_keeps_held_ones(stores, raw, redis_server):
    a, b = await stores(lease=1.0), await stores(lease=1.0)
    held = FakeHolder()
    await a.claim(ROUTE, "kept", "reject", held)
    redis_server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendUnavailable) as info:
        await a.claim(ROUTE, "new", "replace", FakeHolder())
    assert loop.time() - started < 1.5
    assert "127.0.0.1" not in str(info.value)  # clients get no internal addresses
    assert not a.healthy()
    await eventually(lambda: not b.healthy(), within=3.0)  # b made no claim: it notices alone
    await asyncio.sleep(1.2)  # past the lease: a live Redis would have expired the key
    assert held.codes == []  # running streams are not stopped by an outage

    redis_server.start()  # empty: --save "", so every key is gone
    await eventually(a.healthy, within=5.0)
    await eventually(b.healthy, within=5.0)
    await eventually(lambda: raw.exists(key_of(a, "kept")), within=3.0)
    assert (await raw.get(key_of(a, "kept"))).startswith(a.owner_id + ":")
    with pytest.raises(SessionConflict):
        await b.claim(ROUTE, "kept", "reject", FakeHolder())
    fresh = await a.claim(ROUTE, "new", "replace", FakeHolder())
    assert not fresh.replaced
    assert held.codes == []


async def test_start_with_redis_down_then_recover(stores, redis_server):
    redis_server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    store = await stores()
    assert loop.time() - started < 3.0
    assert not store.healthy()
    with pytest.raises(BackendUnavailable):
        await store.claim(ROUTE, "k", "replace", FakeHolder())
    redis_server.start()
    await eventually(store.healthy, within=5.0)
    await store.claim(ROUTE, "k", "replace", FakeHolder())


# --- sidecars sharing one Redis, in this process -----------------------------------

KEY = {"X-Session-Key": "user-1.chat:42"}
FIRST = b"data: 1\n\n"


def redis_config(upstream_url: str, redis_server, policy: str = "replace", lease: str = "2s"):
    return make_config(
        upstream_url,
        session={"from": "header:X-Session-Key", "policy": policy},
        top={"backend": {"kind": "redis", "url": redis_server.url, "lease": lease}},
    )


async def test_replace_on_one_sidecar_ends_the_stream_on_the_other(
    redis_server, upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    # A lease long enough that only the replace message can end A's stream in time.
    a = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    b = await start_sidecar(redis_config(upstream.url, redis_server, lease="10s"))
    loop = asyncio.get_running_loop()
    old = asyncio.ensure_future(read_stream(a.http, "GET", a.url + "/s", headers=KEY))
    await eventually(lambda: upstream.requests)
    await asyncio.sleep(0.05)
    started = loop.time()
    async with b.http.get(b.url + "/s", headers=KEY) as new:
        assert new.status == 200
        got = await old
        assert got.kinds() == ["message", "error"]
        assert got.error()["code"] == "replaced"
        assert got.times[-1] - started < 1.0
        # A closed its upstream before B opened its own.
        assert upstream.requests[0].finished.is_set()
        assert await new.content.readuntil(b"\n\n") == FIRST
    assert 'sse_sidecar_session_conflicts_total{policy="replace",route="test"} 1.0' in (
        await b.metrics()
    )


async def test_reject_across_sidecars_answers_409(redis_server, upstream, start_sidecar):
    upstream.script = Script([FIRST, "hang"])
    a = await start_sidecar(redis_config(upstream.url, redis_server, "reject"))
    b = await start_sidecar(redis_config(upstream.url, redis_server, "reject"))
    async with a.http.get(a.url + "/s", headers=KEY) as first:
        assert await first.content.readuntil(b"\n\n") == FIRST
        async with b.http.get(b.url + "/s", headers=KEY) as second:
            assert second.status == 409
            assert second.content_type == "application/json"
            assert (await second.json())["error"]["code"] == "session_conflict"
        async with b.http.get(b.url + "/s", headers={"X-Session-Key": "other"}) as third:
            assert third.status == 200
        assert not first.content.at_eof()  # the first stream is untouched
    assert len(upstream.requests) == 2


async def test_fifty_concurrent_requests_on_two_sidecars_leave_one_stream(
    redis_server, upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    sidecars = [await start_sidecar(redis_config(upstream.url, redis_server)) for _ in range(2)]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with http:
        reads = [
            asyncio.ensure_future(
                read_stream(http, "GET", sidecars[i % 2].url + "/s", headers=KEY, limit_s=30)
            )
            for i in range(50)
        ]
        await eventually(lambda: sum(not r.done() for r in reads) <= 1, within=10.0)
        await asyncio.sleep(0.5)
        alive = [r for r in reads if not r.done()]
        assert len(alive) == 1
        for r in reads:
            if r is not alive[0]:
                got = r.result()
                assert got.status == 200
                assert got.error()["code"] == "replaced"
        live = [h for sc in sidecars for h in sc.sidecar.ctx.streams]
        assert len(live) == 1
        assert sum(len(sc.sidecar.ctx.sessions) for sc in sidecars) == 1
        assert sum(not r.finished.is_set() for r in upstream.requests) == 1
        alive[0].cancel()
        await asyncio.gather(alive[0], return_exceptions=True)


async def test_redis_outage_refuses_new_sessions_and_keeps_running_streams(
    redis_server, raw, upstream, start_sidecar
):
    steps: list[Step] = [FIRST]
    for i in range(2, 200):
        steps += [0.05, f"data: {i}\n\n".encode()]
    upstream.script = Script(steps)
    sc = await start_sidecar(redis_config(upstream.url, redis_server))
    lines: list[bytes] = []

    async def follow() -> None:
        async with sc.http.get(sc.url + "/s", headers={"X-Session-Key": "running"}) as resp:
            assert resp.status == 200
            async for line in resp.content:
                lines.append(line)

    running = asyncio.ensure_future(follow())
    await eventually(lambda: lines)
    async with sc.http.get(sc.admin_url + "/readyz") as ready:
        assert ready.status == 200

    redis_server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with sc.http.get(sc.url + "/s", headers=KEY) as refused:
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["code"] == "backend_unavailable"
    assert loop.time() - started < 1.5

    async def ready_status() -> int:
        async with sc.http.get(sc.admin_url + "/readyz") as resp:
            return resp.status

    await eventually(lambda: _is(ready_status(), 503), within=3.0)
    seen = len(lines)
    await asyncio.sleep(1.0)
    assert len(lines) > seen  # the running stream goes on through the outage
    assert not running.done()

    redis_server.start()
    await eventually(lambda: _is(ready_status(), 200), within=5.0)
    async with sc.http.get(sc.url + "/s", headers=KEY) as back:
        assert back.status == 200
        assert await back.content.readuntil(b"\n\n") == FIRST
    # The running stream's session is held again (Redis came back empty).
    await eventually(lambda: raw.exists(owner_key("sse-sidecar:", "test", "running")), within=3.0)
    assert not running.done()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert 'sse_sidecar_backend_up{backend="redis"} 1.0' in await sc.metrics()


async def test_outage_policy_allow_serves_without_exclusivity(
    redis_server, upstream, start_sidecar
):
    upstream.script = Script([FIRST, "hang"])
    sc = await start_sidecar(
        make_config(
            upstream.url,
            top={"backend": {"kind": "redis", "url": redis_server.url, "on_outage": "allow"}},
        )
    )
    redis_server.stop()
    async with sc.http.get(sc.url + "/s", headers=KEY) as resp:
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n\n") == FIRST


async def _is(status, expected: int) -> bool:
    return await status == expected


# --- two real sidecar processes -------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


class SidecarProcess:
    """``python -m sidecar`` with its own ports, configured from a dict written as YAML."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        config = {
            **config,
            "listen": {"host": "127.0.0.1", "port": self.port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
        }
        path = workdir / f"{name}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_SIDECAR_")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        """Wait for /healthz on the admin port (and for the backend: /readyz)."""
        for path in ("/healthz", "/readyz"):
            for _ in range(300):
                if self.process.poll() is not None:
                    raise AssertionError(f"sidecar exited:\n{self.log.read_text()}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.admin_port}{path}") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"sidecar not answering {path}:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def sidecar_processes(upstream, redis_server, tmp_path):
    started: list[SidecarProcess] = []
    http = aiohttp.ClientSession()

    async def start(policy: str, lease: str = "2s") -> SidecarProcess:
        config = {
            "backend": {"kind": "redis", "url": redis_server.url, "lease": lease},
            "routes": [
                {
                    "name": "test",
                    "path": "/s",
                    "upstream": upstream.url,
                    "session": {"from": "header:X-Session-Key", "policy": policy},
                }
            ],
            "drain_timeout": "200ms",
            "logging": {"level": "warning"},
        }
        process = SidecarProcess(config, tmp_path, f"sidecar-{len(started)}")
        started.append(process)
        await process.ready(http)
        return process

    yield start
    await http.close()
    for process in started:
        process.stop()


async def test_replace_across_processes_within_a_second(upstream, sidecar_processes):
    upstream.script = Script([FIRST, "hang"])
    # A lease long enough that only the replace message can end A's stream in time.
    a, b = await sidecar_processes("replace", "10s"), await sidecar_processes("replace", "10s")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        old = asyncio.ensure_future(read_stream(http, "GET", a.url + "/s", headers=KEY))
        await eventually(lambda: upstream.requests)
        await asyncio.sleep(0.05)
        started = loop.time()
        async with http.get(b.url + "/s", headers=KEY) as new:
            assert new.status == 200
            got = await old
            assert got.error()["code"] == "replaced"
            assert got.times[-1] - started < 1.0
            assert await new.content.readuntil(b"\n\n") == FIRST


async def test_sigkill_frees_the_session_within_the_lease(upstream, sidecar_processes):
    upstream.script = Script([FIRST, "hang"])
    a, b = await sidecar_processes("reject"), await sidecar_processes("reject")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        held = await http.get(a.url + "/s", headers=KEY)
        assert await held.content.readuntil(b"\n\n") == FIRST
        await asyncio.sleep(0.8)  # a renewal has happened: the lease runs from there
        a.kill()
        killed = loop.time()
        held.close()

        async def status() -> int:
            async with http.get(b.url + "/s", headers=KEY) as resp:
                if resp.status == 200:
                    assert await resp.content.readuntil(b"\n\n") == FIRST
                return resp.status

        assert await status() == 409  # the dead owner's lease still holds it
        took = await eventually(lambda: _is(status(), 200), within=5.0, every=0.1)
        assert loop.time() - killed <= 2.0 + 0.3, took
