"""A real nginx for the end-to-end tests, configured from the shipped snippet.

The full nginx.conf is rendered around deploy/nginx/sse-sidecar.conf with only
the directives a test must change replaced (upstream address, listen port,
read timeout, variants), each replacement checked to hit exactly one directive,
so a test breaks loudly when the snippet changes shape. nginx runs as the
current user with every file it writes under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "deploy" / "nginx" / "sse-sidecar.conf"
NGINX = "/usr/sbin/nginx"

#: Make nginx really hold small events: buffering on, buffers far larger than
#: the probe's events, the sidecar's `X-Accel-Buffering: no` (which would turn
#: buffering back off) ignored, and HTTP/1.0 to the sidecar. With HTTP/1.1 the
#: sidecar's response is chunked, and nginx (1.22) hands every upstream chunk
#: on at once even with buffering on; with 1.0 (nginx's default) it holds them.
BUFFERING_ON = {
    "proxy_buffering": (
        "proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 8 16k; "
        "proxy_busy_buffers_size 32k; proxy_ignore_headers X-Accel-Buffering;"
    ),
    "proxy_http_version": "proxy_http_version 1.0;",
}
#: Compress event streams, whatever the sidecar's headers say.
GZIP_ON = {
    "gzip": (
        "gzip on; gzip_types text/event-stream; gzip_min_length 0; "
        "proxy_ignore_headers X-Accel-Buffering;"
    ),
}


def nginx_binary() -> str:
    """The nginx executable; missing fails the run on CI and skips elsewhere."""
    exe = NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")
    if exe is None:
        message = "nginx is not installed (scripts/system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def set_directive(conf: str, name: str, replacement: str) -> str:
    """Replace the one uncommented ``name ...;`` directive of ``conf``."""
    pattern = re.compile(rf"^([ \t]*){re.escape(name)}\s[^;\n#]*;", re.MULTILINE)
    found = pattern.findall(conf)
    assert len(found) == 1, f"expected one `{name}` directive in {SNIPPET.name}, found {found}"
    return pattern.sub(lambda m: m.group(1) + replacement, conf)


def render_snippet(
    upstream: str, port: int, read_timeout: str = "2s", replace: Mapping[str, str] | None = None
) -> str:
    """The shipped snippet pointed at ``upstream`` (host:port), listening on ``port``."""
    conf = SNIPPET.read_text()
    changes = {
        "server": f"server {upstream};",
        "listen": f"listen 127.0.0.1:{port};",
        "proxy_read_timeout": f"proxy_read_timeout {read_timeout};",
        **(replace or {}),
    }
    for name, replacement in changes.items():
        conf = set_directive(conf, name, replacement)
    return conf


def render_conf(tmp: Path, snippet: str) -> str:
    """A complete nginx.conf: one worker in the foreground, every path under ``tmp``."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # A master started as root switches its workers to `nobody`, who may not
    # enter tmp_path; keep them as root. Anyone else runs workers as themselves.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    return (
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temp_paths}\n{snippet}\n}}\n"
    )


@dataclass
class Nginx:
    process: asyncio.subprocess.Process
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: open streams are cut
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_nginx(
    tmp: Path, upstream: str, read_timeout: str = "2s", replace: Mapping[str, str] | None = None
) -> Nginx:
    """Start nginx in front of ``upstream`` (host:port) and wait until it accepts.

    ``replace``: {directive name: what replaces it}, as for :func:`render_snippet`.
    """
    exe = nginx_binary()
    for attempt in range(3):
        port = free_port()
        directory = tmp / f"nginx-{port}"
        directory.mkdir()
        conf = directory / "nginx.conf"
        snippet = render_snippet(upstream, port, read_timeout, replace)
        conf.write_text(render_conf(directory, snippet))
        process = await asyncio.create_subprocess_exec(
            *(exe, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        server = Nginx(process, port, directory)
        if await accepting(server.process, server.port, 10.0):
            return server
        await server.stop()
        # Another process took the port between free_port() and nginx's bind.
        if "Address already in use" not in server.log() or attempt == 2:
            pytest.fail(f"nginx did not start:\n{server.log()}")
    raise AssertionError("unreachable")


async def accepting(process: asyncio.subprocess.Process, port: int, limit: float) -> bool:
    """Whether a server accepts connections on ``port`` within ``limit`` s (False if it exited)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.returncode is None:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return True
        await asyncio.sleep(0.05)
    return False
