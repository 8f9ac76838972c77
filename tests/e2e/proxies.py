"""Real HAProxy and Caddy for the end-to-end tests, next to tests/e2e/nginx.py's nginx.

Each runs in the foreground as the current user, on loopback, with every file
it writes under the test's tmp_path, from a config rendered here: the
defaults a user would start from, plus only what a test changes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.nginx import accepting, free_port

HAPROXY = "/usr/sbin/haproxy"
CADDY = "/usr/bin/caddy"


def binary(path: str, name: str) -> str:
    """The executable; missing fails the run on CI and skips elsewhere."""
    exe = path if os.access(path, os.X_OK) else shutil.which(name)
    if exe is None:
        message = f"{name} is not installed (scripts/system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


@dataclass
class Proxy:
    process: asyncio.subprocess.Process
    port: int
    dir: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def haproxy_conf(port: int, upstream: str, server_timeout: str = "30s", extra: str = "") -> str:
    """HAProxy 2.6 as most configs start: HTTP mode, the usual timeouts, nothing else."""
    return (
        "global\n  maxconn 200\n"
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n"
        f"  timeout server {server_timeout}\n{extra}"
        f"frontend front\n  bind 127.0.0.1:{port}\n  default_backend sidecar\n"
        f"backend sidecar\n  server s1 {upstream}\n"
    )


def caddy_conf(
    port: int, upstream: str, site: str = "", tls: bool = False, server: str = ""
) -> str:
    """A Caddyfile: a reverse_proxy to ``upstream``; over TLS with Caddy's internal CA.

    ``site``: more directives in the site block; ``server``: in the global ``servers`` block.
    """
    servers = f"  servers {{\n{server}  }}\n" if server else ""
    address = f"https://127.0.0.1:{port}" if tls else f"http://127.0.0.1:{port}"
    tls_line = "  tls internal\n" if tls else ""
    return (
        "{\n  admin off\n  auto_https disable_redirects\n  skip_install_trust\n"
        f"{servers}}}\n"
        f"{address} {{\n{tls_line}{site}  reverse_proxy {upstream}\n}}\n"
    )


async def start_haproxy(tmp: Path, upstream: str, **conf: str) -> Proxy:
    exe = binary(HAPROXY, "haproxy")

    def argv(directory: Path, port: int) -> list[str]:
        path = directory / "haproxy.cfg"
        path.write_text(haproxy_conf(port, upstream, **conf))
        return [exe, "-db", "-f", str(path)]

    return await _start(tmp, "haproxy", argv)


async def start_caddy(
    tmp: Path, upstream: str, site: str = "", tls: bool = False, server: str = ""
) -> Proxy:
    exe = binary(CADDY, "caddy")

    def argv(directory: Path, port: int) -> list[str]:
        path = directory / "Caddyfile"
        path.write_text(caddy_conf(port, upstream, site, tls, server))
        return [exe, "run", "--adapter", "caddyfile", "--config", str(path)]

    proxy = await _start(tmp, "caddy", argv)
    proxy.scheme = "https" if tls else "http"
    return proxy


def caddy_root_ca(proxy: Proxy) -> Path:
    """The root certificate of the internal CA that Caddy signed its certificate with."""
    return proxy.dir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"


async def _start(tmp: Path, name: str, argv: object) -> Proxy:
    assert callable(argv)
    for attempt in range(3):
        port = free_port()
        directory = tmp / f"{name}-{port}"
        directory.mkdir()
        env = {
            **os.environ,
            "HOME": str(directory),
            "XDG_DATA_HOME": str(directory / "data"),
            "XDG_CONFIG_HOME": str(directory / "config"),
        }
        with (directory / "log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *argv(directory, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=directory,
            )
        proxy = Proxy(process, port, directory)
        if await accepting(proxy.process, proxy.port, 15.0):
            return proxy
        await proxy.stop()
        if "address already in use" not in proxy.log().lower() or attempt == 2:
            pytest.fail(f"{name} did not start:\n{proxy.log()}")
    raise AssertionError("unreachable")
