from __future__ import annotations

import pytest

from sidecar.config import ConfigError, from_mapping
from sidecar.cors import SAME_ORIGIN, Cors, CorsPolicy, same_origin

APP = "https://app.example"


def cors(**kw) -> Cors:
    return Cors(CorsPolicy(**{"origins": (APP,), **kw}), "X-Session-Key", ("GET", "POST"))


def test_no_origin_or_same_origin_is_no_cross_origin_request() -> None:
    assert cors().decide(None, "sidecar.example") is SAME_ORIGIN
    assert cors().decide("https://sidecar.example:8443", "sidecar.example:8443") is SAME_ORIGIN
    assert same_origin("http://a:1", "A:1")
    assert not same_origin("http://a:1", "a:2")


def test_an_allowed_origin_gets_its_headers() -> None:
    decision = cors(credentials=True).decide(APP, "sidecar.example")
    assert decision.allowed
    assert decision.headers["Access-Control-Allow-Origin"] == APP
    assert decision.headers["Access-Control-Allow-Credentials"] == "true"
    assert decision.headers["Vary"] == "Origin"


def test_star_without_credentials_says_star() -> None:
    decision = cors(origins=("*",)).decide("https://any.example", "sidecar.example")
    assert decision.headers["Access-Control-Allow-Origin"] == "*"


def test_a_refused_origin() -> None:
    assert not cors().decide("https://evil.example", "sidecar.example").allowed


def test_preflight_allows_the_session_header_and_safelisted_ones_only() -> None:
    ok, headers = cors(headers=("X-Trace",)).preflight(APP, "POST", "x-session-key, X-Trace")
    assert ok
    assert headers["Access-Control-Allow-Headers"] == "x-session-key, x-trace"
    assert headers["Access-Control-Max-Age"] == "600"
    assert not cors().preflight(APP, "POST", "x-other")[0]
    assert not cors().preflight(APP, "DELETE", "")[0]
    assert not cors().preflight("https://evil.example", "GET", "")[0]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"origins": []}, "origins"),
        ({"origins": ["*"], "credentials": True}, "credentials"),
        ({"origins": ["app.example"]}, "scheme://host"),
        ({"origins": ["https://app.example/path"]}, "scheme://host"),
    ],
)
def test_config_refuses_unsafe_or_malformed_cors(block, message) -> None:
    data = {"routes": [{"name": "r", "path": "/r", "upstream": "http://u", "cors": block}]}
    with pytest.raises(ConfigError, match=message):
        from_mapping(data)


def test_config_refuses_a_bad_trusted_proxy() -> None:
    data = {"routes": [{"name": "r", "path": "/r", "upstream": "http://u"}],
            "trusted_proxies": ["10.0.0.0/8", "nginx"]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\]"):
        from_mapping(data)
