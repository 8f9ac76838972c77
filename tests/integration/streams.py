"""Client-side helpers for reading streams through the sidecar in tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from sidecar.sse import Decoder, Event


@dataclass
class Received:
    status: int
    headers: dict[str, str]
    raw: bytes
    events: list[Event]
    times: list[float]

    def kinds(self) -> list[str]:
        return [e.event or "message" for e in self.events if e.data is not None]

    def data(self, kind: str) -> list[Any]:
        return [json.loads(e.data) for e in self.events if e.event == kind and e.data]

    @property
    def terminal(self) -> Event:
        return self.events[-1]

    def error(self) -> dict[str, Any]:
        last = self.events[-1]
        assert last.event == "error", self.kinds()
        assert last.data is not None
        result: dict[str, Any] = json.loads(last.data)
        return result


async def read_stream(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    limit_s: float = 10.0,
    **kwargs: Any,
) -> Received:
    """Read a whole response; decode it as an event stream if it is one."""
    loop = asyncio.get_running_loop()
    decoder = Decoder()
    raw = bytearray()
    events: list[Event] = []
    times: list[float] = []
    async with asyncio.timeout(limit_s), http.request(method, url, **kwargs) as resp:
        async for chunk in resp.content.iter_any():
            raw += chunk
            if resp.content_type == "text/event-stream":
                for item in decoder.feed(chunk):
                    if isinstance(item, Event):
                        events.append(item)
                        times.append(loop.time())
        return Received(resp.status, dict(resp.headers), bytes(raw), events, times)
