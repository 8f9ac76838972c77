"""A real Redis Cluster on loopback: 3 masters, 3 replicas, one per test session.

Started once (``redis-cli --cluster create``); tests keep apart by key prefix.
A test may kill a master: :meth:`RedisCluster.heal` restarts it (it rejoins as
a replica of the node promoted in its place) and waits for the cluster to be
whole again, so the next test finds six nodes and ``cluster_state:ok``.

Whole means more than ``cluster_state:ok``: a replica refuses to fail over
until it has synced with its master once (Redis counts a never-synced
replica's data as infinitely old: "Disconnected from master for longer than
allowed"), so a master killed before its replica's first sync stays failed
for good. The cluster is handed to tests, and given back by heal(), only when
every replica's link to its master is up and every node sees the same masters.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import ephemeral_range, free_port
from tests.fixtures_redis import redis_server_binary

#: How long a master may be silent before its replica takes over (ms). Short,
#: so a failover test is over in seconds.
NODE_TIMEOUT_MS = 1000
SLOTS = 16384


def cluster_port() -> int:
    """A free port P with P + 10000 (its cluster bus port) free too."""
    # Both below the ephemeral range, or an outgoing connection may take the bus port.
    while True:
        port = free_port(below=ephemeral_range()[0] - 10000)
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class ClusterNode:
    def __init__(self, exe: str, port: int, workdir: Path) -> None:
        self.exe, self.port, self.workdir = exe, port, workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        # A replica's first sync waits repl-diskless-sync-delay (5 s) for
        # other replicas to share the transfer; each master here has one, so
        # waiting only delays the moment the replica can take over.
        args += ["--repl-diskless-sync-delay", "0"]
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen([self.exe, *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RedisCluster:
    def __init__(self, cli: str, nodes: list[ClusterNode]) -> None:
        self.cli, self.nodes = cli, nodes

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def cli_on(self, port: int, *args: str, timeout: float = 5.0) -> str:
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout.decode(errors="replace")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            slot = int(self.cli_on(node.port, "CLUSTER", "KEYSLOT", key).strip())
            for line in self.cli_on(node.port, "CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "master" not in parts[2] or "fail" in parts[2]:
                    continue
                for span in parts[8:]:
                    lo, _, hi = span.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split(":")[1].split("@")[0])
        raise AssertionError(f"no master serves {key}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is whole and agrees on its masters."""
        self._wait(self._serving, timeout, "the cluster did not settle")

    def wait_whole(self, timeout: float = 30.0) -> None:
        """As wait_ok, and every node runs, and every replica has synced with its master.

        Only then can any master be killed and its replica take over.
        """
        self._wait(self._whole, timeout, "the cluster's replicas did not sync")

    def _wait(self, check: Callable[[], str | None], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while (why := check()) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {why}")
            time.sleep(0.1)

    def _serving(self) -> str | None:
        """None when every running node says ``cluster_state:ok`` and all see one slot map."""
        running = [n for n in self.nodes if n.running]
        states = {n.port: self.cli_on(n.port, "CLUSTER", "INFO") for n in running}
        if not states:
            return "no node runs"
        bad = {p: s for p, s in states.items() if "cluster_state:ok" not in s}
        if bad:
            return f"not ok: {bad}"
        maps = {n.port: self._masters_seen_by(n.port) for n in running}
        if len(set(maps.values())) != 1:
            return f"the nodes disagree on the masters: {maps}"
        # Right after a kill every node still counts the dead master in; a
        # moment later its slots are nobody's until its replica is promoted
        # (and a node's cluster_state may lag behind).
        alive = {f"127.0.0.1:{n.port}" for n in running}
        masters = maps[running[0].port]
        if any(address not in alive for address, _ in masters):
            return f"a master that is not running still serves slots: {maps}"
        if sum(_count(spans) for _, spans in masters) != SLOTS:
            return f"not every slot has a live master: {maps}"
        return None

    def _whole(self) -> str | None:
        if not all(n.running for n in self.nodes):
            return "a node is not running"
        if (why := self._serving()) is not None:
            return why
        for node in self.nodes:
            flags = [line.split()[2] for line in self.cli_on(node.port, "CLUSTER", "NODES")
                     .splitlines() if len(line.split()) > 2]  # fmt: skip
            # (noaddr: an entry of a node that is gone for good, not one of ours.)
            if any(("fail" in f or "handshake" in f) and "noaddr" not in f for f in flags):
                return f"{node.port} does not see every node connected: {flags}"
            info = self.cli_on(node.port, "CLUSTER", "INFO")
            if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                return f"{node.port} does not know every node: {info}"
            replication = self.cli_on(node.port, "INFO", "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return f"replica {node.port} has not synced: {replication}"
            if "role:master" in replication and "connected_slaves:0" in replication:
                return f"master {node.port} has no replica attached: {replication}"
        return None

    def _masters_seen_by(self, port: int) -> frozenset[tuple[str, str]]:
        """(master address, its slot ranges) as ``port`` sees them, failed nodes left out."""
        masters = set()
        for line in self.cli_on(port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 8 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            if parts[8:]:
                masters.add((parts[1].split("@")[0], " ".join(sorted(parts[8:]))))
        return frozenset(masters)

    def flush(self) -> None:
        """Empty every master, so a test finds no key of another (the cluster is shared)."""
        for node in self.nodes:
            if node.running and "role:master" in self.cli_on(node.port, "INFO", "replication"):
                self.cli_on(node.port, "FLUSHALL")

    def heal(self) -> None:
        """Restart every killed node (each rejoins from its nodes.conf) and wait until whole.

        A restarted master rejoins as a replica of the node promoted in its
        place and must sync before the next test may kill that one.
        """
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_whole()


def _count(spans: str) -> int:
    """How many slots ``"0-5460 5461"`` names (migrating entries, in brackets, not counted)."""
    total = 0
    for span in spans.split():
        lo, _, hi = span.partition("-")
        if lo.isdigit():
            total += int(hi or lo) - int(lo) + 1
    return total


@pytest.fixture
def redis_on_cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The cluster, emptied: the single-server tests' ``redis_server`` in the cluster modules."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
async def raw_cluster(redis_on_cluster: RedisCluster) -> Any:
    """A plain cluster client, to look at what the backends wrote."""
    from redis.asyncio.cluster import RedisCluster as Client

    client = Client.from_url(redis_on_cluster.url.replace("+cluster", ""), decode_responses=True)
    await client.initialize()  # its pubsub() needs the slot map
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    exe = redis_server_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        why = "redis-cli is not installed (scripts/system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("redis-cluster")
    nodes = [ClusterNode(exe, cluster_port(), workdir) for _ in range(6)]
    for node in nodes:
        node.start()
    cluster = RedisCluster(cli, nodes)
    try:
        for node in nodes:
            deadline = time.monotonic() + 10
            while "PONG" not in cluster.cli_on(node.port, "PING"):
                if not node.running or time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {node.port} did not start")
                time.sleep(0.05)
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError((created.stdout + created.stderr).decode(errors="replace"))
        cluster.wait_whole()
        yield cluster
    finally:
        for node in nodes:
            node.kill()
