"""The WebSocket profile: built from config data, its request template, its checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sidecar.config import build
from sidecar.errors import ConfigError
from sidecar.upstream.ws_profile import (
    MISSING,
    Events,
    States,
    WebSocketProfile,
    default_request,
    lookup,
    render_request,
    validate_profile,
)


def render(template: object, body: object = None, session_key: str | None = "s1") -> object:
    return render_request(
        template, body=body, session_key=session_key, request_id="req-1", idempotency_key="idem"
    )


# --- building from config data ---------------------------------------------------------


def test_empty_block_is_the_agent_gateway_profile():
    profile = build(WebSocketProfile, {}, "routes[0].websocket")
    assert profile == WebSocketProfile()
    assert profile.request == default_request()
    assert profile.event.chat == ("chat",)
    assert profile.event.tools == ("agent",)
    assert profile.states == States()
    assert profile.response.run_id == "payload.runId"
    assert profile.connect_timeout == 10.0
    assert profile.max_frame_bytes == 1024 * 1024
    validate_profile(profile)


def test_nested_keys_units_and_free_form_template():
    data = {
        "headers": {"X-Tenant": "acme"},
        "token": "t0k",
        "request": {"op": "run", "input": "{body.prompt}", "n": [1, "{request_id}"]},
        "request_id": "n.1",
        "request_session_key": "",
        "event": {"chat": ["chat", "chat.v2"], "text": "payload.text"},
        "states": {"final": ["done", "complete"]},
        "forward_tools": True,
        "connect_timeout": "250ms",
        "max_frame_bytes": "64KiB",
    }
    profile = build(WebSocketProfile, data, "ws")
    assert profile.headers == {"X-Tenant": "acme"}
    assert profile.request["n"] == [1, "{request_id}"]
    assert profile.event.chat == ("chat", "chat.v2")
    assert profile.event.run_id == Events().run_id  # untouched keys keep their defaults
    assert profile.states.final == ("done", "complete")
    assert profile.states.delta == ("delta",)
    assert profile.connect_timeout == 0.25
    assert profile.max_frame_bytes == 64 * 1024
    validate_profile(profile)


def test_build_names_the_bad_key():
    with pytest.raises(ConfigError, match=r"^ws\.event\.sesion_key: unknown key"):
        build(WebSocketProfile, {"event": {"sesion_key": "x"}}, "ws")
    with pytest.raises(ConfigError, match=r"^ws\.connect_timeout: expected a duration"):
        build(WebSocketProfile, {"connect_timeout": "soon"}, "ws")


def test_importing_the_profile_does_not_import_config():
    """config.py embeds the profile in its Route; the reverse import would be circular."""
    code = (
        "import sys, sidecar.upstream.ws_profile as p\n"
        "assert 'sidecar.config' not in sys.modules\n"
        "from sidecar.config import build\n"
        "assert build(p.WebSocketProfile, {'connect_timeout': '2s'}).connect_timeout == 2.0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_secrets_stay_out_of_repr():
    profile = WebSocketProfile(headers={"X-Api-Key": "hunter2"}, token="s3cret")
    assert "hunter2" not in repr(profile)
    assert "s3cret" not in repr(profile)


# --- paths -----------------------------------------------------------------------------


def test_lookup():
    frame = {"a": {"b": [{"c": 1}, None]}, "n": None}
    assert lookup(frame, "a.b.0.c") == 1
    assert lookup(frame, "a.b.1") is None
    assert lookup(frame, "n") is None  # JSON null is a value...
    assert lookup(frame, "missing") is MISSING  # ...an absent key is not
    assert lookup(frame, "a.b.2") is MISSING
    assert lookup(frame, "a.b.x") is MISSING
    assert lookup(frame, "a.b.0.c.d") is MISSING
    assert lookup(frame, "") is MISSING
    assert lookup("text", "a") is MISSING


# --- the request template ------------------------------------------------------------------


def test_default_template_renders_the_agent_request():
    frame = render(default_request(), {"message": "hi", "agentId": "main"}, "agent:main:main")
    assert frame == {
        "type": "req",
        "id": "req-1",
        "method": "agent",
        "params": {
            "message": "hi",
            "agentId": "main",
            "sessionKey": "agent:main:main",
            "idempotencyKey": "idem",
        },
    }


def test_whole_placeholder_keeps_the_json_type():
    body = {"n": 3, "flag": False, "obj": {"k": [1]}, "nil": None}
    template = {"n": "{body.n}", "f": "{body.flag}", "o": "{body.obj}", "z": "{body.nil}"}
    assert render(template, body) == {"n": 3, "f": False, "o": {"k": [1]}, "z": None}


def test_missing_value_drops_the_member_and_empties_embedded_text():
    template = {
        "agentId": "{body.agentId}",
        "sessionKey": "{session_key}",
        "text": "agent={body.agentId};session={session_key}",
        "list": ["{body.agentId}", "x"],
    }
    assert render(template, {"message": "m"}, session_key=None) == {
        "text": "agent=;session=",
        "list": [None, "x"],  # a list keeps its positions
    }


def test_embedded_placeholders_are_text_and_nested_body_paths_work():
    template = {"say": "{body.user.name} asks {body.q} ({body.count}) #{request_id}"}
    body = {"user": {"name": "Zoë"}, "q": "why?", "count": 2}
    assert render(template, body) == {"say": "Zoë asks why? (2) #req-1"}


def test_template_is_not_changed_and_other_braces_stay():
    template = default_request() | {"literal": "{not a placeholder}", "json": '{"a": 1}'}
    before = json.dumps(template, sort_keys=True)
    frame = render(template, {"message": "x"})
    assert json.dumps(template, sort_keys=True) == before
    assert frame["literal"] == "{not a placeholder}"
    assert frame["json"] == '{"a": 1}'


def test_body_that_is_not_an_object_fills_nothing():
    assert render({"m": "{body.message}", "k": 1}, ["message"]) == {"k": 1}
    assert render({"m": "{body.message}"}, None) == {}


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        pytest.param(
            WebSocketProfile(request={"a": {"b": "{sesion_key}"}}),
            r"^ws\.request\.a\.b: unknown placeholder \{sesion_key\}",
            id="placeholder-typo",
        ),
        pytest.param(
            WebSocketProfile(request={"a": ["x", "{body}"]}),
            r"^ws\.request\.a\[1\]: unknown placeholder \{body\}",
            id="body-without-field",
        ),
        pytest.param(
            WebSocketProfile(request={"a": float("nan")}),
            r"^ws\.request: not a JSON value",
            id="not-json",
        ),
        pytest.param(
            WebSocketProfile(request={"method": "agent"}),
            r"^ws\.request_id: path 'id' is not in the request template",
            id="no-request-id",
        ),
        pytest.param(
            WebSocketProfile(event=Events(run_id="")),
            r"^ws\.event\.run_id: must not be empty",
            id="empty-run-id-path",
        ),
        pytest.param(
            WebSocketProfile(states=States(final=("delta",))),
            r"^ws\.states\.final: 'delta' is already a delta state",
            id="overlapping-states",
        ),
        pytest.param(
            WebSocketProfile(states=States(error=())),
            r"^ws\.states\.error: needs at least one state name",
            id="no-error-state",
        ),
        pytest.param(
            WebSocketProfile(headers={"X-A": "a\r\nX-Evil: 1"}),
            r"^ws\.headers\.X-A: must not contain a line break",
            id="header-injection",
        ),
        pytest.param(
            WebSocketProfile(token="t\n"),
            r"^ws\.token: must not contain a line break",
            id="token-injection",
        ),
        pytest.param(
            WebSocketProfile(connect_timeout=0.0),
            r"^ws\.connect_timeout: must be greater than 0",
            id="zero-timeout",
        ),
        pytest.param(
            WebSocketProfile(max_frame_bytes=0),
            r"^ws\.max_frame_bytes: must be greater than 0",
            id="zero-frame-size",
        ),
    ],
)
def test_validate_names_the_key(profile: WebSocketProfile, message: str):
    with pytest.raises(ConfigError, match=message):
        validate_profile(profile, "ws")
