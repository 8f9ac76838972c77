"""Which client a backend URL and the ``cluster`` flag make, and the key names' hash tags."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from sidecar.redisconn import _plain_url, connect, wants_cluster
from sidecar.rediskeys import session_tag
from sidecar.replay.redis_scripts import Keys
from sidecar.sessions.redis_scripts import fence_key, owner_key


def test_the_url_scheme_or_the_flag_asks_for_a_cluster():
    assert not wants_cluster("redis://h:6379/0", False)
    assert wants_cluster("redis://h:6379/0", True)
    assert wants_cluster("redis+cluster://h:6379", False)
    assert wants_cluster("REDISS+CLUSTER://h:6379", False)
    assert _plain_url("redis+cluster://h:1/0") == "redis://h:1/0"
    assert _plain_url("rediss+cluster://u:p@h:1") == "rediss://u:p@h:1"
    assert _plain_url("redis://h:1") == "redis://h:1"


async def test_connect_makes_the_client_asked_for_without_connecting():
    single = connect("redis://127.0.0.1:1/0", cluster=False, pool_size=3)
    assert isinstance(single.client, Redis)
    assert single.counts() == {"open": 0, "in_use": 0, "max": 3}
    await single.aclose()
    cluster = connect("redis+cluster://127.0.0.1:1", cluster=False, pool_size=3)
    assert isinstance(cluster.client, RedisCluster)
    await cluster.aclose()


def test_a_sessions_keys_hash_to_one_slot_whatever_its_key_holds():
    for route, key in [("chat", "u-1"), ("a:b", "c"), ("r", "x}y{z"), ("r", "}"), ("r", "{}")]:
        run = Keys.of("p:", route, key, "run}{1")
        names = [owner_key("p:", route, key), fence_key("p:", route, key), run.pointer]
        names += [run.stream, run.index, run.follow, run.live]
        assert len({key_slot(n.encode()) for n in names}) == 1
        assert session_tag(route, key) in names[0]


async def test_a_cluster_whose_slot_map_cannot_be_fetched_is_a_connection_error():
    """An outage, as callers catch it (redis-py's own is no RedisError)."""
    cluster = connect("redis+cluster://127.0.0.1:1", cluster=False, pool_size=3)
    with pytest.raises(RedisConnectionError):
        await cluster.client.initialize()
    await cluster.aclose()
