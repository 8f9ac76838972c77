"""Commands packed by hiredis (sidecar/redispack.py): the bytes redis-py would send, faster."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from sidecar.redisconn import connect
from sidecar.redispack import packed

COMMANDS = [
    (
        "EVALSHA",
        "a" * 40,
        3,
        "k1",
        b"k2",
        "k3",
        "run",
        30000,
        1000,
        b"",
        12,
        "é-1",
        b"id: 1\n\n",
        0,
    ),
    ("SCRIPT LOAD", "return 1"),  # several words: separate arguments, as redis-py sends them
    (b"CLIENT SETNAME", b"x"),
    ("SET", "k", 1.5),
    ("SET", "k", -(10**20)),
    ("SET", b"k", memoryview(b"value")),
    ("XREAD", "BLOCK", 0, "STREAMS", "s", "0-0"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=[str(c[0]) for c in COMMANDS])
def test_packed_bytes_are_redis_pys(args):
    ours = packed(Connection)()
    theirs = Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert len(ours.pack_command(*args)) == 1  # one buffer, not one per argument


@pytest.mark.parametrize("value", [None, True, object()])
def test_a_value_redis_cannot_take_is_redis_pys_error(value):
    with pytest.raises(DataError):
        packed(Connection)().pack_command("SET", "k", value)


def test_every_client_made_here_packs_with_hiredis():
    single = connect("redis://127.0.0.1:1/0", cluster=False, pool_size=2)
    assert single.pool is not None
    assert single.pool.connection_class is packed(Connection) is not Connection
    tls = connect("rediss://127.0.0.1:1/0", cluster=False, pool_size=2)
    assert tls.pool is not None
    assert tls.pool.connection_class is packed(SSLConnection) is not SSLConnection
    unix = connect("unix:///tmp/none.sock", cluster=False, pool_size=1, single_connection=True)
    assert unix.client.connection_pool.connection_class is packed(UnixDomainSocketConnection)
    cluster = connect("redis+cluster://127.0.0.1:1", cluster=False, pool_size=2)
    manager = cluster.client.nodes_manager
    assert manager.connection_kwargs["connection_class"] is packed(Connection)
    assert {n.connection_class for n in manager.startup_nodes.values()} == {packed(Connection)}
