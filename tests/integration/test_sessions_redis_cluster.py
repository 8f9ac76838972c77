"""Session claims on a real Redis Cluster: the single-server tests again, store and sidecars.

The tests of tests/integration/test_sessions_redis.py (and of its bindings,
test_sessions_bound_redis.py) that need no server restart run here
unchanged against a 3-master cluster
(tests/fixtures_redis_cluster.py): the claim scripts run on the session's
slot, and replace messages (PUBLISH from a script) reach subscribers on every
node.
"""

from __future__ import annotations

import pytest

from tests.integration import test_sessions_bound_redis as bound
from tests.integration import test_sessions_redis as single
from tests.integration import test_stop_redis as stop
from tests.integration.test_sessions_redis import sidecar_processes, stores
from tests.integration.test_stop_redis import scripts

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

# The single-server modules' fixtures, on the cluster.
__all__ = ["scripts", "sidecar_processes", "stores"]


@pytest.fixture
def redis_server(redis_on_cluster):
    """What the reused tests call the server: here, the (emptied) cluster."""
    return redis_on_cluster


@pytest.fixture
def raw(raw_cluster):
    return raw_cluster


test_started_store_is_healthy = single.test_started_store_is_healthy
test_reject_refuses_a_taken_session_in_any_process = (
    single.test_reject_refuses_a_taken_session_in_any_process
)
test_routes_with_colons_do_not_collide = single.test_routes_with_colons_do_not_collide
test_a_retried_claim_script_answers_as_the_first_run = (
    single.test_a_retried_claim_script_answers_as_the_first_run
)
test_replace_stops_the_old_holder_and_waits_for_it = (
    single.test_replace_stops_the_old_holder_and_waits_for_it
)
test_replace_takes_over_when_the_old_holder_does_not_let_go = (
    single.test_replace_takes_over_when_the_old_holder_does_not_let_go
)
test_fifty_concurrent_replaces_leave_exactly_one_owner = (
    single.test_fifty_concurrent_replaces_leave_exactly_one_owner
)
test_fifty_concurrent_rejects_have_exactly_one_winner = (
    single.test_fifty_concurrent_rejects_have_exactly_one_winner
)
test_a_cancelled_claim_leaves_no_key_behind = single.test_a_cancelled_claim_leaves_no_key_behind
test_renewal_keeps_a_claim_past_its_lease = single.test_renewal_keeps_a_claim_past_its_lease
test_a_crashed_store_frees_its_sessions_within_the_lease = (
    single.test_a_crashed_store_frees_its_sessions_within_the_lease
)
test_lost_ownership_stops_the_holder = single.test_lost_ownership_stops_the_holder
test_replace_on_one_sidecar_ends_the_stream_on_the_other = (
    single.test_replace_on_one_sidecar_ends_the_stream_on_the_other
)
test_reject_across_sidecars_answers_409 = single.test_reject_across_sidecars_answers_409
test_fifty_concurrent_requests_on_two_sidecars_leave_one_stream = (
    single.test_fifty_concurrent_requests_on_two_sidecars_leave_one_stream
)
test_replace_across_processes_within_a_second = single.test_replace_across_processes_within_a_second
test_sigkill_frees_the_session_within_the_lease = (
    single.test_sigkill_frees_the_session_within_the_lease
)
test_stop_marks_the_owner_read_and_publishes = stop.test_stop_marks_the_owner_read_and_publishes
test_a_mark_for_an_older_owner_never_stops_the_newer_one = (
    stop.test_a_mark_for_an_older_owner_never_stops_the_newer_one
)
test_release_takes_its_own_mark_with_it_and_no_other = (
    stop.test_release_takes_its_own_mark_with_it_and_no_other
)
test_a_store_that_hears_nothing_is_stopped_by_its_next_renewal = (
    stop.test_a_store_that_hears_nothing_is_stopped_by_its_next_renewal
)
test_a_replace_with_other_credentials_is_refused_and_the_owner_goes_on = (
    bound.test_a_replace_with_other_credentials_is_refused_and_the_owner_goes_on
)
test_concurrent_claims_with_two_credentials_leave_one_of_them_owning = (
    bound.test_concurrent_claims_with_two_credentials_leave_one_of_them_owning
)
test_a_claim_written_without_a_binding_may_be_replaced_by_anyone = (
    bound.test_a_claim_written_without_a_binding_may_be_replaced_by_anyone
)
test_a_stop_with_other_credentials_is_refused_and_leaves_no_mark = (
    bound.test_a_stop_with_other_credentials_is_refused_and_leaves_no_mark
)
test_a_replace_on_another_sidecar_needs_the_owners_credentials = (
    bound.test_a_replace_on_another_sidecar_needs_the_owners_credentials
)
