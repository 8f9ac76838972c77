"""The forms each dialect writes, decoded as the SDKs' own parsers would see them."""

from __future__ import annotations

import json

import pytest

from sidecar.config import Keepalive, Terminal
from sidecar.dialects import dialect, suggested, warnings
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
