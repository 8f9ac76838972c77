"""The paths a load goes through: direct to the producer, nginx, and the sidecar
in each mode users deploy (plain, session key, resume on memory or Redis, two
workers on Redis, a remote follower on a second process, a WebSocket route).

Each is started fresh for each scenario, on free loopback ports, so one
scenario's heap or connection state never colours the next one's numbers. A
Redis mode starts its own ``redis-server``; its CPU is reported apart from the
sidecar's (``backend``), as its connection count is. ``remote-redis`` runs two
sidecars on that Redis: every stream starts on the first and is reopened on
the second with ``Last-Event-ID`` after its first events, so the client follows
the run from the other process; the proxy CPU is both processes', each also
reported apart. ``websocket`` puts the sidecar in front of the bundled example
gateway (OpenClaw's protocol); the gateway takes the producer's place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.procs import Child, Usage
from sidecar.examples.gateway import TOKEN_INTERVAL
from sidecar.examples.gateway_text import cumulative_texts

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
#: The query parameter the load client puts each stream's session key in.
SESSION_PARAM = "s"


@dataclass(frozen=True)
class Mode:
    """How the sidecar is configured for a path."""

    session: bool = False
    resume: bool = False
    redis: bool = False
    workers: int = 1
    #: The client follows each run from a second process (reconnected there).
    remote: bool = False


MODES = {
    "sidecar": Mode(),
    "session": Mode(session=True),
    "resume": Mode(session=True, resume=True),
    "resume-redis": Mode(session=True, resume=True, redis=True),
    "workers2-redis": Mode(session=True, resume=True, redis=True, workers=2),
    "remote-redis": Mode(session=True, resume=True, redis=True, remote=True),
}
NAMES = ("direct", "nginx", *MODES, "websocket")
#: What every WebSocket-route stream asks the gateway (the topic fills its 60 characters).
WS_MESSAGE = "a steady stream of small deltas through the bench gateway route"
WS_TOKEN = "bench-token"


def ws_deltas() -> int:
    """The delta events of one gateway run of :data:`WS_MESSAGE` (the stream's events)."""
    return len(cumulative_texts(WS_MESSAGE))


class Target:
    """A path to the producer; ``pid`` is the proxy whose CPU and memory are measured."""

    name = "direct"

    def __init__(self, upstream_port: int) -> None:
        self.port = upstream_port
        self.child: Child | None = None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def url(self, query: str) -> str:
        return f"http://127.0.0.1:{self.port}/bench?{query}"

    #: Set on session routes: the load client gives each stream a key there.
    session_param = ""
    #: A JSON body to POST instead of a GET, and the event type counted instead
    #: of the producer's stamped events (a gateway's deltas carry no stamp).
    body = ""
    count_event = ""

    def follow_url(self, query: str) -> str:
        """Where each stream is reopened after its first events ("": it stays)."""
        return ""

    def pids(self) -> dict[str, int]:
        """The processes whose CPU and memory together are the proxy's, by role."""
        return {} if self.pid is None else {"proxy": self.pid}

    def worker_pids(self) -> list[int]:
        """The worker processes under a supervisor (workers > 1), else none."""
        return []

    def usage(self) -> Usage:
        """CPU time and RSS of all the proxy's processes together."""
        return self.usage_parts()[0]

    def usage_parts(self) -> tuple[Usage, dict[str, float]]:
        """The proxy's usage and each role's CPU seconds, from the same reads.

        The total is the sum of the parts as read, so the two always agree:
        reading them apart lets a clock tick fall between the reads.
        """
        parts = {role: Usage.of(pid) for role, pid in self.pids().items()}
        if not parts:
            return Usage.of(None), {}
        used = list(parts.values())
        total = Usage(sum(u.cpu_s for u in used), sum(u.rss_kib for u in used), used[-1].at)
        return total, {role: u.cpu_s for role, u in parts.items()}

    @property
    def producer_pid(self) -> int | None:
        """The upstream's process when it is not the bench producer."""
        return None

    def alive(self) -> bool:
        return self.child is None or self.child.alive()

    def backend(self) -> dict[str, Any] | None:
        """The Redis behind the path, if any: its CPU so far and its client connections."""
        return None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class Nginx(Target):
    name = "nginx"

    def __init__(self, upstream_port: int, workdir: Path, nofile: int) -> None:
        super().__init__(procs.free_port())
        exe = nginx_path()
        if exe is None:
            raise RuntimeError("nginx is not installed (scripts/system-deps installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)  # nginx's workers run as nobody when started by root
        conf = TEMPLATE.read_text()
        for key, value in {
            "DIR": str(workdir),
            "PORT": str(self.port),
            "UPSTREAM_PORT": str(upstream_port),
            "NOFILE": str(nofile),
            # Above the fd limit on purpose: once 15/16 of worker_connections are
            # in use, nginx starts closing connections still reading their
            # request ("worker_connections are not enough, reusing connections").
            "CONNECTIONS": str(2 * nofile),
        }.items():
            conf = conf.replace(f"@{key}@", value)
        path = workdir / "nginx.conf"
        path.write_text(conf)
        argv = [exe, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(path)]
        self.child = Child("nginx", argv, workdir)
        procs.wait_port(self.port, 10, self.child)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(signal.SIGQUIT)  # graceful: the master waits for its worker


class Redis:
    """A redis-server of the path's own, on a free loopback port, persisting nothing."""

    def __init__(self, workdir: Path, nofile: int) -> None:
        self.port = procs.free_port()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--maxclients", str(max(nofile - 64, 1000)),
                "--logfile", str(workdir / "redis.log")]  # fmt: skip
        self.child = Child("redis", argv, workdir)
        procs.wait_port(self.port, 10, self.child)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def usage(self) -> dict[str, Any]:
        """Its CPU so far and its client connections, from INFO.

        Redis's own CPU counters come from getrusage in microseconds; /proc's
        10 ms ticks would round a short run's Redis CPU down to nothing.
        """
        import redis  # the sidecar's own dependency

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            info = client.info("everything")
        finally:
            client.close()
        cpu = sum(float(info[k]) for k in ("used_cpu_sys", "used_cpu_user"))
        cpu += sum(float(info[k]) for k in ("used_cpu_sys_children", "used_cpu_user_children"))
        # Minus this one.
        return {"cpu_s": cpu, "clients": int(info["connected_clients"]) - 1}


class Process:
    """One sidecar process on free loopback ports, with the config a user would write."""

    def __init__(
        self, name: str, workdir: Path, route: dict[str, Any], *, streams: int,
        workers: int = 1, redis_url: str | None = None,
    ) -> None:  # fmt: skip
        self.port, self.admin_port = procs.free_port(), procs.free_port()
        # JSON is YAML; the config is what a user would write, nothing bench-only.
        config: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "logging": {"level": "warning", "format": "json"},
            "max_streams": max(20_000, streams + 100),
            "drain_timeout": 1,
            "workers": workers,
            "routes": [route],
        }
        if redis_url is not None:
            config["backend"] = {"kind": "redis", "url": redis_url}
        path = workdir / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2))
        self.child = Child(name, procs.python("sidecar", "--config", str(path)), workdir)
        try:
            # Ready, as a readiness probe sees it: with workers, once every one
            # listens (the stream port alone answers with the first).
            procs.wait_http(f"http://127.0.0.1:{self.admin_port}/readyz", 20, self.child)
        except BaseException:
            self.child.stop()
            raise


