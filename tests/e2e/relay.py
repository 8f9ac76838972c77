"""A loopback TCP relay the test can cut and bring back on the same port.

It stands between a browser and the sidecar: bytes are copied unchanged both
ways, what went to the browser is recorded, and :meth:`Relay.stop` drops
every relayed connection at once, as a flaky network or a restarted proxy
would. :meth:`Relay.start` listens again on the port it had before.
"""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    """Relay connections on 127.0.0.1 to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        #: The listening port: chosen by the OS at the first start, then kept.
        self.port = 0
        #: Every byte sent towards the clients, over all connections and restarts.
        self.downstream = bytearray()
        #: Connections accepted, over all restarts.
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self._server is None, "the relay is already listening"
        # reuse_address (the default on POSIX) lets the port be bound again
        # while cut connections linger in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every relayed connection, both sides, now."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            conn.abort()
        if server is not None:
            await server.wait_closed()
        await asyncio.gather(*(conn.task for conn in list(self._conns)), return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        conn = _Connection(writer, up_writer)
        if self._server is None:  # cut while this one was still connecting
            conn.abort()
            return
        self._conns.add(conn)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, record=False),
                self._pump(up_reader, writer, record=True),
            )
        finally:
            conn.abort()
            self._conns.discard(conn)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
                if record:
                    self.downstream += chunk
            # A clean end on one side is passed on as a half close.
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()


class _Connection:
    """The two sockets of one relayed connection."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target
        task = asyncio.current_task()
        assert task is not None
        self.task = task

    def abort(self) -> None:
        # abort(), not close(): no flushing, no FIN handshake; the peers see
        # the connection vanish mid-stream.
        self.client.transport.abort()
        self.target.transport.abort()
