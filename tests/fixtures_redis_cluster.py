"""A real Redis Cluster on loopback: 3 masters, 3 replicas, one per test session.

Started once (``redis-cli --cluster create``); tests keep apart by key prefix.
A test may kill a master: :meth:`RedisCluster.heal` restarts it (it rejoins as
a replica of the node promoted in its place) and waits for the cluster to be
whole again, so the next test finds six nodes and ``cluster_state:ok``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import ephemeral_range, free_port
from tests.fixtures_redis import redis_server_binary

#: How long a master may be silent before its replica takes over (ms). Short,
#: so a failover test is over in seconds.
NODE_TIMEOUT_MS = 1000


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
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli_on(n.port, "CLUSTER", "INFO") for n in self.nodes if n.running]
            if states and all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle: {states}")
            time.sleep(0.1)

    def flush(self) -> None:
        """Empty every master, so a test finds no key of another (the cluster is shared)."""
        for node in self.nodes:
            if node.running and "role:master" in self.cli_on(node.port, "INFO", "replication"):
                self.cli_on(node.port, "FLUSHALL")

    def heal(self) -> None:
        """Restart every killed node (each rejoins from its nodes.conf) and wait until whole."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ok()
        deadline = time.monotonic() + 30
        # Until the restarted node is known as connected again by the others.
        while any("fail" in line for line in self.cli_on(self.nodes[0].port, "CLUSTER", "NODES")
                  .splitlines() if "noaddr" not in line):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("a restarted node did not rejoin")
            time.sleep(0.1)


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
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            node.kill()