class Sidecar(Target):
    name = "sidecar"

    def __init__(
        self,
        upstream_port: int,
        workdir: Path,
        heartbeat: float,
        streams: int,
        nofile: int,
        mode: str = "sidecar",
    ) -> None:
        super().__init__(0)
        self.name = mode
        how = MODES[mode]
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis = Redis(workdir, nofile) if how.redis else None
        self.follower: Process | None = None
        route: dict[str, Any] = {
            "name": "bench",
            "path": "/bench",
            "upstream": f"http://127.0.0.1:{upstream_port}/bench",
            "heartbeat": {"interval": heartbeat},
            "comments": "convert",
        }
        if how.session:
            self.session_param = SESSION_PARAM
            route["session"] = {"from": f"query:{SESSION_PARAM}"}
        if how.resume:
            route["resume"] = {"enabled": True}
        redis_url = self.redis.url if self.redis is not None else None
        try:
            main = Process("sidecar", workdir, route, streams=streams, workers=how.workers,
                           redis_url=redis_url)  # fmt: skip
            self.child, self.port = main.child, main.port
            if how.remote:
                self.follower = Process("follower", workdir, route, streams=streams,
                                        redis_url=redis_url)  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def worker_pids(self) -> list[int]:
        if MODES[self.name].workers <= 1 or self.child is None:
            return []
        supervisor = self.child.pid
        return procs.listening([p for p in procs.tree(supervisor) if p != supervisor], self.port)

    def follow_url(self, query: str) -> str:
        if self.follower is None:
            return ""
        return f"http://127.0.0.1:{self.follower.port}/bench?{query}"

    def pids(self) -> dict[str, int]:
        if self.follower is None or self.child is None:
            return super().pids()
        return {"run": self.child.pid, "follower": self.follower.child.pid}

    def alive(self) -> bool:
        return super().alive() and (self.follower is None or self.follower.child.alive())

    def backend(self) -> dict[str, Any] | None:
        if self.redis is None:
            return None
        return self.redis.usage()

    def stop(self) -> None:
        super().stop()
        if self.follower is not None:
            self.follower.child.stop()
        if self.redis is not None:
            self.redis.child.stop()


