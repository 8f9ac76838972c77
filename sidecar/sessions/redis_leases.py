"""The Redis session store's leases: each claim of this process, renewed every lease/3.

Strategy: one RENEW script call per held claim (sidecar/sessions/redis_scripts.py),
all of them in transaction-free pipelines of ``BATCH``, so a process with
many streams renews them in a round trip or a few. What each call answers
is acted on here: ownership lost (a replace whose message did not come) or
a stop mark (a stop whose message did not come) stops the stream; a claim
whose key was gone is ours again. A Redis error fails the round, never a
stream: the claims are set again by a later round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from sidecar import looptime
from sidecar.flag import Flag
from sidecar.logs import session_hash
from sidecar.redisconn import BUDGET, Client, raise_if_cancelled
from sidecar.redispipe import ScriptCall, run_scripts
from sidecar.sessions.base import Holder
from sidecar.sessions.redis_scripts import fence_key, fence_ttl, owner_key, stop_key

log = structlog.get_logger("sse_sidecar")

DOWN_POLL = 0.5  # lease loop period while Redis is unreachable, to notice its return
BATCH = 1000  # renewals per pipeline round trip

# RENEW's answers.
LOST, RENEWED, REASSERTED, STOP_MARKED = 0, 1, 2, 3


def milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


@dataclass(eq=False, slots=True)
class Held:
    """One claim of this process, from before its script runs until it is let go."""

    route: str
    key: str
    #: What this claim writes into the owner key: unique, known before the script runs.
    value: str
    holder: Holder
    token: int = 0  # 0 until the claim script has run
    stopped: bool = False
    releasing: bool = False
    done: Flag = field(default_factory=Flag)

    def stop(self, code: str) -> None:
        # A stream that is already letting go has ended: stopping it again
        # would only cancel its clean-up.
        if not self.stopped and not self.releasing:
            self.stopped = True
            self.holder.stop(code)


class Health:
    """Whether Redis answered the store's last operation; each change is logged."""

    def __init__(self) -> None:
        self.up = False

    def ok(self) -> None:
        if not self.up:
            log.info("backend_up", backend="redis")
            self.up = True

    def failed(self, exc: BaseException) -> None:
        if self.up:
            log.warning("backend_down", backend="redis", error=str(exc) or type(exc).__name__)
        self.up = False


class Leases:
    """Renews ``held()`` claims until cancelled; ``let_go`` releases one again."""

    def __init__(
        self,
        prefix: str,
        lease: float,
        script: AsyncScript,
        held: Callable[[], Iterable[Held]],
        health: Health,
        let_go: Callable[[Held], object],
    ) -> None:
        self.prefix, self.lease, self.script = prefix, lease, script
        self.lease_ms, self.fence_ms = milliseconds(lease), milliseconds(fence_ttl(lease))
        self._held, self._health, self._let_go = held, health, let_go

    async def keep(self, redis: Client, contacted: asyncio.Event) -> None:
        await contacted.wait()  # so the first period knows whether Redis is up
        while True:
            await asyncio.sleep(self.lease / 3 if self._health.up else DOWN_POLL)
            try:
                await self.renew(redis)
            except Exception as exc:
                # A bug (ours or redis-py's) must not end the renewals for good.
                log.exception("backend_lease_error", backend="redis")
                self._health.failed(exc)
            # redis-py may have let a cancel pass unraised: this loop must end.
            raise_if_cancelled()

    async def renew(self, redis: Client) -> None:
        # A stopped stream is on its way out; it needs its lease no longer.
        entries = [e for e in self._held() if e.token and not (e.stopped or e.releasing)]
        try:
            if not entries:
                async with looptime.timeout(BUDGET):
                    await redis.ping()
            for start in range(0, len(entries), BATCH):
                batch = entries[start : start + BATCH]
                async with looptime.timeout(BUDGET):
                    results = await self._renew_batch(redis, batch)
                self._settle(batch, results)
        except (RedisError, OSError) as exc:
            self._health.failed(exc)  # running streams go on; their claims are set again later
            return
        self._health.ok()

    async def _renew_batch(self, redis: Client, batch: list[Held]) -> list[Any]:
        p = self.prefix
        calls: list[ScriptCall] = []
        for e in batch:
            keys = [owner_key(p, e.route, e.key), fence_key(p, e.route, e.key)]
            keys.append(stop_key(p, e.route, e.key))
            calls.append((self.script, keys, [e.value, self.lease_ms, e.token, self.fence_ms]))
        return await run_scripts(redis, calls, raise_on_error=True)

    def _settle(self, batch: list[Held], results: list[Any]) -> None:
        for entry, result in zip(batch, results, strict=True):
            session = session_hash(entry.key)
            if result == LOST:
                log.info("session_lost", route=entry.route, session=session)
                entry.stop("replaced")
            elif result == STOP_MARKED:
                # A stop request whose message this process did not hear.
                log.info("session_stop_marked", route=entry.route, session=session)
                entry.stop("stopped")
            elif result == REASSERTED:
                if entry.releasing:
                    # It was let go while this renewal was on its way: undo the re-set.
                    self._let_go(entry)
                else:
                    log.info("session_reasserted", route=entry.route, session=session)
