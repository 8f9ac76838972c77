"""How the Redis backends connect: to one server, or to a Redis Cluster.

Both backends (sessions, replay logs) build their clients here, so a single
server and a cluster get the same timeouts and retries. One server: a
:class:`~redis.asyncio.BlockingConnectionPool` of ``pool_size`` (a burst
queues for a free connection). A cluster (``backend.cluster: true`` or a
``redis+cluster://`` URL naming any of its nodes): redis-py's
:class:`~redis.asyncio.cluster.RedisCluster`, ``pool_size`` connections per
node, which follows slot moves and failovers by itself. Every key of one
session carries the session's hash tag (:mod:`sidecar.rediskeys`), so each
script and each transaction-free pipeline entry touches one slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection as RedisConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import get_node_name
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar import looptime
from sidecar.redispack import packed
from sidecar.redispipe import run_scripts

#: Connect timeout, and what callers' budgets are built from: an outage shows
#: within about this.
OP_TIMEOUT = 1.0
#: The read timeout of a socket: only a backstop. Every call runs under a
#: budget in the loop's free time (sidecar/looptime.py) that ends it sooner;
#: a socket timeout is a plain timer, which after a stall of the loop would
#: fire before the reply already in the socket is read.
SOCKET_TIMEOUT = OP_TIMEOUT + looptime.MAX_STRETCH
#: The bound of one operation in the loop's free time (its immediate retry on
#: a dropped connection, or a new connection's handshake, included): what the
#: backends' calls wait at most.
BUDGET = OP_TIMEOUT + 0.5
_CLUSTER_SUFFIX = "+cluster"

#: Either client; both answer the commands the backends use.
Client = Redis | RedisCluster


#: The nodes of each cluster (by the URL that names it) in the latest slot
#: map any client of this process fetched: where a client that has not
#: fetched one yet looks when the URL's node is down.
_known_nodes: dict[str, list[tuple[str, int]]] = {}


class _GatedCluster(RedisCluster):
    """A cluster client whose commands queue for one of ``limit`` slots.

    redis-py's cluster pools fail a call at once (MaxConnectionsError) when a
    node's connections are all busy; a burst of claims should queue instead,
    as on one server, each caller's budget bounding its wait. Pipelines and
    the subscription draw on the headroom of the per-node pools.

    A client knows only the URL's node until its first slot map; redis-py
    then learns every node from it. Clients connect on first use (and some
    are made anew on every reconnect), so one may first need a map after the
    URL's node died: it would find no node to ask until that node is back.
    So every slot map fetched is shared through ``_known_nodes``, and a
    client about to fetch one asks those nodes too.
    """

    def __init__(self, *args: Any, limit: int, seed: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(limit)
        self._seed = seed
        # redis-py fixes the connection class of every node it makes here.
        shared = self.nodes_manager.connection_kwargs
        shared["connection_class"] = packed(shared.get("connection_class", RedisConnection))
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = packed(node.connection_class)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._gate:
            return await super().execute_command(*args, **kwargs)

    async def initialize(self, *args: Any, **kwargs: Any) -> _GatedCluster:
        # A slot map that cannot be fetched (every node tried was down, as
        # mid-failover) is an outage like any other: redis-py raises it as
        # RedisClusterException, which is no RedisError, and callers would
        # fail with an internal error instead of "backend unavailable".
        if self._initialize:
            self._add_known_nodes()
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc)) from exc
        self._share_nodes()
        return self

    async def refresh_slots(self) -> None:
        """Fetch the slot map again now (not only after a command failed)."""
        self._add_known_nodes()
        try:
            await self.nodes_manager.initialize()
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc)) from exc
        self._share_nodes()

    def _add_known_nodes(self) -> None:
        """Ask the nodes other clients saw too (the next slot map drops those not in it)."""
        manager = self.nodes_manager
        for host, port in _known_nodes.get(self._seed, ()):
            if get_node_name(host, port) not in manager.startup_nodes:
                node = ClusterNode(host, port, **manager.connection_kwargs)
                manager.startup_nodes[node.name] = node

    def _share_nodes(self) -> None:
        nodes = self.nodes_manager.nodes_cache.values()
        if nodes:
            _known_nodes[self._seed] = [(n.host, int(n.port)) for n in nodes]


#: Per-node connections beyond the gate: the lease or append pipeline, the subscription.
_HEADROOM = 2


def wants_cluster(url: str, cluster: bool) -> bool:
    scheme = url.partition("://")[0].lower()
    return cluster or scheme.endswith(_CLUSTER_SUFFIX)


def _plain_url(url: str) -> str:
    """``redis+cluster://h:p`` → ``redis://h:p`` (what redis-py parses)."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower().endswith(_CLUSTER_SUFFIX):
        scheme = scheme[: -len(_CLUSTER_SUFFIX)]
    return scheme + sep + rest


