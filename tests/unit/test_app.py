"""The app's stores (sidecar/app.py): what the configuration makes of them."""

from __future__ import annotations

from sidecar.app import replay_store
from sidecar.config import from_mapping
from sidecar.metrics import Metrics
from sidecar.replay.redis import RedisReplayStore
from sidecar.replay.redis_append import ROUND_INTERVAL

ROUTE = {"name": "chat", "path": "/v1/chat", "upstream": "http://127.0.0.1:9000/chat"}


def test_each_worker_spaces_its_append_rounds_by_the_worker_count() -> None:
    # Each of N workers has 1/N of the streams: rounds N intervals apart keep
    # the tree's rounds a second (Redis's cost) those of one process.
    for workers in (1, 3):
        config = from_mapping({"workers": workers, "backend": {"kind": "redis"}, "routes": [ROUTE]})
        store = replay_store(config, Metrics())  # made, not started: no connection yet
        assert isinstance(store, RedisReplayStore)
        assert store.appends.interval == ROUND_INTERVAL * workers
