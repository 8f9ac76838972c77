"""The forms each dialect writes, decoded as the SDKs' own parsers would see them."""

from __future__ import annotations

import json

import pytest

from sidecar.config import Keepalive, Terminal, from_mapping
from sidecar.dialects import ERROR_CODES, dialect, dialect_for, suggested, warnings
from sidecar.normalize import Normalizer
from sidecar.sse import Decoder, Event

GENERIC_KA = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


def events(raw: bytes) -> list[Event]:
    decoder = Decoder()
    return [i for i in [*decoder.feed(raw), *decoder.close()] if isinstance(i, Event)]


GENERIC = dialect("generic", GENERIC_KA)


def test_generic_is_todays_contract() -> None:
    assert GENERIC.keepalive == GENERIC_KA
    assert GENERIC.error("upstream_timeout", "m", partial=True, retry_ms=5) == (
        b'event: error\nretry: 5\ndata: {"type":"error","code":"upstream_timeout",'
        b'"message":"m","partial":true}\n\n'
    )
    assert GENERIC.end("upstream_closed", partial=False) == (
        b'event: end\ndata: {"type":"end","reason":"upstream_closed","partial":false}\n\n'
    )


def test_error_codes_are_those_of_the_design() -> None:
    assert {
        "upstream_status",
        "upstream_unreachable",
        "upstream_disconnected",
        "upstream_timeout",
        "upstream_protocol",
        "replaced",
        "shutdown",
        "resume_gap",
    } <= ERROR_CODES


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_is_written(code: str) -> None:
    assert GENERIC.error(code, "m", partial=False) == (
        f'event: error\ndata: {{"type":"error","code":"{code}","message":"m",'
        f'"partial":false}}\n\n'.encode()
    )


def test_generic_error_exact_bytes() -> None:
    assert GENERIC.error("upstream_timeout", "no upstream byte for 300s", partial=True) == (
        b'event: error\ndata: {"type":"error","code":"upstream_timeout",'
        b'"message":"no upstream byte for 300s","partial":true}\n\n'
    )
    assert GENERIC.error("replaced", "another stream took over", partial=False) == (
        b'event: error\ndata: {"type":"error","code":"replaced",'
        b'"message":"another stream took over","partial":false}\n\n'
    )


def test_generic_error_with_retry_and_extra_fields() -> None:
    assert GENERIC.error("shutdown", "bye", partial=False, retry_ms=1000) == (
        b'event: error\nretry: 1000\ndata: {"type":"error","code":"shutdown",'
        b'"message":"bye","partial":false}\n\n'
    )
    assert GENERIC.error("upstream_status", "bad gateway", partial=True, status=502) == (
        b'event: error\ndata: {"type":"error","code":"upstream_status",'
        b'"message":"bad gateway","partial":true,"status":502}\n\n'
    )


def test_error_message_with_line_breaks_stays_on_one_data_line() -> None:
    message = "line one\nline two\r\nthird\rfourth\u2028fifth\n\nevent: injected"
    raw = GENERIC.error("upstream_protocol", message, partial=True, retry_ms=500)
    assert raw.count(b"\n") == 4  # event, retry, data, blank line
    assert raw.count(b"data:") == 1
    (event,) = events(raw)
    assert (event.event, event.retry, event.id) == ("error", 500, None)
    assert event.data is not None
    assert json.loads(event.data) == {
        "type": "error",
        "code": "upstream_protocol",
        "message": message,
        "partial": True,
    }


@pytest.mark.parametrize("partial", [False, True])
def test_generic_end(partial: bool) -> None:
    wire = GENERIC.end("upstream_closed", partial=partial)
    flag = str(partial).lower()
    assert wire == (
        b'event: end\ndata: {"type":"end","reason":"upstream_closed","partial":%b}\n\n'
        % flag.encode()
    )
    (event,) = events(wire)
    assert event == Event(f'{{"type":"end","reason":"upstream_closed","partial":{flag}}}', "end")


def test_generic_error_and_end_carry_an_id_when_given() -> None:
    assert GENERIC.error("shutdown", "bye", partial=False, retry_ms=100, event_id="n-9") == (
        b"event: error\nid: n-9\nretry: 100\n"
        b'data: {"type":"error","code":"shutdown","message":"bye","partial":false}\n\n'
    )
    assert GENERIC.end("upstream_closed", partial=True, event_id="n-3") == (
        b'event: end\nid: n-3\ndata: {"type":"end","reason":"upstream_closed","partial":true}\n\n'
    )


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
