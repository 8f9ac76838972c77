"""A real ``redis-server`` on a free loopback port, one per test, that a test can stop and restart.

Missing ``redis-server`` is a skip on a workstation and a failure in CI (``CI``
set): scripts/system-deps installs it, and a green CI run must have run these.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import free_port


def redis_server_binary() -> str:
    """The path of redis-server, or the test's skip (failure in CI) when there is none."""
    exe = shutil.which("redis-server")
    if exe is None:
        why = "redis-server is not installed (scripts/system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return exe


class RedisServer:
    """One redis-server process without persistence; ``stop()``/``start()`` keep its port."""

    def __init__(self, exe: str, port: int, workdir: Path) -> None:
        self.exe = exe
        self.port = port
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.exe, *args], stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def stop(self) -> None:
        """Shut it down (as an operator or a crash would take it away) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text(errors='replace')}")
            if self._pong():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    exe = redis_server_binary()
    workdir = tmp_path_factory.mktemp("redis")
    for attempt in range(3):
        server = RedisServer(exe, free_port(), workdir)
        try:
            server.start()
            break
        except RuntimeError:
            # Another process took the free port between probe and bind.
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def raw(redis_server):
    """A plain client on the test Redis, to look at what the backends wrote."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()
