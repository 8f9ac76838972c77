"""A run's Redis keys: spelled on demand, the names the scripts and the session store use."""

from __future__ import annotations

from sidecar.replay.redis_scripts import Keys, pointer_key, run_prefixes
from sidecar.sessions.redis_scripts import fence_key, owner_key


def test_each_key_is_its_sessions_name_and_the_run_id() -> None:
    keys = Keys.of("p:", "chat:x", "user-1", "run:1%")
    stream, index, follow, live = run_prefixes("p:", "chat:x", "user-1")
    assert keys.stream == stream + "run%3A1%25" == "p:replay:{chat%3Ax:user-1}:run%3A1%25"
    assert keys.index == index + "run%3A1%25"
    assert keys.follow == follow + "run%3A1%25"
    assert keys.live == live + "run%3A1%25"
    assert keys.pointer == pointer_key("p:", "chat:x", "user-1") == "p:replay-run:{chat%3Ax:user-1}"
    assert keys.session == owner_key("p:", "chat:x", "user-1")
    assert keys.fence == fence_key("p:", "chat:x", "user-1")


def test_keys_hold_no_key_strings_of_their_own() -> None:
    keys = Keys.of("p:", "chat", "user-1", "run-1")
    assert not hasattr(keys, "__dict__")
    assert keys.__slots__ == ("prefix", "route", "key", "run_id")
    assert keys.stream == keys.stream  # spelled the same each time
