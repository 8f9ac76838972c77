"""Environment overrides on plain data (sidecar/config_env.py), before any typing."""

from __future__ import annotations

import pytest

from sidecar.config_env import apply_env
from sidecar.errors import ConfigError

TOP = {"listen", "routes", "backend"}


def test_levels_are_split_on_double_underscores_and_lowercased() -> None:
    data = apply_env({}, {"SSE_SIDECAR_LISTEN__PORT": "8081"}, TOP)
    assert data == {"listen": {"port": "8081"}}


def test_a_route_is_named_by_its_name_or_index_and_created_when_missing() -> None:
    data = {"routes": [{"name": "chat"}, {"name": "jobs"}]}
    environ = {"SSE_SIDECAR_ROUTES__CHAT__PATH": "/c", "SSE_SIDECAR_ROUTES__1__PATH": "/j"}
    assert apply_env(data, environ, TOP)["routes"] == [
        {"name": "chat", "path": "/c"},
        {"name": "jobs", "path": "/j"},
    ]
    with pytest.raises(ConfigError, match="SSE_SIDECAR_ROUTES__NOPE__PATH: no route"):
        apply_env({"routes": []}, {"SSE_SIDECAR_ROUTES__NOPE__PATH": "/x"}, TOP)


def test_only_the_given_top_level_keys_are_overridden() -> None:
    # What Kubernetes injects for a Service named sse-sidecar is not ours.
    environ = {"SSE_SIDECAR_PORT": "tcp://10.0.0.1:80", "SSE_SIDECAR_CONFIG": "/etc/x.yaml"}
    assert apply_env({}, environ, TOP) == {}
    assert apply_env({}, {"SSE_SIDECAR_PORT": "1"}, {"port"}) == {"port": "1"}


def test_a_variable_below_a_value_names_itself() -> None:
    with pytest.raises(ConfigError, match="SSE_SIDECAR_LISTEN__PORT__X: does not name"):
        apply_env({"listen": {"port": 1}}, {"SSE_SIDECAR_LISTEN__PORT__X": "2"}, TOP)
