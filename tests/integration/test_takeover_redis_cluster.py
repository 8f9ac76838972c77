"""Run takeover across two sidecar processes on a real Redis Cluster.

The takeover tests of tests/integration/test_takeover_redis.py that need no
Redis signal run here unchanged on a 3-master cluster
(tests/fixtures_redis_cluster.py): the kept request, the cursor, the
takeover script and the fencing all live in the session's one slot.
"""

from __future__ import annotations

import pytest

from tests.integration import test_takeover_redis as single
from tests.integration.test_takeover_redis import example, example_pair, pair, producer

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

__all__ = ["example", "example_pair", "pair", "producer"]  # the single-server fixtures


@pytest.fixture
def redis_server(redis_on_cluster):
    """What the reused tests call the server: here, the (emptied) cluster."""
    return redis_on_cluster


test_a_reconnect_after_the_runs_replica_was_killed_gets_every_event_once = (
    single.test_a_reconnect_after_the_runs_replica_was_killed_gets_every_event_once
)
test_without_a_resumable_producer_the_buffered_events_then_a_terminal_error = (
    single.test_without_a_resumable_producer_the_buffered_events_then_a_terminal_error
)
test_a_live_follower_on_the_other_replica_takes_the_run_over = (
    single.test_a_live_follower_on_the_other_replica_takes_the_run_over
)
