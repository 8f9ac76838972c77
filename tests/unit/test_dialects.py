"""The forms each dialect writes, decoded as the SDKs' own parsers would see them."""

from __future__ import annotations

import json

import pytest

from sidecar.config import Keepalive, Terminal, from_mapping
from sidecar.dialects import dialect, dialect_for, suggested, warnings
from sidecar.normalize import ERROR_CODES, Normalizer, end_event, error_event
from sidecar.sse import Decoder, Event

GENERIC_KA = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


def events(raw: bytes) -> list[Event]:
    decoder = Decoder()
    return [i for i in [*decoder.feed(raw), *decoder.close()] if isinstance(i, Event)]


def test_generic_is_todays_contract() -> None:
    d = dialect("generic", GENERIC_KA)
    assert d.keepalive == GENERIC_KA
    assert d.error("upstream_timeout", "m", partial=True, retry_ms=5) == error_event(
        "upstream_timeout", "m", partial=True, retry_ms=5
    )
    assert d.end("upstream_closed", partial=False) == end_event(partial=False)


def test_openai_keepalive_is_a_comment_no_parser_dispatches() -> None:
    d = dialect("openai", GENERIC_KA)
    assert d.keepalive == b": keepalive\n\n"
    assert events(d.keepalive) == []
    assert events(d.end("upstream_closed", partial=False)) == []


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_openai_error_carries_the_sdk_error_object_and_our_code(code: str) -> None:
    (event,) = events(dialect("openai", GENERIC_KA).error(code, "why", partial=True))
    assert event.event == "error"
    assert event.data is not None
    data = json.loads(event.data)
    assert data["error"]["code"] == code  # the SDK raises APIError on data["error"]
    assert data["error"]["message"] == f"{code}: why"
    assert (data["code"], data["partial"], data["error"]["partial"]) == (code, True, True)


def test_anthropic_forms() -> None:
    d = dialect("anthropic", GENERIC_KA)
    (ping,) = events(d.keepalive)
    assert (ping.event, ping.data) == ("ping", '{"type":"ping"}')
    (error,) = events(d.error("upstream_timeout", "slow", partial=False))
    assert error.event == "error"
    assert error.data is not None
    assert json.loads(error.data) == {
        "type": "error",
        "error": {
            "type": "timeout_error",
            "message": "upstream_timeout: slow",
            "code": "upstream_timeout",
            "partial": False,
        },
    }
    assert events(d.end("stopped", partial=True)) == []


@pytest.mark.parametrize(
    ("name", "terminal"),
    [
        ("openai", Event("[DONE]")),
        ("openai", Event("{}", "response.completed")),
        ("openai", Event("{}", "response.failed")),
        ("anthropic", Event('{"type":"message_stop"}', "message_stop")),
    ],
)
def test_a_dialect_adds_its_terminal_markers(name: str, terminal: Event) -> None:
    normalizer = Normalizer(
        "convert", Keepalive(), Terminal(events=(), data=()), dialect(name, b"")
    )  # type: ignore[arg-type]
    assert normalizer.is_terminal(terminal)
    assert not Normalizer("convert", Keepalive(), Terminal(events=(), data=())).is_terminal(
        terminal
    )


def test_comments_become_the_dialects_keepalive() -> None:
    normalizer = Normalizer("convert", Keepalive(), Terminal(), dialect("anthropic", b""))
    batch = normalizer.batch([*Decoder().feed(b": hi\n\ndata: x\n\n")])
    assert batch.data == b'event: ping\ndata: {"type":"ping"}\n\ndata: x\n\n'


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/chat/completions", "openai"),
        ("/api/v1/responses/", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/chat", None),
    ],
)
def test_suggested(path: str, name: str | None) -> None:
    assert suggested(path) == name


def test_warnings() -> None:
    assert warnings("r", "/v1/chat", "generic", retry=True, open_event=False) == []
    (w,) = warnings("r", "/v1/messages", "generic", retry=False, open_event=False)
    assert w.startswith("r.dialect:")
    assert "dialect: anthropic" in w
    (w,) = warnings("r", "/v1/responses", "openai", retry=True, open_event=False)
    assert w.startswith("r.stream.retry:")
    (w,) = warnings("r", "/x", "anthropic", retry=False, open_event=True)
    assert w.startswith("r.stream.open_event:")


def payload(raw: bytes) -> object:
    (event,) = events(raw)
    assert event.data is not None
    return json.loads(event.data)


