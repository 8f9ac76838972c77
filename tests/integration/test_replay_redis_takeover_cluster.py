"""Run takeover in the Redis replay store on a real Redis Cluster: the single-server tests again.

Every key the takeover and fencing scripts touch (the run's, the session's
claim and fence) carries the session's hash tag, so each script runs on one
node (tests/fixtures_redis_cluster.py starts the cluster).
"""

from __future__ import annotations

import pytest

from tests.integration import test_replay_redis_takeover as single
from tests.integration.test_replay_redis_takeover import stores

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

__all__ = ["stores"]  # the single-server module's fixture, on the cluster below


@pytest.fixture
def redis_server(redis_on_cluster):
    return redis_on_cluster


@pytest.fixture
def raw(raw_cluster):
    return raw_cluster


test_the_kept_request_and_the_cursor_are_stored_with_the_log = (
    single.test_the_kept_request_and_the_cursor_are_stored_with_the_log
)
test_a_run_whose_owner_is_gone_is_taken_over_with_its_state = (
    single.test_a_run_whose_owner_is_gone_is_taken_over_with_its_state
)
test_of_two_replicas_racing_to_take_over_exactly_one_wins = (
    single.test_of_two_replicas_racing_to_take_over_exactly_one_wins
)
test_a_stale_owner_never_writes_to_the_log_again = (
    single.test_a_stale_owner_never_writes_to_the_log_again
)
test_the_owners_renewal_fences_a_stale_owner_with_nothing_to_append = (
    single.test_the_owners_renewal_fences_a_stale_owner_with_nothing_to_append
)
test_runs_that_cannot_be_taken_over = single.test_runs_that_cannot_be_taken_over
test_a_takeover_frees_the_session_of_its_dead_owner_with_a_fresh_token = (
    single.test_a_takeover_frees_the_session_of_its_dead_owner_with_a_fresh_token
)
