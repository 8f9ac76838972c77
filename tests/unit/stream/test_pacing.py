"""Pacing (sidecar/stream/pacing.py): deadlines, limits and heartbeats from a stream's times."""

from __future__ import annotations

import pytest

from sidecar.config import Limits, from_mapping
from sidecar.context import Context
from sidecar.errors import UpstreamTimeout
from sidecar.metrics import Metrics
from sidecar.replay.memory import MemoryReplayStore
from sidecar.services import RouteServices
from sidecar.sessions.memory import MemorySessionStore
from sidecar.stream.pacing import CONGESTED_RECHECK, Pacing

PACING = Pacing(idle_timeout=30.0, max_duration=100.0, heartbeat=5.0)


def test_built_from_the_routes_limits() -> None:
    limits = Limits(idle_timeout=7.0, max_duration=70.0)
    assert Pacing.of(limits, 2.0) == Pacing(7.0, 70.0, 2.0)


@pytest.mark.parametrize(
    ("started", "last_byte", "last_write", "deadline"),
    [
        (0.0, 0.0, 0.0, 5.0),  # the heartbeat comes first
        (0.0, 10.0, 12.0, 17.0),  # it moves with the last write
        (0.0, 0.0, 40.0, 30.0),  # the idle limit comes before a heartbeat
        (0.0, 90.0, 98.0, 100.0),  # the total limit comes before both
    ],
)
def test_deadline_is_the_first_thing_due(
    started: float, last_byte: float, last_write: float, deadline: float
) -> None:
    assert PACING.deadline(started, last_byte, last_write) == deadline


def test_without_heartbeats_only_the_limits_set_the_deadline() -> None:
    pacing = Pacing(idle_timeout=30.0, max_duration=100.0, heartbeat=0.0)
    assert pacing.deadline(0.0, 0.0, 0.0) == 30.0
    assert pacing.deadline(0.0, 80.0, 0.0) == 100.0


def test_a_congested_stream_rechecks_only_the_total_limit() -> None:
    assert PACING.congested_deadline(10.0, 0.0) == 10.0 + CONGESTED_RECHECK
    assert PACING.congested_deadline(99.5, 0.0) == 100.0


def test_no_limit_before_either_is_reached() -> None:
    assert PACING.limit_reached(29.999, 0.0, 0.0) is None
    assert PACING.limit_reached(99.0, 0.0, 70.0) is None


def test_the_idle_limit_is_reached_at_its_timeout_and_names_its_key() -> None:
    reached = PACING.limit_reached(30.0, 0.0, 0.0)
    assert isinstance(reached, UpstreamTimeout)
    assert "limits.idle_timeout (30s)" in str(reached)
    assert reached.code == "upstream_timeout"


def test_the_total_limit_wins_over_the_idle_one() -> None:
    reached = PACING.limit_reached(100.0, 0.0, 0.0)
    assert reached is not None
    assert "limits.max_duration (100s)" in str(reached)


def test_idle_false_leaves_out_the_idle_limit_not_the_total_one() -> None:
    assert PACING.limit_reached(50.0, 0.0, 0.0, idle=False) is None
    assert PACING.limit_reached(100.0, 0.0, 0.0, idle=False) is not None


@pytest.mark.parametrize(
    ("now", "last_write", "heartbeat", "due"),
    [
        (15.0, 10.0, 5.0, True),
        (14.999, 10.0, 5.0, False),
        (10.0, 10.0, 5.0, False),
        (1e9, 0.0, 0.0, False),  # 0: never
    ],
)
def test_heartbeat_due_after_the_interval_without_a_write(
    now: float, last_write: float, heartbeat: float, due: bool
) -> None:
    assert Pacing(30.0, 100.0, heartbeat).heartbeat_due(now, last_write) is due


def test_a_heartbeat_under_one_second_still_counts() -> None:
    # Any positive interval is a heartbeat; only 0 turns it off.
    assert Pacing(30.0, 100.0, 0.5).deadline(started=0.0, last_byte=0.0, last_write=0.0) == 0.5
    assert Pacing(30.0, 100.0, 0.0).deadline(started=0.0, last_byte=0.0, last_write=0.0) == 30.0


def test_every_stream_of_a_route_shares_its_pacing() -> None:
    config = from_mapping(
        {
            "routes": [
                {
                    "name": "r",
                    "path": "/r",
                    "upstream": "http://127.0.0.1:1",
                    "heartbeat": {"interval": "2s"},
                }
            ]
        }
    )
    ctx = Context(config, Metrics(), MemorySessionStore(), MemoryReplayStore())
    services = RouteServices(config.routes[0], ctx)
    assert services.pacing() is services.pacing(True)
    assert services.pacing().heartbeat == 2.0
    assert services.pacing(False).heartbeat == 0.0
    assert services.pacing(False).idle_timeout == services.pacing().idle_timeout
