"""A loopback TCP relay that closes every connection at a fixed age, data flowing or not.

It stands for a load balancer's maximum connection duration or an ingress's
stream cap: bytes pass unchanged both ways until the connection is ``cap``
seconds old, then both sides are closed.
"""

from __future__ import annotations

import asyncio
import contextlib


class AgeCap:
    def __init__(self, target_port: int, cap: float) -> None:
        self.target_port = target_port
        self.cap = cap
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        try:
            # The age counts from the accept, as a load balancer's does.
            async with asyncio.timeout(self.cap):
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except TimeoutError:
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
