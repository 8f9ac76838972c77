"""The run tracker's rules that only some gateways use, frame by frame, without a connection.

The OpenClaw profile's final response as the fallback terminal, the gateway's
rewritten session key, and run-status reports (``forward_status``).
"""

from __future__ import annotations

import json

from sidecar.sse import Event
from sidecar.upstream.ws_profile import Events, WebSocketProfile
from sidecar.upstream.ws_tracker import RunTracker
from tests.unit.upstream.test_ws_tracker import SESSION, agent, chat, delta, res, terminal

OPENCLAW = WebSocketProfile(profile="openclaw")


def accepted(profile: WebSocketProfile = OPENCLAW, session_key: str | None = SESSION) -> RunTracker:
    t = RunTracker(profile, request_id="req-1", session_key=session_key, terminal_event="done")
    assert t.feed_frame(res()) == []
    return t


def final(payloads: object) -> dict[str, object]:
    """OpenClaw's final response to the agent request: the run's result, status ``ok``."""
    result = {"payloads": payloads}
    return {"type": "res", "id": "req-1", "ok": True, "payload": {"status": "ok", "result": result}}


# --- the final response ends an OpenClaw run ---------------------------------------------------


def test_an_openclaw_final_response_ends_the_run_with_its_text() -> None:
    # No final chat event came: the response's result text is the last text,
    # sent as the rest of what the client has, then the terminal event.
    t = accepted()
    assert t.feed_frame(chat("delta", "Hel")) == [delta("Hel")]
    assert t.feed_frame(final([{"text": "Hello."}])) == [delta("lo."), terminal("Hello.")]
    assert t.done
    assert t.final_response
    assert t.feed_frame(chat("delta", "Hello. More")) == []


def test_the_result_text_joins_the_text_payloads_only() -> None:
    # Payloads that are not text (an image, a bare value) add nothing, and
    # the text ones are joined as they are, with nothing between them.
    t = accepted()
    payloads = [{"text": "Hel"}, {"type": "image", "url": "u"}, "x", 7, {"text": 3}, {"text": "lo"}]
    assert t.feed_frame(final(payloads)) == [delta("Hello"), terminal("Hello")]


def test_a_final_response_without_result_text_confirms_what_was_sent() -> None:
    for payloads in ([], [{"type": "image"}], "Hello", None):
        t = accepted()
        assert t.feed_frame(chat("delta", "Hello")) == [delta("Hello")]
        assert t.feed_frame(final(payloads)) == [terminal("Hello")], payloads
        assert t.done
        assert t.resets == 0


def test_a_final_response_without_a_result_at_all_ends_with_the_text_sent() -> None:
    t = accepted()
    t.feed_frame(chat("delta", "Hi"))
    frame = {"type": "res", "id": "req-1", "ok": True, "payload": {"status": "ok"}}
    assert t.feed_frame(frame) == [terminal("Hi")]
    assert t.done


def test_a_generic_gateways_final_response_ends_nothing() -> None:
    t = accepted(WebSocketProfile())
    assert t.feed_frame(final([{"text": "Hello"}])) == []
    assert t.final_response
    assert not t.done


def test_the_terminal_after_a_final_response_has_the_routes_name() -> None:
    t = RunTracker(OPENCLAW, request_id="req-1", session_key=SESSION, terminal_event="finished")
    t.feed_frame(res())
    assert t.feed_frame(final([{"text": "A"}])) == [delta("A"), terminal("A", "finished")]


# --- the session key the gateway answers with ----------------------------------------------------


def test_the_gateways_form_of_the_session_key_filters_the_events() -> None:
    # A gateway may rewrite the key it was sent (say, to a canonical form);
    # its events carry that form, so the acceptance's key is the one to match.
    t = RunTracker(OPENCLAW, request_id="req-1", session_key="main", terminal_event="done")
    acceptance = res()
    acceptance["payload"]["sessionKey"] = SESSION  # type: ignore[index]
    assert t.feed_frame(acceptance) == []
    assert t.session_key == SESSION
    assert t.feed_frame(chat("delta", "ours")) == [delta("ours")]
    assert t.feed_frame(chat("delta", "theirs", session="main")) == []
    assert t.dropped["other_session"] == 1


def test_an_acceptance_without_a_usable_session_key_keeps_the_one_sent() -> None:
    assert accepted().session_key == SESSION  # the acceptance names none
    t = RunTracker(OPENCLAW, request_id="req-1", session_key=SESSION, terminal_event="done")
    acceptance = res()
    acceptance["payload"]["sessionKey"] = 42  # type: ignore[index]  # not a key
    t.feed_frame(acceptance)
    assert t.session_key == SESSION


def test_a_tracker_without_a_session_filter_gets_none_from_the_acceptance() -> None:
    # No key sent means no session filter; the gateway naming one turns none on.
    t = RunTracker(OPENCLAW, request_id="req-1", session_key=None, terminal_event="done")
    acceptance = res()
    acceptance["payload"]["sessionKey"] = SESSION  # type: ignore[index]
    t.feed_frame(acceptance)
    assert t.session_key is None
    assert t.feed_frame(chat("delta", "x", session="anything")) == [delta("x")]


# --- run status reports ----------------------------------------------------------------------


def test_run_status_reports_are_forwarded_as_status_events_when_asked() -> None:
    t = accepted(WebSocketProfile(profile="openclaw", forward_status=True))
    frame = agent("run_status", phase="retrying", attempt=2)
    assert t.feed_frame(frame) == [Event(json.dumps({"phase": "retrying", "attempt": 2}), "status")]
    # A report without its payload still says that something happened.
    bare = agent("run_status")
    del bare["payload"]["data"]
    assert t.feed_frame(bare) == [Event("null", "status")]
    assert not t.done
    assert t.feed_frame(chat("delta", "go")) == [delta("go")]


def test_run_status_reports_are_dropped_by_default() -> None:
    t = accepted()
    assert t.feed_frame(agent("run_status", phase="retrying")) == []
    assert t.dropped == {"status_not_forwarded": 1}


def test_a_status_payload_path_of_the_profile_is_followed() -> None:
    profile = WebSocketProfile(
        forward_status=True, event=Events(status_payload="payload.data.phase")
    )
    t = accepted(profile)
    assert t.feed_frame(agent("run_status", phase="retrying")) == [Event('"retrying"', "status")]
