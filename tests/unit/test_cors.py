from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.config import ConfigError, from_mapping
from sidecar.cors import SAME_ORIGIN, Cors, CorsPolicy, same_origin, validate_cors, without_cors

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


def test_a_listed_origin_is_echoed_and_what_it_may_read_is_exposed() -> None:
    assert cors().decide(APP, "sidecar.example").headers == {
        "Access-Control-Allow-Origin": APP,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": "X-Request-ID, Retry-After",
    }


def test_star_with_credentials_echoes_the_origin() -> None:
    # A browser refuses "*" on a credentialed response: the origin itself goes back.
    policy = CorsPolicy(origins=("*",), credentials=True)
    decision = Cors(policy, None, ("GET",)).decide("https://any.example", "sidecar.example")
    assert decision.headers["Access-Control-Allow-Origin"] == "https://any.example"


def test_a_refused_origin_gets_only_vary() -> None:
    # Vary still goes out: a cache must not serve this refusal to an allowed origin.
    decision = cors().decide("https://evil.example", "sidecar.example")
    assert decision.allowed is False
    assert decision.headers == {"Vary": "Origin"}


def test_a_preflight_answer_has_one_of_each_header() -> None:
    ok, headers = cors().preflight(APP, "GET", "")
    assert ok
    answer = CIMultiDict(headers.items())
    assert answer.getall("Vary") == [
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    ]
    assert answer.getall("Access-Control-Allow-Origin") == [APP]
    assert answer.getall("Access-Control-Allow-Methods") == ["GET, POST"]
    assert "Access-Control-Allow-Headers" not in answer  # none asked for
    # In the spelling every other path writes, one of each.
    assert headers == {
        "Access-Control-Allow-Origin": APP,
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        "Access-Control-Expose-Headers": "X-Request-ID, Retry-After",
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Max-Age": "600",
    }


def test_a_request_without_a_host_is_never_same_origin() -> None:
    # Without Host nothing proves the page is ours: the origin must be listed.
    assert not same_origin("https://sidecar.example", None)
    decision = cors().decide("https://evil.example", None)
    assert decision.allowed is False


def test_a_refused_preflight_gets_only_vary() -> None:
    ok, headers = cors().preflight(APP, "DELETE", "")
    assert not ok
    assert headers == {
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    }


def bad_origin(i: int, origin: str) -> str:
    return f"r.cors.origins[{i}]: expected scheme://host[:port] or '*', got {origin!r}"


@pytest.mark.parametrize(
    ("origins", "credentials", "message"),
    [
        ((), False, "r.cors.origins: list at least one origin (or '*')"),
        (
            (APP, "*"),
            True,
            "r.cors.origins[1]: '*' cannot be combined with credentials: true "
            "(any site could use a user's cookies); list the origins",
        ),
        (("*", "ftp://x"), False, bad_origin(1, "ftp://x")),
        (("app.example",), False, bad_origin(0, "app.example")),
        (("https://",), False, bad_origin(0, "https://")),
        ((APP + "/",), False, bad_origin(0, APP + "/")),
    ],
)
def test_a_bad_policy_is_refused_word_for_word(origins, credentials, message) -> None:
    with pytest.raises(ConfigError) as info:
        validate_cors(CorsPolicy(origins=origins, credentials=credentials), "r.cors")
    assert str(info.value) == message


def test_http_and_https_origins_with_ports_are_accepted() -> None:
    validate_cors(CorsPolicy(origins=(APP, "http://localhost:3000", "*")), "r.cors")
    data = {"routes": [{"name": "r", "path": "/r", "upstream": "http://u",
                        "cors": {"origins": ["http://localhost:3000"]}}]}  # fmt: skip
    cors_policy = from_mapping(data).routes[0].cors
    assert cors_policy is not None
    assert cors_policy.origins == ("http://localhost:3000",)


def test_without_cors_names_the_access_control_headers_in_any_case() -> None:
    given = {"Access-Control-Allow-Origin": "*", "access-control-max-age": "1", "X-Other": "1"}
    assert without_cors(given) == ["Access-Control-Allow-Origin", "access-control-max-age"]
