"""The three paths a load goes through: direct to the producer, nginx, the sidecar.

Each is started fresh for each scenario, on free loopback ports, so one
scenario's heap or connection state never colours the next one's numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from bench import procs
from bench.procs import Child

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
NAMES = ("direct", "nginx", "sidecar")


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

    def alive(self) -> bool:
        return self.child is None or self.child.alive()

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


class Sidecar(Target):
    name = "sidecar"

    def __init__(self, upstream_port: int, workdir: Path, heartbeat: float, streams: int) -> None:
        super().__init__(procs.free_port())
        self.admin_port = procs.free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sidecar.yaml"
        # JSON is YAML; the config is what a user would write, nothing bench-only.
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "logging": {"level": "warning", "format": "json"},
            "max_streams": max(20_000, streams + 100),
            "drain_timeout": 1,
            "routes": [
                {
                    "name": "bench",
                    "path": "/bench",
                    "upstream": f"http://127.0.0.1:{upstream_port}/bench",
                    "heartbeat": {"interval": heartbeat},
                    "comments": "convert",
                }
            ],
        }
        self.config.write_text(json.dumps(config, indent=2))
        argv = procs.python("sidecar", "--config", str(self.config))
        self.child = Child("sidecar", argv, workdir)
        procs.wait_http(f"http://127.0.0.1:{self.admin_port}/healthz", 20, self.child)


def start(
    name: str, upstream_port: int, workdir: Path, *, heartbeat: float, streams: int, nofile: int
) -> Target:
    if name == "direct":
        return Target(upstream_port)
    if name == "nginx":
        return Nginx(upstream_port, workdir / "nginx", nofile)
    if name == "sidecar":
        return Sidecar(upstream_port, workdir / "sidecar", heartbeat, streams)
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