def _retry(cluster: bool) -> Retry:
    if cluster:
        # A failover shows as dropped connections and timeouts on the dead
        # master's slots; redis-py reloads the slot map between attempts.
        # The callers' budgets bound the whole.
        return Retry(
            ExponentialBackoff(cap=0.2, base=0.05),
            2,
            supported_errors=(RedisConnectionError, RedisTimeoutError),
        )
    # One immediate retry on a dropped connection (a pooled socket from
    # before a Redis restart), none on timeouts: a call waits for Redis
    # within its caller's budget, never longer.
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


@dataclass
class Connection:
    """A client and, for one server, the pool it draws from (closed together)."""

    client: Client
    pool: BlockingConnectionPool | None
    pool_size: int

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.pool is not None:
            await self.pool.aclose()  # a pool passed in is not closed with its client

    def counts(self) -> dict[str, int]:
        """Open and busy connections, and the most there may be (metrics)."""
        pool = self.pool
        if pool is not None:
            in_use = len(pool._in_use_connections)
            idle = len(pool._available_connections)
            return {"open": in_use + idle, "in_use": in_use, "max": self.pool_size}
        if not isinstance(self.client, RedisCluster):
            return {"open": 0, "in_use": 0, "max": self.pool_size}
        nodes = self.client.get_nodes()
        opened = sum(len(n._connections) for n in nodes)
        idle = sum(len(n._free) for n in nodes)
        return {
            "open": opened,
            "in_use": opened - idle,
            "max": (self.pool_size + _HEADROOM) * len(nodes),
        }


def connect(
    url: str,
    *,
    cluster: bool,
    pool_size: int,
    socket_timeout: float | None = SOCKET_TIMEOUT,
    single_connection: bool = False,
) -> Connection:
    """A client that connects on first use (a Redis that is down is no error here)."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": OP_TIMEOUT,
        "retry": _retry(wants_cluster(url, cluster)),
    }
    if wants_cluster(url, cluster):
        plain = _plain_url(url)
        client = _GatedCluster.from_url(
            plain, max_connections=pool_size + _HEADROOM, limit=pool_size, seed=plain, **options
        )
        return Connection(client, None, pool_size)
    if single_connection:
        single = Redis.from_url(url, single_connection_client=True, **options)
        single.connection_pool.connection_class = packed(single.connection_pool.connection_class)
        return Connection(single, None, 1)
    # The wait for a free connection is bounded by the caller's budget
    # (a pool timer would fire after a stall of the loop, as above).
    pool = BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=None, **options)
    pool.connection_class = packed(pool.connection_class)
    return Connection(Redis(connection_pool=pool), pool, pool_size)


async def pubsub(client: Client, channel: str, avoid: Collection[str] = ()) -> tuple[PubSub, str]:
    """A subscription for ``channel`` and the name of the node it is on.

    One server: that server. A cluster: plain PUBLISH reaches every node over
    the cluster bus, so any node will do. The pick is the channel's slot
    node, as redis-py's own, unless that is in ``avoid`` (a subscription
    there just failed): then another master, then a replica. redis-py would
    pick from a slot map that only ordinary commands refresh, and keep
    dialling a dead master; so after a failure the map is fetched again too.
    """
    if not isinstance(client, RedisCluster):
        return client.pubsub(), ""
    await client.initialize()
    if avoid and isinstance(client, _GatedCluster):
        await client.refresh_slots()
    preferred = client.get_node_from_key(channel)
    nodes = [preferred, *client.get_primaries(), *client.get_replicas()]
    node = next((n for n in nodes if n is not None and n.name not in avoid), preferred)
    if node is None:
        raise RedisConnectionError("the cluster's slot map has no node")
    return client.pubsub(node=node), node.name


def raise_if_cancelled() -> None:
    """Raise the CancelledError of a cancel that a Redis call let pass unraised.

    redis-py's asyncio client can finish a command (a pipeline's execute, for
    one) as if the task's cancel had not come, or turn it into a connection
    error; a loop that goes on after such a call would then never end.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Call:
    """A queued script call: the script, its keys and args, when it was sent, its result."""

    __slots__ = ("args", "future", "keys", "script", "sent")

    def __init__(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], future: Any
    ) -> None:
        self.script, self.keys, self.args = script, keys, args
        self.future: asyncio.Future[Any] = future
        self.sent: float | None = None


