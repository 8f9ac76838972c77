"""The replace channel's subscriber on a real Redis: listening means its own probes come back."""

from __future__ import annotations

import asyncio
import json

import pytest

from sidecar.redisconn import connect
from sidecar.sessions.channel import DEAF, Subscriber

pytestmark = pytest.mark.redis

CHANNEL = "test:replace"


class Seen:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.ups = 0
        self.downs: list[BaseException] = []

    def message(self, data: bytes | str) -> None:
        self.messages.append(data.decode() if isinstance(data, bytes) else data)

    def up(self) -> None:
        self.ups += 1

    def down(self, exc: BaseException) -> None:
        self.downs.append(exc)


async def until(check, within: float) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.02)


@pytest.fixture
async def running(redis_server):
    conn = connect(redis_server.url, cluster=False, pool_size=2)
    seen = Seen()
    subscriber = Subscriber(conn.client, CHANNEL, "me", seen.message, seen.up, seen.down)
    task = asyncio.create_task(subscriber.run())
    yield subscriber, seen, conn.client
    task.cancel()
    await asyncio.wait({task}, timeout=3)
    await conn.aclose()


async def test_it_listens_once_its_probe_came_back_and_passes_on_all_but_probes(running):
    subscriber, seen, client = running
    await until(lambda: subscriber.listening, 2.0)
    assert seen.ups == 1
    others_probe = json.dumps({"op": "probe", "value": "other:1"})
    await client.publish(CHANNEL, others_probe)
    await client.publish(CHANNEL, '{"op": "stop", "value": "x"}')
    await until(lambda: seen.messages, 2.0)
    assert seen.messages == ['{"op": "stop", "value": "x"}']


async def test_a_server_gone_reads_as_not_listening_until_it_is_back(running, redis_server):
    subscriber, seen, _ = running
    await until(lambda: subscriber.listening, 2.0)
    await asyncio.to_thread(redis_server.kill)
    await until(lambda: not subscriber.listening, DEAF + 1)
    assert seen.downs
    await asyncio.to_thread(redis_server.start)
    await until(lambda: subscriber.listening, DEAF + 3)
    assert seen.ups == 2
