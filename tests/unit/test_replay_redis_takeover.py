"""The takeover script's reply, decoded (sidecar/replay/redis_takeover.py)."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from sidecar.replay import redis_takeover
from sidecar.replay.base import Entry
from sidecar.replay.redis_scripts import Keys
from sidecar.replay.redis_takeover import Claimed, claimed


def test_no_takeover_says_why():
    assert claimed(0) == "owned"
    assert claimed(-1) == "impossible"


def test_a_won_takeover_carries_the_runs_state():
    raw = [[b"0-7", [b"i", b"up-7", b"d", b"data: 7\n\n", b"t", b"0"]]]
    got = claimed([3, b"req", b"cur", b"100", b"4096", raw])
    assert got == Claimed("3", b"req", b"cur", (100, 4096), [Entry(7, "up-7", b"data: 7\n\n")])
    assert isinstance(got, Claimed)
    assert got.last_seq == 7


def test_an_empty_log_has_no_last_seq():
    got = claimed([2, b"req", b"cur", b"1", b"1", []])
    assert isinstance(got, Claimed)
    assert got.last_seq == 0


class _Store:
    lease = 10.0
    scripts: ClassVar[dict[str, object]] = {"live": "live-script"}

    @contextlib.asynccontextmanager
    async def backend(self, budget=None, *, client=None):
        yield "redis"


class _Log:
    def __init__(self, i: int) -> None:
        self.keys = Keys("p:", "r", f"k{i}", f"run{i}")
        self.owner = "1"
        self.fenced = False

    def fence(self) -> None:
        self.fenced = True


async def test_liveness_is_renewed_a_batch_at_a_time(monkeypatch):
    # A round built every run's call at once, and its memory stayed at that peak.
    sizes: list[int] = []

    async def run_scripts(redis, calls, *, raise_on_error=False):
        sizes.append(len(calls))
        # The run at index 1500 of the round was taken over: its script says -1.
        offset = sum(sizes[:-1])
        return [-1 if offset + i == 1500 else 1 for i in range(len(calls))]

    monkeypatch.setattr(redis_takeover, "run_scripts", run_scripts)
    logs = [_Log(i) for i in range(2 * redis_takeover.BATCH + 5)]
    await redis_takeover.renew(_Store(), logs)
    assert sizes == [redis_takeover.BATCH, redis_takeover.BATCH, 5]
    assert [i for i, log in enumerate(logs) if log.fenced] == [1500]
