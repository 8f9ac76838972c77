"""Raw tools for attacking the sidecar: a socket client, a scripted raw upstream, RSS.

Nothing here speaks HTTP through a library: a client library would
normalise the very bytes these tests are about (encoded paths, odd headers,
smuggling framings), and an aiohttp upstream could not send a broken head.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A TCP server on loopback that hands each connection to ``handler``."""

    handler: Handler | None = None
    #: Request heads received, as bytes.
    heads: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self.handler is not None:
                await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing: a hanging handler ends here, quietly
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Handlers that hang are ended with their connections.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    server = RawUpstream()
    await server.start()
    yield server
    await server.stop()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@dataclass
class RawResponse:
    raw: bytes

    @property
    def status(self) -> int:
        match = re.match(rb"HTTP/1\.[01] (\d{3})", self.raw)
        return int(match.group(1)) if match else 0

    @property
    def head(self) -> str:
        return self.raw.partition(b"\r\n\r\n")[0].decode("latin-1")

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


async def raw_request(
    port: int,
    data: bytes,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a bound on the whole exchange, per call
    until: bytes | None = None,
) -> RawResponse:
    """Send ``data`` on a fresh connection; read until EOF, ``until`` or ``timeout`` (raises)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
                if until is not None and until in got:
                    break
        return RawResponse(got)
    finally:
        writer.close()


def get(path: str, *headers: str, host: str = "127.0.0.1") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def rss_bytes() -> int:
    """This process's resident set now (the sidecar under test runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRss:
    """The highest RSS seen while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 if absent)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