class WebSocketRoute(Target):
    """The sidecar in front of the example gateway, ``profile: openclaw``, one shared socket.

    Each stream POSTs :data:`WS_MESSAGE` and gets the run's deltas as SSE. The
    gateway's ``--speed`` paces them at the scenario's rate; nginx cannot
    bridge a WebSocket to SSE, so it has no such path.
    """

    name = "websocket"
    count_event = "delta"
    body = json.dumps({"message": WS_MESSAGE})

    def __init__(self, workdir: Path, heartbeat: float, streams: int, rate: float) -> None:
        super().__init__(0)
        workdir.mkdir(parents=True, exist_ok=True)
        gateway_port = procs.free_port()
        # The gateway waits TOKEN_INTERVAL / speed between deltas; unpaced: as fast as it goes.
        speed = rate * TOKEN_INTERVAL if rate > 0 else 1000.0
        argv = procs.python("sidecar.examples.gateway", "--port", str(gateway_port),
                            "--speed", f"{speed:g}", "--token", WS_TOKEN)  # fmt: skip
        self.gateway = Child("gateway", argv, workdir)
        route: dict[str, Any] = {
            "name": "bench",
            "path": "/bench",
            "upstream": f"ws://127.0.0.1:{gateway_port}",
            "websocket": {"profile": "openclaw", "token": WS_TOKEN},
            "heartbeat": {"interval": heartbeat},
        }
        try:
            procs.wait_port(gateway_port, 15, self.gateway)
            main = Process("sidecar", workdir, route, streams=streams)
            self.child, self.port = main.child, main.port
        except BaseException:
            self.stop()
            raise

    @property
    def producer_pid(self) -> int | None:
        return self.gateway.pid

    def alive(self) -> bool:
        return super().alive() and self.gateway.alive()

    def stop(self) -> None:
        super().stop()
        self.gateway.stop()


def start(
    name: str, upstream_port: int, workdir: Path, *, heartbeat: float, streams: int, nofile: int,
    rate: float = 0.0,
) -> Target:  # fmt: skip
    if name == "direct":
        return Target(upstream_port)
    if name == "nginx":
        return Nginx(upstream_port, workdir / "nginx", nofile)
    if name in MODES:
        return Sidecar(upstream_port, workdir / "sidecar", heartbeat, streams, nofile, name)
    if name == "websocket":
        return WebSocketRoute(workdir / "sidecar", heartbeat, streams, rate)
    raise ValueError(f"unknown target {name!r}; one of {', '.join(NAMES)}")


def start_producer(workdir: Path) -> tuple[Child, int]:
    child = Child("producer", procs.python("bench.producer", "--port", "0"), workdir)
    line = child.readline(15)
    if not line.startswith("ready "):
        child.stop()
        raise RuntimeError(f"producer said {line!r}{child.tail()}")
    return child, int(line.split()[1])


def nginx_path() -> str | None:
    exe = shutil.which("nginx")
    if exe is None and os.access("/usr/sbin/nginx", os.X_OK):
        exe = "/usr/sbin/nginx"
    return exe


def ensure_nginx() -> str | None:
    """nginx's path, installing the Debian package when it is missing; None if that fails."""
    exe = nginx_path()
    if exe is not None or shutil.which("apt-get") is None:
        return exe
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("nginx is missing: installing the Debian package (apt-get install nginx)")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
    ):
        if subprocess.run([*sudo, *cmd], env=env, check=False).returncode != 0:
            return None
    return nginx_path()


def nginx_version() -> str | None:
    exe = nginx_path()
    if exe is None:
        return None
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ") or None
