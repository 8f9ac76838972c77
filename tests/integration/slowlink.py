"""A TCP relay with a fixed delay each way: a slow network between one process and Redis."""

from __future__ import annotations

import asyncio


class SlowLink:
    """A TCP relay to Redis that delivers every chunk ``delay`` seconds late, both ways.

    It stretches the moment between a replica's takeover script and its
    session claim (one round trip apart) to two delays, so a test can let
    another stream claim the session in between, as a busy network would.
    """

    def __init__(self, port: int, delay: float) -> None:
        self.target, self.delay = port, delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_reader, to_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for source, sink in ((reader, to_writer), (to_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await late.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    sink.close()
                    return
                sink.write(chunk)
                await sink.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while chunk := await source.read(65536):
                late.put_nowait((loop.time() + self.delay, chunk))
            late.put_nowait((loop.time() + self.delay, b""))  # the end, as late
            await delivering
        except OSError:
            pass  # a side went away: so does the other
        finally:
            delivering.cancel()
            sink.close()
