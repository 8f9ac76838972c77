"""A stall of the sidecar's own loop spends no Redis budget (sidecar/looptime.py).

A real sidecar process on a real redis-server: new resumable streams send
their session claims, and the sidecar process is stopped (SIGSTOP) while
Redis answers them. When it runs again the answers sit in its sockets,
and its budgets' timers are long due: the streams must start, not get
``503 backend_unavailable``. A busy loop (a burst of connections, a long
pause) is the same case, shorter.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.integration.streams import read_stream
from tests.integration.test_resume import data_events, numbered
from tests.integration.test_resume_redis import pair_config, running_pair

pytestmark = pytest.mark.redis

STREAMS = 12
#: Longer than a claim's whole budget (1.5 s), with Redis's answer in the socket all along.
STALL_S = 2.5


@pytest.fixture
async def pair(tmp_path, redis_server, upstream):
    async for both in running_pair(tmp_path, pair_config(redis_server, upstream)):
        yield both


async def test_claims_answered_while_the_sidecar_was_stopped_start_their_streams(
    pair, redis_server, upstream
):
    upstream.script = numbered(3, gap=0.01)
    sidecar, redis = pair.a.proc, redis_server.process
    assert sidecar is not None
    assert redis is not None

    async def stream(i: int) -> tuple[int, list[str]]:
        got = await read_stream(pair.http, "GET", pair.a.url + f"/s?s=user{i}", limit_s=20)
        return got.status, data_events(got)

    # Redis holds the claims back until the sidecar is stopped, so they are
    # surely in flight then; it answers them while the sidecar cannot read.
    redis.send_signal(signal.SIGSTOP)
    try:
        streams = [asyncio.ensure_future(stream(i)) for i in range(STREAMS)]
        await asyncio.sleep(0.3)
        sidecar.send_signal(signal.SIGSTOP)
        try:
            redis.send_signal(signal.SIGCONT)
            await asyncio.sleep(STALL_S)
        finally:
            sidecar.send_signal(signal.SIGCONT)
    finally:
        redis.send_signal(signal.SIGCONT)
    async with asyncio.timeout(15):
        results = await asyncio.gather(*streams)
    assert results == [(200, ["1", "2", "3"])] * STREAMS