def test_openai_error_is_the_whole_documented_shape() -> None:
    # Top-level fields as a Responses-style UI reads them, ``error`` as the
    # SDK raises on it; extra fields ride inside ``error`` only.
    raw = dialect("openai", GENERIC_KA).error("upstream_status", "502", partial=False, status=502)
    assert payload(raw) == {
        "type": "error",
        "code": "upstream_status",
        "message": "upstream_status: 502",
        "param": None,
        "partial": False,
        "error": {
            "type": "sidecar_error",
            "code": "upstream_status",
            "message": "upstream_status: 502",
            "partial": False,
            "status": 502,
        },
    }


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("upstream_timeout", "timeout_error"),
        ("shutdown", "overloaded_error"),
        ("backend_unavailable", "overloaded_error"),
        ("upstream_protocol", "api_error"),
        ("slow_client", "api_error"),
    ],
)
def test_anthropic_error_types_by_code(code: str, kind: str) -> None:
    # The SDK and UIs switch on error.type; a code with no closer fit is api_error.
    raw = dialect("anthropic", GENERIC_KA).error(code, "m", partial=True, retry_after=3)
    assert payload(raw) == {
        "type": "error",
        "error": {
            "type": kind,
            "message": f"{code}: m",
            "code": code,
            "partial": True,
            "retry_after": 3,
        },
    }


@pytest.mark.parametrize("name", ["generic", "openai", "anthropic"])
def test_every_dialects_error_carries_the_id_and_retry_given(name: str) -> None:
    raw = dialect(name, GENERIC_KA).error(
        "shutdown", "m", partial=False, retry_ms=7, event_id="n-4"
    )
    (event,) = events(raw)
    assert (event.event, event.id, event.retry) == ("error", "n-4", 7)
    (plain,) = events(dialect(name, GENERIC_KA).error("shutdown", "m", partial=False))
    assert (plain.id, plain.retry) == (None, None)


def test_the_generic_end_carries_the_id_given() -> None:
    d = dialect("generic", GENERIC_KA)
    (event,) = events(d.end("stopped", partial=True, event_id="n-9"))
    assert (event.event, event.id) == ("end", "n-9")
    assert json.loads(event.data or "") == {"type": "end", "reason": "stopped", "partial": True}
    (plain,) = events(d.end("stopped", partial=True))
    assert plain.id is None


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_an_sdk_dialects_end_is_one_comment_with_the_reason(name: str) -> None:
    # The bytes a curl user or a log sees: the reason as JSON after "end ".
    assert dialect(name, GENERIC_KA).end("stopped", partial=True, event_id="n-1") == (
        b': end {"type":"end","reason":"stopped","partial":true}\n\n'
    )


def test_openai_counts_an_incomplete_response_as_terminal() -> None:
    d = dialect("openai", GENERIC_KA)
    assert d.terminal_events == {"response.completed", "response.failed", "response.incomplete"}
    assert d.terminal_data == {"[DONE]"}
    assert dialect("anthropic", GENERIC_KA).terminal_events == {"message_stop"}
    assert dialect("generic", GENERIC_KA).terminal_events == frozenset()


@pytest.mark.parametrize("name", ["generic", "openai", "anthropic"])
def test_dialect_for_a_route_keeps_its_configured_keepalive_on_generic(name: str) -> None:
    loaded = from_mapping(
        {
            "routes": [
                {
                    "name": "r",
                    "path": "/r",
                    "upstream": "http://127.0.0.1:9",
                    "dialect": name,
                    "keepalive": {"event": "tick", "data": "{}"},
                }
            ]
        }
    )
    d = dialect_for(loaded.routes[0])
    assert d == dialect(name, b"event: tick\ndata: {}\n\n")
    assert d.name == name


@pytest.mark.parametrize(
    ("path", "name"),
    [("/v1/messages//", "anthropic"), ("/v1/messagesX", None), ("/v1/messages/x", None)],
)
def test_suggested_ignores_trailing_slashes_only(path: str, name: str | None) -> None:
    assert suggested(path) == name


def test_warnings_word_for_word() -> None:
    # --check-config prints these; each names the key, what goes wrong and the fix.
    assert warnings("routes[0]", "/v1/messages", "generic", retry=False, open_event=False) == [
        "routes[0].dialect: the upstream path '/v1/messages' looks like an anthropic API, but "
        "the route uses dialect generic: the anthropic SDK turns our keepalive into a chunk "
        "and does not raise on our errors; set dialect: anthropic"
    ]
    assert warnings("routes[0]", "/x", "openai", retry=True, open_event=False) == [
        "routes[0].stream.retry: not sent on an openai dialect route (a comment keepalive "
        "cannot carry it, and a retry: alone is an empty event); set stream.open_event "
        "or drop stream.retry"
    ]
    assert warnings("routes[0]", "/x", "anthropic", retry=False, open_event=True) == [
        "routes[0].stream.open_event: the anthropic SDK hands an unknown event to the caller "
        "as a chunk; leave open_event unset on this route"
    ]


def test_an_opening_event_is_fine_on_a_generic_route() -> None:
    assert warnings("r", "/x", "generic", retry=True, open_event=True) == []
    assert warnings("r", "/x", "openai", retry=True, open_event=True) != []
