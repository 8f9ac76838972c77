"""Session claims shared through Redis: one stream per session across processes and replicas.

Strategy: a session is owned by whoever's value sits in ``{prefix}session:{route}:{key}``
(set with a lease, renewed every lease/3 by sidecar/sessions/redis_leases.py,
so a dead replica frees it). A claim
takes the key in one Lua script, which also draws the fencing token from
``{prefix}fence:{route}:{key}`` and, under ``replace``, publishes the value it
overwrote on ``{prefix}replace``; every process listens there and stops the
stream that held that value. A stop request publishes there too, and
leaves a mark on ``{prefix}stop:{route}:{key}`` naming the owner's value,
which the owner's next renewal reads: pub/sub keeps nothing for a
subscription that is down, and the mark still ends the stream within lease/3.
(A replace needs no mark: it overwrote the owner key, so the old holder's
next renewal fails.) As in :mod:`sidecar.sessions.memory` the newcomer
owns the session at once (so a third request replaces it, not the stream on its
way out) and then waits, briefly, for the old stream to let go. Redis errors
become :class:`~sidecar.errors.BackendUnavailable`; a Redis outage never stops
a running stream, and its claims are set again when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from sidecar import looptime
from sidecar.errors import BackendUnavailable, SessionConflict, SessionForbidden
from sidecar.flag import Flag
from sidecar.redisconn import (
    BUDGET,
    OP_TIMEOUT,
    Client,
    Connection,
    ScriptRounds,
    connect,
)
from sidecar.sessions.base import REPLACE_WAIT, Claim, Holder, Policy, may_end
from sidecar.sessions.channel import Subscriber
from sidecar.sessions.redis_leases import Health, Held, Leases, milliseconds
from sidecar.sessions.redis_scripts import (
    CLAIM,
    FORBIDDEN_TOKEN,
    RELEASE,
    RENEW,
    STOP,
    bound_to,
    fence_key,
    fence_ttl,
    owner_key,
    owner_value,
    stop_key,
)

log = structlog.get_logger("sse_sidecar")

_RECENT = 1024  # released values remembered for claims that ask after the message came
_STOP_TURNS = 3  # reads of the owner a stop request makes while it keeps changing
_START_WAIT = 2.0
POOL_SIZE = 6


class RedisSessionStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse-sidecar:",
        lease: float = 10.0,
        replace_wait: float = REPLACE_WAIT,
        owner: str | None = None,
        pool_size: int = POOL_SIZE,
        cluster: bool = False,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.pool_size = max(pool_size, 2)  # the subscription holds one
        self.prefix = prefix
        self.lease = lease
        self.replace_wait = replace_wait
        #: This process's id in owner values; random, so a restarted process is a new owner.
        self.owner_id = owner or secrets.token_hex(8)
        self.channel = f"{prefix}replace"
        self._lease_ms, self._fence_ms = milliseconds(lease), milliseconds(fence_ttl(lease))
        self._seq = itertools.count(1)
        self._redis: Client | None = None
        self._conn: Connection | None = None
        self._claim_script: AsyncScript
        self._claims: ScriptRounds | None = None
        self._release_script: AsyncScript
        self._stop_script: AsyncScript
        self._held: dict[str, Held] = {}  # by value
        self._owned: dict[Claim, Held] = {}
        self._waiters: dict[str, Flag] = {}  # old value -> its "released" message
        self._released: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._contacted = asyncio.Event()
        self._health = Health()
        self._subscriber: Subscriber | None = None

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect and listen; if Redis is down, start anyway and keep trying."""
        if self._redis is not None:
            return
        # A fixed number of connections (the replace channel's subscription
        # holds one); a burst of claims queues for them instead of opening more.
        self._conn = connect(self.url, cluster=self.cluster, pool_size=self.pool_size)
        self._redis = redis = self._conn.client
        self._claim_script = redis.register_script(CLAIM)
        self._claims = ScriptRounds(redis)  # a burst of claims: one round trip per round
        leases = Leases(
            self.prefix,
            self.lease,
            redis.register_script(RENEW),
            self._held.values,
            self._health,
            lambda entry: self._spawn(self._let_go(entry)),
        )
        self._release_script = redis.register_script(RELEASE)
        self._stop_script = redis.register_script(STOP)
        self._subscriber = Subscriber(
            redis, self.channel, self.owner_id, self._on_message, self._heard, self._unheard
        )
        self._tasks = [
            asyncio.create_task(self._subscriber.run(), name="sse-sidecar redis listener"),
            asyncio.create_task(
                leases.keep(redis, self._contacted), name="sse-sidecar redis leases"
            ),
        ]
        # Ready at once when Redis is up at start; unready (not failed) when it is not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_START_WAIT):
                await self._contacted.wait()
        if not self.healthy():
            log.warning("backend_down", backend=self.kind, error="unreachable at start-up")

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2 * OP_TIMEOUT)
        await asyncio.gather(*(self.release(c) for c in list(self._owned)), return_exceptions=True)
        if self._background:
            await asyncio.wait(set(self._background), timeout=2 * OP_TIMEOUT)
        if self._claims is not None:
            await self._claims.aclose()
        conn, self._conn, self._redis = self._conn, None, None
        self._health.up = False
        self._subscriber = None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.aclose()

    def connections(self) -> dict[str, int]:
        """Open and busy connections of the pool (metrics)."""
        if self._conn is None:
            return {"open": 0, "in_use": 0, "max": self.pool_size}
        return self._conn.counts()

    def healthy(self) -> bool:
        """Redis answered the last operation and the replace channel hears publishes."""
        return self._health.up and self._subscriber is not None and self._subscriber.listening

    def owner(self, route: str, key: str) -> Claim | None:
        """The claim this process holds on ``key``, if any (what Redis says may differ)."""
        return next((c for c in self._owned if (c.route, c.key) == (route, key)), None)

    def __len__(self) -> int:
        """Claims this process holds."""
        return len(self._owned)

    # --- claim and release ---------------------------------------------------

    async def claim(
        self, route: str, key: str, policy: Policy, holder: Holder, binding: str = ""
    ) -> Claim:
        if self._redis is None:
            raise BackendUnavailable("the session backend (redis) is not running")
        entry = Held(route, key, owner_value(self.owner_id, next(self._seq), binding), holder)
        # Registered before the script runs, so a replace that overtakes it
        # (a newer claim, in this process or another) finds the holder.
        self._held[entry.value] = entry
        attempt = asyncio.ensure_future(self._take(entry, policy, binding))
        try:
            # Shielded: once sent, the script runs; a cancelled claim must
            # learn what it did to undo it (see _abandon).
            token, old = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            self._abandon(entry, attempt)
            raise
        except (RedisError, OSError) as exc:
            self._health.failed(exc)
            self._abandon(entry, attempt)  # it may have run before the error
            raise BackendUnavailable(
                "the session backend (redis) cannot be reached; retry shortly"
            ) from None
        self._health.ok()
        if token == 0:
            self._forget(entry)
            raise SessionConflict(f"session already has a live stream on route {route}")
        if token == FORBIDDEN_TOKEN:
            self._forget(entry)
            raise SessionForbidden(f"the live stream on route {route} has other credentials")
        entry.token = token
        claim = Claim(route, key, token, holder, replaced=old is not None, released=entry.done)
        self._owned[claim] = entry
        if old is not None:
            try:
                await self._wait_for(old)
            except asyncio.CancelledError:
                # Replaced in turn, or the client left, before the stream began.
                self._spawn(self.release(claim))
                raise
        return claim

    async def release(self, claim: Claim) -> None:
        """Compare-and-delete; at most about OP_TIMEOUT, then the lease frees it."""
        entry = self._owned.pop(claim, None)
        if entry is None:
            claim.released.set()
            return
        entry.releasing = True
        # The work finishes even if the caller is cancelled meanwhile.
        await asyncio.shield(self._spawn(self._let_go(entry)))

    async def stop(self, route: str, key: str, binding: str = "") -> bool:
        """Stop the owner of ``key``: here at once, elsewhere by message and stop mark."""
        redis = self._redis
        if redis is None:
            raise BackendUnavailable("the session backend (redis) is not running")
        try:
            async with looptime.timeout(BUDGET):
                stopped = await self._stop_owner(redis, route, key, binding)
        except (RedisError, OSError, TimeoutError) as exc:
            self._health.failed(exc if not isinstance(exc, TimeoutError) else OSError("timed out"))
            raise BackendUnavailable(
                "the session backend (redis) cannot be reached; retry shortly"
            ) from None
        self._health.ok()
        return stopped

    async def _stop_owner(self, redis: Client, route: str, key: str, binding: str) -> bool:
        keys = [owner_key(self.prefix, route, key), stop_key(self.prefix, route, key)]
        # The script marks only the owner read here (its value, binding and
        # all), so a mark never stops a newer owner, nor one whose binding was
        # not the one checked; a claim or release that lands in between is
        # read on the next turn.
        for _ in range(_STOP_TURNS):
            value = await redis.get(keys[0])
            if value is None:
                return False
            value = _text(value)
            if not may_end(bound_to(value), binding):
                raise SessionForbidden(f"the live stream on route {route} has other credentials")
            local = self._held.get(value)
            if local is not None:
                local.stop("stopped")
                return True
            message = {"op": "stop", "route": route, "key": key, "value": value}
            args = [value, self._lease_ms, self.channel, json.dumps(message)]
            if await self._stop_script(keys=keys, args=args, client=redis):
                return True
        return False  # owners coming and going faster than they can be read: none to name

    async def _take(self, entry: Held, policy: Policy, binding: str) -> tuple[int, str | None]:
        prefix, route, key = self.prefix, entry.route, entry.key
        assert self._claims is not None
        args = [entry.value, self._lease_ms, policy, self.channel, self._fence_ms, route, key]
        token, old = await self._claims.call(
            self._claim_script,
            [owner_key(prefix, route, key), fence_key(prefix, route, key)],
            [*args, binding],
            BUDGET,
        )
        return int(token), None if old is None else _text(old)

    async def _wait_for(self, old: str) -> None:
        """Tell the holder of ``old`` to stop, wait up to replace_wait for it to let go."""
        local = self._held.get(old)
        created = False
        if local is not None:
            local.stop("replaced")
            event = local.done
        elif old.startswith(self.owner_id + ":") or old in self._released:
            return  # ours and already let go, or its "released" came first
        else:
            # Another process holds it: its stream stops on the published
            # replace message and answers with "released" when it has ended.
            event = self._waiters.setdefault(old, Flag())
            created = True
        try:
            async with asyncio.timeout(self.replace_wait):
                await event.wait()
        except TimeoutError:
            pass  # told to stop (or dead, holding a lease): the session is ours either way
        finally:
            if created:
                self._waiters.pop(old, None)

    def _abandon(self, entry: Held, attempt: asyncio.Future[tuple[int, str | None]]) -> None:
        """A claim that will not be returned: undo its script, whenever that finishes."""
        entry.releasing = True

        async def undo() -> None:
            try:
                token, _ = await attempt
                took = token > 0  # 0 and FORBIDDEN_TOKEN: refused, nothing written
            except (RedisError, OSError, asyncio.CancelledError):
                took = True  # unknown whether it ran: delete our value if it is there
            if took:
                await self._let_go(entry)
            else:
                self._forget(entry)

        self._spawn(undo())

    async def _let_go(self, entry: Held) -> None:
        redis = self._redis
        message = json.dumps(
            {"op": "released", "route": entry.route, "key": entry.key, "value": entry.value}
        )
        try:
            if redis is not None:
                async with looptime.timeout(BUDGET):
                    await self._release_script(
                        keys=[
                            owner_key(self.prefix, entry.route, entry.key),
                            stop_key(self.prefix, entry.route, entry.key),
                        ],
                        args=[entry.value, self.channel, message],
                        client=redis,
                    )
                self._health.ok()
        except (RedisError, OSError) as exc:
            self._health.failed(exc)  # its lease frees the session
        finally:
            self._forget(entry)

    def _forget(self, entry: Held) -> None:
        self._held.pop(entry.value, None)
        entry.done.set()

    # --- replace messages ----------------------------------------------------

    def _heard(self) -> None:
        self._health.ok()
        self._contacted.set()

    def _unheard(self, exc: BaseException) -> None:
        self._health.failed(exc)
        self._contacted.set()

    def _on_message(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            op, value = message["op"], message["value"]
        except (ValueError, TypeError, KeyError):
            return  # not a message of ours
        if not isinstance(value, str):
            return
        if op in ("replace", "stop"):
            entry = self._held.get(value)
            if entry is not None:
                entry.stop("replaced" if op == "replace" else "stopped")
        elif op == "released":
            self._released[value] = None
            if len(self._released) > _RECENT:
                self._released.popitem(last=False)
            waiter = self._waiters.get(value)
            if waiter is not None:
                waiter.set()

    # --- health --------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
