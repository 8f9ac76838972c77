"""The replace channel's subscriber: one subscription per process, on a live node, proven to hear.

Strategy: replace and stop messages are plain pub/sub, which Redis keeps no
copy of, so a message sent while nobody hears it is gone. The subscriber
therefore counts as listening only while it hears its own probes: every
tick it publishes one through the ordinary client (which lands on some
node, as the other processes' messages do) and expects it back on its
subscription within ``DEAF``. A subscription whose node died, or whose node
no longer hears the node a publish lands on (a cluster mid-failover), stops
hearing them; it is dropped and taken again on another node, and until a
probe comes back the store reports itself unhealthy (``/readyz`` 503).
A message published meanwhile is still lost to this process, so neither
kind relies on it alone: a replace also overwrote the owner key, and a stop
leaves a stop mark for the owner's value, so the holder's next lease renewal
(within lease/3) ends the stream anyway (sidecar/sessions/redis_scripts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable

import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sidecar.redisconn import Client, raise_if_cancelled
from sidecar.redisconn import pubsub as open_pubsub

log = structlog.get_logger("sse_sidecar")

RETRY_MIN, RETRY_MAX = 0.05, 1.0  # resubscribe backoff
TICK = 1.0  # probe (and ping) period
DEAF = 3.0  # a probe not heard back within this: the subscription hears nothing


_PROBE_OP = '{"op": "probe", '


class Subscriber:
    """Keeps ``channel`` subscribed and hands every message but the probes to ``on_message``.

    ``on_up`` is called when a subscription is proven (its first probe came
    back), ``on_down`` with the error when one is lost or could not be made.
    """

    def __init__(
        self,
        redis: Client,
        channel: str,
        owner_id: str,
        on_message: Callable[[bytes | str], None],
        on_up: Callable[[], None],
        on_down: Callable[[BaseException], None],
    ) -> None:
        self._redis, self._channel, self._owner_id = redis, channel, owner_id
        self._on_message, self._on_up, self._on_down = on_message, on_up, on_down
        self._probes = itertools.count(1)
        #: Probes published and not heard back yet: number -> when published.
        self._pending: dict[int, float] = {}
        self.listening = False

    async def run(self) -> None:
        """Subscribe, listen, and on any failure subscribe again elsewhere, until cancelled."""
        delay = RETRY_MIN
        avoid: set[str] = set()  # nodes whose subscription failed since the last proven one
        while True:
            pubsub: PubSub | None = None
            node = ""
            proven = False
            try:
                pubsub, node = await open_pubsub(self._redis, self._channel, avoid)
                await pubsub.subscribe(self._channel)
                await self._pump(pubsub, node, avoid)
            except (RedisError, OSError) as exc:
                proven = self._lost(exc, node)
            except Exception as exc:
                # A bug (ours or redis-py's) must not silence the channel for good.
                log.exception("backend_listener_error", backend="redis")
                proven = self._lost(exc, node)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        # Typed from redis-py 8.2 on, untyped before: the ignore is for either.
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            if proven:
                delay = RETRY_MIN  # it had worked: the first retry goes at once
            if node:
                avoid.add(node)
            raise_if_cancelled()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _lost(self, exc: BaseException, node: str) -> bool:
        """Record a lost subscription; whether it had been listening."""
        was = self.listening
        if was:
            log.warning("replace_channel_lost", node=node, error=str(exc) or type(exc).__name__)
        self.listening = False
        self._pending.clear()
        self._on_down(exc)
        return was

    async def _pump(self, pubsub: PubSub, node: str, avoid: set[str]) -> None:
        loop = asyncio.get_running_loop()
        subscribed = heard = probed = pinged = loop.time()
        await self._probe(subscribed)
        while True:
            raise_if_cancelled()
            message = await pubsub.get_message(timeout=TICK)
            now = loop.time()
            if message is not None:
                heard = now
                proof = message["type"] == "message" and self._heard(message["data"])
                if proof and not self.listening:
                    self.listening = True
                    avoid.clear()
                    log.info("replace_channel_up", node=node)
                    self._on_up()
            if self._pending and now - min(self._pending.values()) > DEAF:
                # Connected, but this node no longer hears the node our
                # publishes (and the other processes') land on.
                raise RedisConnectionError("the replace channel stopped hearing publishes")
            if not self.listening and now - subscribed > DEAF:
                raise RedisConnectionError("no probe came back on the replace channel")
            if now - heard > DEAF:
                # A half-open connection (no FIN from a vanished peer) reads
                # as silence; our own pings must be answered.
                raise RedisConnectionError("the replace channel stopped answering")
            if now - probed >= TICK:
                await self._probe(now)
                probed = now
            if now - heard >= TICK and now - pinged >= TICK:
                await pubsub.ping()
                pinged = now

    def _heard(self, data: bytes | str) -> bool:
        """Pass on a message; True when it was one of our probes, sent on this subscription."""
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        if not text.startswith(_PROBE_OP):
            self._on_message(data)
            return False
        owner, _, number = str(_field(text, "value")).rpartition(":")
        if owner != self._owner_id or not number.isdigit() or int(number) not in self._pending:
            return False  # another process's probe, or one from before a resubscribe
        # Heard: the path works, and probes sent before it that never came
        # (the first may overtake the SUBSCRIBE) prove nothing more.
        for older in [n for n in self._pending if n <= int(number)]:
            del self._pending[older]
        return True

    async def _probe(self, now: float) -> None:
        """Publish a probe; one that cannot be sent proves nothing either way."""
        number = next(self._probes)
        message = json.dumps({"op": "probe", "value": f"{self._owner_id}:{number}"})
        try:
            async with asyncio.timeout(TICK):
                await self._redis.publish(self._channel, message)
        except (RedisError, OSError, TimeoutError):
            return
        self._pending[number] = now


def _field(text: str, name: str) -> object:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message.get(name) if isinstance(message, dict) else None