class ScriptRounds:
    """Script calls of many tasks sent together: one pipeline per round.

    A burst of new streams (claims, log opens) would otherwise queue for the
    pool's few connections one round trip each, and on a busy loop the wait
    outlasts a caller's budget. Calls made while a round is out go in the
    next one, however many they are; each caller gets its own result or
    error. A caller's budget runs from when its call is sent: a call still
    queued waits as long as rounds keep coming back (Redis answers, the
    burst is only long), and gives up when none has for a whole budget (an
    outage shows within it). The script still runs if its caller stopped
    waiting after it was sent: callers that must know, shield the call.
    """

    def __init__(self, client: Client, max_per_round: int = 512) -> None:
        self._client = client
        self._max = max_per_round
        self._queued: list[_Call] = []
        self._runner: asyncio.Task[None] | None = None
        #: When a round last came back (or the first was sent): the queue moves.
        self._moved = 0.0

    async def call(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], budget: float
    ) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        self._queued.append(call)
        if self._runner is None:
            self._moved = looptime.free_time()
            self._runner = asyncio.ensure_future(self._rounds())
        # Stamps and deadlines in the loop's free time: a stall of the loop
        # (which also holds the rounds back) spends nobody's budget.
        deadline = looptime.free_time() + budget
        try:
            while True:
                try:
                    async with looptime.timeout(deadline - looptime.free_time()):
                        return await asyncio.shield(call.future)
                except TimeoutError:
                    deadline = (self._moved if call.sent is None else call.sent) + budget
                    if deadline <= looptime.free_time():
                        raise
        finally:
            if not call.future.done():
                call.future.cancel()  # not sent yet: it never will be

    async def _rounds(self) -> None:
        try:
            while self._queued:
                calls, self._queued = self._queued[: self._max], self._queued[self._max :]
                calls = [c for c in calls if not c.future.done()]  # its caller stopped waiting
                sent = looptime.free_time()
                for call in calls:
                    call.sent = sent
                try:
                    # A round no caller waits for any more ends too (its
                    # callers' budgets run from ``sent``), and the next goes.
                    async with looptime.timeout(BUDGET):
                        results = await run_scripts(
                            self._client, [(c.script, c.keys, c.args) for c in calls]
                        )
                    raise_if_cancelled()
                except Exception as exc:  # the whole round failed: each caller learns why
                    for call in calls:
                        if not call.future.done():
                            call.future.set_exception(exc)
                    continue
                self._moved = looptime.free_time()
                for call, result in zip(calls, results, strict=True):
                    if call.future.done():
                        continue
                    if isinstance(result, Exception):
                        call.future.set_exception(result)
                    else:
                        call.future.set_result(result)
        finally:
            self._runner = None
            for call in self._queued:  # cancelled with calls still queued
                if not call.future.done():
                    call.future.set_exception(RedisConnectionError("the client closed"))
            self._queued = []

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=2 * OP_TIMEOUT)
