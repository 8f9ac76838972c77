"""Config validation at its edges: the smallest value accepted, the first refused, the message.

The process-wide limits, a route's upstream-side limits, ``trusted_proxies``
and the route key a ``cors`` error is reported under.
"""

from __future__ import annotations

import pytest

from sidecar.config import from_mapping
from tests.unit.test_config import config, error_of, route

SERVER_LIMITS = ("request_head_timeout", "max_request_head_bytes", "max_request_headers",
                 "max_connections")  # fmt: skip
ROUTE_UPSTREAM_LIMITS = ("max_upstream_head_bytes", "max_upstream_headers", "max_pending_bytes")


@pytest.mark.parametrize("name", SERVER_LIMITS)
def test_a_server_limit_of_zero_is_refused_by_name(name: str) -> None:
    assert error_of(config(limits={name: 0})) == f"limits.{name}: must be greater than 0"


@pytest.mark.parametrize("name", SERVER_LIMITS)
def test_a_server_limit_of_one_is_the_smallest_accepted(name: str) -> None:
    assert getattr(from_mapping(config(limits={name: 1})).limits, name) == 1


@pytest.mark.parametrize("name", ROUTE_UPSTREAM_LIMITS)
def test_a_route_upstream_limit_of_zero_is_refused_by_name(name: str) -> None:
    assert error_of(config(route(limits={name: 0}))) == (
        f"routes[0].limits.{name}: must be greater than 0"
    )


@pytest.mark.parametrize("name", ROUTE_UPSTREAM_LIMITS)
def test_a_route_upstream_limit_of_one_is_the_smallest_accepted(name: str) -> None:
    assert getattr(from_mapping(config(route(limits={name: 1}))).routes[0].limits, name) == 1


@pytest.mark.parametrize(
    "given", ["10.0.0.1", "10.0.0.0/8", "10.1.2.3/8", "::1", "fd00::/8", "fd00::1/64"]
)
def test_trusted_proxies_take_addresses_and_networks_with_host_bits(given: str) -> None:
    # "10.1.2.3/8" is how people write "this host's network": accepted as 10.0.0.0/8.
    assert from_mapping(config(trusted_proxies=[given])).trusted_proxies == (given,)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.internal", "", "10.0.0.256"])
def test_a_bad_trusted_proxy_is_named_by_its_index(bad: str) -> None:
    assert error_of(config(trusted_proxies=["10.0.0.1", bad])) == (
        f"trusted_proxies[1]: not a CIDR or address: {bad!r}"
    )


def test_a_cors_error_is_reported_under_its_routes_key() -> None:
    data = config(route(), route(name="b", path="/b", cors={"origins": ["ftp://x"]}))
    assert error_of(data) == (
        "routes[1].cors.origins[0]: expected scheme://host[:port] or '*', got 'ftp://x'"
    )


def test_a_route_with_valid_cors_loads() -> None:
    origins = ("https://app.example", "http://localhost:3000")
    loaded = from_mapping(config(route(cors={"origins": list(origins)})))
    cors = loaded.routes[0].cors
    assert cors is not None
    assert cors.origins == origins


def test_a_routes_upstream_resume_is_checked_under_its_own_key() -> None:
    bad = route(name="b", path="/b", upstream_resume={"enabled": True, "attempts": 0})
    assert error_of(config(route(), bad)) == (
        "routes[1].upstream_resume.attempts: must be at least 1, got 0"
    )


def test_upstream_resume_is_refused_on_a_websocket_route_and_taken_on_http() -> None:
    ws = route(upstream="ws://127.0.0.1:9000", upstream_resume={"enabled": True})
    assert error_of(config(ws)) == (
        "routes[0].upstream_resume.enabled: only for http(s) upstreams (a WebSocket "
        "gateway's run is not resumed by id)"
    )
    http = from_mapping(config(route(upstream_resume={"enabled": True})))
    assert http.routes[0].upstream_resume.enabled
