"""Who owns a run in Redis: the owner's liveness, and taking over a run whose owner is gone.

Strategy: a run's index holds its owner token (``gen``: 1 at open, one more
at each takeover); every write of the run's (append, finish, drop) and the
owner's liveness renewal name the token, and the scripts refuse a stale one,
so a replica that stalled past its lease and comes back never writes to a
log another replica took over. Taking over is one script: the session's
current, unfinished run whose liveness key lapsed, with a kept request and a
cursor, gets a fresh token and the liveness key at once, so of two replicas
racing exactly one wins and the other sees the run alive and follows it. The
same step frees the session of its dead owner's claim and draws a fresh
fencing token, so the run that goes on claims the session at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from redis.commands.core import AsyncScript

from sidecar.redisconn import Client
from sidecar.redispipe import run_scripts
from sidecar.replay.base import Entry, NotTaken
from sidecar.replay.redis_follow import ms
from sidecar.replay.redis_scripts import Keys, entries_of
from sidecar.sessions.redis_scripts import fence_ttl


class Store(Protocol):
    lease: float
    scripts: dict[str, AsyncScript]

    def backend(
        self, budget: float | None = ..., *, client: Client | None = None
    ) -> AbstractAsyncContextManager[Client]: ...


class Owned(Protocol):
    """A run's own log, as the liveness renewal sees it."""

    keys: Keys
    owner: str

    def fence(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the takeover script handed over: the run's owner token and its state."""

    owner: str
    kept: bytes
    cursor: bytes
    caps: tuple[int, int]
    entries: list[Entry]

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0


def claimed(reply: Any) -> Claimed | NotTaken:
    """The takeover script's reply, decoded."""
    if not isinstance(reply, list):
        return "owned" if int(reply) == 0 else "impossible"
    owner, kept, cursor, max_events, max_bytes, raw = reply
    return Claimed(
        owner=str(int(owner)),
        kept=bytes(kept),
        cursor=bytes(cursor),
        caps=(int(max_events), int(max_bytes)),
        entries=entries_of(raw),
    )


async def claim(store: Store, keys: Keys, run_id: str) -> Claimed | NotTaken:
    """Take the run over if its owner is gone (BackendUnavailable when Redis cannot say)."""
    args: list[str | int] = [run_id, ms(store.lease), ms(fence_ttl(store.lease))]
    k = keys
    async with store.backend():
        reply = await store.scripts["takeover"](
            keys=[k.stream, k.index, k.pointer, k.live, k.session, k.fence], args=args
        )
    return claimed(reply)


#: Renewals per pipeline. A round's calls, their key names and redis-py's
#: commands and replies are built a batch at a time: all at once, a round
#: held ~1 KiB for every run while it was in flight, and the process's
#: memory kept that peak.
BATCH = 1000


async def renew(store: Store, logs: Sequence[Owned]) -> None:
    """Renew the liveness of this process's runs, a pipeline a batch; fence those taken over."""
    script, lease = store.scripts["live"], ms(store.lease)
    for start in range(0, len(logs), BATCH):
        batch = logs[start : start + BATCH]
        async with store.backend() as redis:
            calls = [(script, [log.keys.index, log.keys.live], [log.owner, lease]) for log in batch]
            replies = await run_scripts(redis, calls, raise_on_error=True)
        del calls  # before the next batch's
        for log, reply in zip(batch, replies, strict=True):
            if reply == -1:
                log.fence()
