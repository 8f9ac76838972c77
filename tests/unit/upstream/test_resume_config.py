"""The ``upstream_resume:`` block: defaults, both documented forms, errors naming the key."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sidecar.config import from_mapping
from sidecar.errors import ConfigError
from sidecar.upstream.resume_config import UpstreamResume, placeholders


def route_with(block: Any, upstream: str = "http://127.0.0.1:8000") -> dict[str, Any]:
    return {"routes": [{"name": "chat", "path": "/v1/chat", "upstream": upstream,
                        "upstream_resume": block}]}  # fmt: skip


def error_of(block: Any, upstream: str = "http://127.0.0.1:8000") -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(route_with(block, upstream))
    return str(info.value)


def test_off_by_default_and_last_event_id_when_on() -> None:
    route = from_mapping(route_with(None)).routes[0]
    assert route.upstream_resume == UpstreamResume()
    assert not route.upstream_resume.enabled
    on = from_mapping(route_with({"enabled": True})).routes[0].upstream_resume
    assert (on.attempts, on.backoff, on.max_backoff, on.header, on.body, on.order) == (
        3,
        0.25,
        5.0,
        "Last-Event-ID",
        "keep",
        "id",
    )
    assert placeholders(on) == ("id",)


def test_the_openai_background_responses_form_loads() -> None:
    block = {
        "enabled": True,
        "method": "GET",
        "path": "/v1/responses/{data.response.id}",
        "query": {"stream": "true", "starting_after": "{data.sequence_number}"},
        "header": None,
        "body": "drop",
        "order": "data.sequence_number",
        "backoff": "100ms",
    }
    loaded = from_mapping(route_with(block)).routes[0].upstream_resume
    assert loaded.backoff == 0.1
    assert placeholders(loaded) == ("data.response.id", "data.sequence_number")


def test_environment_overrides_reach_the_block() -> None:
    data = route_with({"enabled": True})
    environ = {"SSE_SIDECAR_ROUTES__CHAT__UPSTREAM_RESUME__ATTEMPTS": "5"}
    assert from_mapping(data, environ).routes[0].upstream_resume.attempts == 5


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"enabled": True, "attempts": 0}, r"upstream_resume\.attempts: must be at least 1"),
        ({"enabled": True, "backoff": "soon"}, r"upstream_resume\.backoff: expected a duration"),
        ({"enabled": True, "backoff": "2s", "max_backoff": "1s"}, r"\.max_backoff: must be at"),
        ({"enabled": True, "header": "Bad Header"}, r"upstream_resume\.header: not a header"),
        ({"enabled": True, "header": "Content-Length"}, r"upstream_resume\.header: not a header"),
        ({"enabled": True, "path": "v1/x"}, r"upstream_resume\.path: must start with /"),
        ({"enabled": True, "path": "/x?a={id}"}, r"upstream_resume\.path: must start with /"),
        ({"enabled": True, "query": {"a": "{idd}"}}, r"query\.a: unknown placeholder \{idd\}"),
        ({"enabled": True, "query": {"a": "{id"}}, r"query\.a: unbalanced braces"),
        ({"enabled": True, "path": "/r/{data.}"}, r"\.path: unknown placeholder \{data\.\}"),
        ({"enabled": True, "header": None}, r"upstream_resume: the resume request must say"),
        ({"enabled": True, "order": "seq"}, r"upstream_resume\.order: expected id or data"),
        ({"enabled": True, "method": "GET"}, r"upstream_resume\.body: a GET carries no body"),
        ({"enabled": True, "method": "PUT"}, r"upstream_resume\.method: must be one of GET"),
        ({"enabled": True, "body": "maybe"}, r"upstream_resume\.body: must be one of keep"),
        ({"enabled": True, "retries": 3}, r"upstream_resume\.retries: unknown key"),
    ],
)
def test_errors_name_the_key(block: dict[str, Any], message: str) -> None:
    assert re.search(message, error_of(block))


def test_not_on_a_websocket_route() -> None:
    assert "upstream_resume.enabled: only for http(s) upstreams" in error_of(
        {"enabled": True}, "ws://127.0.0.1:8765"
    )


def test_off_is_never_checked() -> None:
    loaded = from_mapping(route_with({"enabled": False, "header": None})).routes[0]
    assert loaded.upstream_resume.header is None


# --- edges: refused at the edge, accepted one inside, the exact message ----------------

KEY = "routes[0].upstream_resume"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"attempts": 0}, f"{KEY}.attempts: must be at least 1, got 0"),
        (
            {"backoff": "2s", "max_backoff": "1999ms"},
            f"{KEY}.max_backoff: must be at least backoff (2s), got 1.999s",
        ),
        ({"query": {"": "{id}"}}, f"{KEY}.query: a parameter needs a name"),
        (
            {"header": None, "query": {"stream": "true"}},
            f"{KEY}: the resume request must say where to go on: set header, or put "
            "{id} or {data.PATH} in query or path (else the producer starts over)",
        ),
        (
            {"path": "/r/{x}"},
            f"{KEY}.path: unknown placeholder {{x}} (known: {{id}}, {{data.PATH}})",
        ),
        ({"path": "/r#{id}"}, f"{KEY}.path: must start with / and hold no ? # or \\: '/r#{{id}}'"),
        ({"order": "ID"}, f"{KEY}.order: expected id or data.PATH, got 'ID'"),
        ({"header": "Host"}, f"{KEY}.header: not a header the resume can set: 'Host'"),
        ({"method": "GET"}, f"{KEY}.body: a GET carries no body: set body: drop"),
    ],
)
def test_exact_messages_at_the_edge(block: dict[str, Any], message: str) -> None:
    assert error_of({"enabled": True, **block}) == message


def test_exact_message_on_a_websocket_route() -> None:
    assert error_of({"enabled": True}, "ws://127.0.0.1:8765") == (
        f"{KEY}.enabled: only for http(s) upstreams (a WebSocket gateway's run is not "
        "resumed by id)"
    )


@pytest.mark.parametrize(
    "block",
    [
        {"attempts": 1},
        {"backoff": "2s", "max_backoff": "2s"},
        {"backoff": 0, "max_backoff": 0},
        {"header": None, "path": "/v1/X/{data.run}"},
        {"header": None, "query": {"after": "{id}"}},
        {"order": "id"},
        {"order": "data.seq-no_2"},
        {"method": "GET", "body": "drop"},
        {"method": "POST"},
    ],
)
def test_accepted_one_inside_the_edge(block: dict[str, Any]) -> None:
    loaded = from_mapping(route_with({"enabled": True, **block})).routes[0].upstream_resume
    assert loaded.enabled
