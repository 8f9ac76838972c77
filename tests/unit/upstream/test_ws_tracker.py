"""The sans-I/O run tracker: which frames are ours, cumulative text to deltas, how a run ends."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import UpstreamAborted, UpstreamDisconnected, UpstreamRunFailed
from sidecar.sse import Event
from sidecar.upstream.ws_profile import (
    Events,
    Responses,
    States,
    WebSocketProfile,
    render_request,
)
from sidecar.upstream.ws_tracker import PENDING_EVENTS, RunTracker

SESSION = "agent:main:main"
SETTINGS = settings()


# --- frames as the agent gateway sends them ---------------------------------------------------


def res(run_id: str | None = "run-1", status: str = "accepted", rid: object = "req-1", ok=True):
    payload = {"status": status} | ({"runId": run_id} if run_id is not None else {})
    return {"type": "res", "id": rid, "ok": ok, "payload": payload}


def chat(state: str, text: object = None, run_id: str = "run-1", session: str = SESSION, **extra):
    payload: dict[str, object] = {"runId": run_id, "sessionKey": session, "state": state}
    if text is not None:
        content = text if not isinstance(text, str) else [{"type": "text", "text": text}]
        payload["message"] = {"role": "assistant", "content": content}
    return {"type": "event", "event": "chat", "payload": payload | extra}


def agent(stream: str = "tool", run_id: str = "run-1", session: str = SESSION, **data):
    payload = {"runId": run_id, "sessionKey": session, "stream": stream, "data": data}
    return {"type": "event", "event": "agent", "payload": payload}


def tracker(profile: WebSocketProfile | None = None, terminal: str = "done") -> RunTracker:
    return RunTracker(
        profile or WebSocketProfile(),
        request_id="req-1",
        session_key=SESSION,
        terminal_event=terminal,
    )


def accepted(profile: WebSocketProfile | None = None, terminal: str = "done") -> RunTracker:
    t = tracker(profile, terminal)
    assert t.feed_frame(res()) == []
    assert t.run_id == "run-1"
    return t


def feed_all(t: RunTracker, frames: Iterable[object]) -> list[Event]:
    out: list[Event] = []
    for frame in frames:
        out += t.feed_frame(frame)
    return out


def delta(text: str) -> Event:
    return Event(json.dumps({"text": text}), "delta")


def reset(text: str) -> Event:
    return Event(json.dumps({"text": text}), "reset")


def terminal(text: str, name: str = "done") -> Event:
    return Event(json.dumps({"text": text}), name)


class Client:
    """What a client does with the events: append deltas, replace on reset."""

    def __init__(self) -> None:
        self.text = ""
        self.final: str | None = None

    def apply(self, events: Iterable[Event]) -> None:
        for event in events:
            assert self.final is None, "nothing may follow the terminal event"
            assert event.data is not None
            text = json.loads(event.data)["text"]
            if event.event == "delta":
                assert text, "an empty delta is noise"
                self.text += text
            elif event.event == "reset":
                self.text = text
            else:
                self.final = text


# --- which frames are ours --------------------------------------------------------------------


def test_run_id_is_latched_from_the_accepted_response():
    t = tracker()
    assert t.feed_frame(res(rid="someone-else", run_id="run-9")) == []
    assert t.run_id is None
    assert t.dropped["other_response"] == 1
    assert t.feed_frame(res()) == []
    assert t.run_id == "run-1"
    assert t.accepted


def test_other_runs_on_the_same_session_are_dropped():
    t = accepted()
    events = feed_all(
        t,
        [
            chat("delta", "Hel"),
            chat("delta", "Other run text", run_id="run-2"),
            chat("delta", "Hello"),
            chat("final", "Other run text, done", run_id="run-2"),
            chat("delta", "Hello wor"),
            chat("error", run_id="run-2", errorMessage="not ours"),
        ],
    )
    assert events == [delta("Hel"), delta("lo"), delta(" wor")]
    assert t.dropped["other_run"] == 3
    assert not t.done


def test_other_sessions_are_dropped_even_with_our_run_id():
    t = accepted()
    assert t.feed_frame(chat("delta", "spoof", session="agent:main:other")) == []
    assert t.dropped["other_session"] == 1
    assert t.feed_frame(chat("delta", "ok")) == [delta("ok")]


def test_no_session_key_turns_the_session_filter_off():
    profile = WebSocketProfile()
    frame = render_request(
        profile.request, body={}, session_key=None, request_id="req-1", idempotency_key="i"
    )
    assert "sessionKey" not in frame["params"]
    for t in (
        RunTracker.for_request(profile, frame),
        RunTracker(profile, request_id="req-1", session_key=None),
    ):
        t.feed_frame(res())
        assert t.feed_frame(chat("delta", "x", session="anything")) == [delta("x")]


def test_a_new_tracker_has_seen_nothing():
    t = RunTracker(WebSocketProfile(), request_id="req-1")
    assert t.terminal_event == "done"
    assert (t.run_id, t.text, t.frames, t.resets) == (None, "", 0, 0)
    assert t.done is False
    assert t.accepted is False
    assert t.final_response is False
    assert (t.malformed, t.dropped) == ({}, {})


def test_for_request_takes_ids_from_the_rendered_frame():
    profile = WebSocketProfile()
    frame = render_request(
        profile.request, body={}, session_key=SESSION, request_id="req-1", idempotency_key="i"
    )
    t = RunTracker.for_request(profile, frame)
    assert (t.request_id, t.session_key, t.terminal_event) == ("req-1", SESSION, "done")
    assert RunTracker.for_request(profile, frame, "finished").terminal_event == "finished"
    t.feed_frame(res())
    assert t.feed_frame(chat("delta", "x", session="other")) == []
    assert t.dropped == {"other_session": 1}
    assert t.feed_frame(chat("final", "x")) == [delta("x"), terminal("x")]


def test_every_message_is_counted_even_after_the_end():
    t = accepted()
    for message in ("not json", b"bin", json.dumps(chat("final", "a")), json.dumps(chat("delta"))):
        t.feed(message)
    assert t.frames == 4
    assert t.done


def test_events_before_the_acceptance_are_held_then_replayed():
    t = tracker()
    early = [chat("delta", "Hi", run_id="run-2"), chat("delta", "Hel"), chat("delta", "Hello")]
    assert feed_all(t, early) == []
    assert t.feed_frame(res()) == [delta("Hel"), delta("lo")]
    assert t.dropped["other_run"] == 1


def test_held_events_are_bounded():
    t = tracker()
    for i in range(PENDING_EVENTS + 10):
        t.feed_frame(chat("delta", "x" * (i + 1), run_id="run-2"))
    assert t.dropped["pending_overflow"] == 10
    assert t.feed_frame(res()) == []
    assert t.dropped["other_run"] == PENDING_EVENTS


def test_latch_from_the_first_event_when_responses_name_no_run():
    profile = WebSocketProfile(response=Responses(run_id=""))
    t = tracker(profile)
    assert t.feed_frame(chat("delta", "A", run_id="run-7", session="other")) == []
    assert t.feed_frame(chat("delta", "Ab", run_id="run-7")) == [delta("Ab")]
    assert t.run_id == "run-7"
    assert t.feed_frame(chat("delta", "zz", run_id="run-8")) == []
    assert t.dropped["other_run"] == 1


def test_acceptance_without_run_id_falls_back_to_the_first_event():
    t = tracker()
    assert t.feed_frame(chat("delta", "Hi", run_id="run-3")) == []  # held
    assert t.feed_frame(res(run_id=None)) == [delta("Hi")]
    assert t.run_id == "run-3"


def test_a_first_response_with_a_final_status_is_no_acceptance():
    t = tracker()
    assert t.feed_frame(res(status="ok")) == []
    assert (t.accepted, t.final_response, t.run_id) == (False, True, None)
    assert t.feed_frame(chat("delta", "Hi")) == []  # still held for the acceptance
    assert t.feed_frame(res()) == [delta("Hi")]
    assert t.accepted


def test_acceptance_without_status_is_the_first_ok_response():
    t = tracker()
    t.feed_frame({"type": "res", "id": "req-1", "ok": True, "payload": {"runId": "run-1"}})
    assert t.accepted
    assert t.run_id == "run-1"
    t.feed_frame({"type": "res", "id": "req-1", "ok": True, "payload": {"runId": "run-1"}})
    assert t.final_response


def test_other_frame_types_and_event_names_are_dropped():
    t = accepted()
    assert feed_all(t, [{"type": "hello"}, {"type": "event", "event": "presence"}]) == []
    assert t.dropped["other_type"] == 1
    assert t.dropped["other_event"] == 1


# --- cumulative text → deltas, and the reset rule ---------------------------------------------


def test_cumulative_text_becomes_suffixes():
    t = accepted()
    texts = ["", "Hel", "Hello", "Hello", "Hello, wörld 🙂", "Hello, wörld 🙂!"]
    events = feed_all(t, [chat("delta", x) for x in texts])
    assert events == [delta("Hel"), delta("lo"), delta(", wörld 🙂"), delta("!")]
    assert t.text == "Hello, wörld 🙂!"


def test_text_parts_are_joined_and_other_parts_ignored():
    t = accepted()
    parts = [
        {"type": "text", "text": "Hello"},
        {"type": "image", "url": "x"},
        {"type": "text", "text": " there"},
        {"type": "text", "text": 5},
        {"type": "thinking", "text": " (hidden)"},  # text, but in a part of another type
        {"text": "!"},  # a part without a type is text
        "a bare string",
    ]
    assert t.feed_frame(chat("delta", parts)) == [delta("Hello there!")]


def test_a_plain_string_at_the_text_path_is_accepted():
    profile = WebSocketProfile(event=Events(text="payload.text"))
    t = accepted(profile)
    frame = chat("delta")
    frame["payload"]["text"] = "plain"
    assert t.feed_frame(frame) == [delta("plain")]


def test_content_without_text_parts_is_not_a_reset():
    t = accepted()
    t.feed_frame(chat("delta", "Hello"))
    assert t.feed_frame(chat("delta", [{"type": "thinking", "thinking": "…"}])) == []
    assert t.dropped["no_text"] == 1
    assert t.text == "Hello"


def test_shorter_text_is_a_reset_with_the_whole_text():
    t = accepted()
    events = feed_all(t, [chat("delta", x) for x in ["Hello wor", "Hello", "Hello there"]])
    assert events == [delta("Hello wor"), reset("Hello"), delta(" there")]
    assert t.resets == 1


def test_resets_are_counted():
    t = accepted()
    events = feed_all(t, [chat("delta", "abc"), chat("delta", "ab"), chat("delta", "xy")])
    assert events == [delta("abc"), reset("ab"), reset("xy")]
    assert t.resets == 2


def test_rewritten_text_is_a_reset():
    t = accepted()
    events = feed_all(
        t, [chat("delta", x) for x in ["I think", "I thought", "We know", "We know it"]]
    )
    assert events == [delta("I think"), reset("I thought"), reset("We know"), delta(" it")]


# --- how the run ends -------------------------------------------------------------------------


def test_final_sends_the_rest_then_the_terminal_event():
    t = accepted(terminal="final")
    t.feed_frame(chat("delta", "Hello"))
    assert t.feed_frame(chat("final", "Hello world")) == [
        delta(" world"),
        terminal("Hello world", "final"),
    ]
    assert t.done
    assert t.feed_frame(chat("delta", "Hello world and more")) == []
    assert t.feed(json.dumps(chat("error", errorMessage="late"))) == []


def test_final_without_text_confirms_what_was_sent():
    t = accepted()
    t.feed_frame(chat("delta", "Hello"))
    assert t.feed_frame(chat("final")) == [terminal("Hello")]


def test_final_that_rewrites_resets_first():
    t = accepted()
    t.feed_frame(chat("delta", "Draft"))
    assert t.feed_frame(chat("final", "Answer")) == [reset("Answer"), terminal("Answer")]


def test_error_state_raises_run_failed_with_the_gateway_message():
    t = accepted()
    t.feed_frame(chat("delta", "Hel"))
    with pytest.raises(UpstreamRunFailed, match=r"^model overloaded$") as info:
        t.feed_frame(chat("error", errorMessage="model overloaded"))
    assert info.value.code == "upstream_error"
    assert t.done


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"message": "plain message field"}, "^plain message field$", id="fallback"),
        pytest.param(
            {"errorMessage": "  "},
            "^the gateway reported that the run failed$",
            id="blank-is-default",
        ),
        pytest.param({"errorMessage": 7, "message": "m"}, "^m$", id="not-a-string-is-skipped"),
        pytest.param({"errorMessage": "x" * 1001}, "^x{1000}$", id="one-over-the-cap"),
        pytest.param({"errorMessage": "y" * 1000}, "^y{1000}$", id="at-the-cap"),
        pytest.param({}, "^the gateway reported that the run failed$", id="default"),
        pytest.param({"errorMessage": "x" * 5000}, "^x{1000}$", id="capped"),
    ],
)
def test_error_message_paths(extra: dict[str, object], message: str):
    with pytest.raises(UpstreamRunFailed, match=message):
        accepted().feed_frame(chat("error", **extra))


def test_aborted_state_raises_aborted():
    t = accepted()
    with pytest.raises(UpstreamAborted, match=r"^stopped by user$") as info:
        t.feed_frame(chat("aborted", errorMessage="stopped by user"))
    assert info.value.code == "upstream_aborted"
    assert t.done
    assert t.feed(json.dumps(chat("delta", "late"))) == []
    assert t.frames == 1
    with pytest.raises(UpstreamAborted, match=r"^the gateway aborted the run$"):
        accepted().feed_frame(chat("aborted"))


def test_failed_response_raises_run_failed():
    t = tracker()
    failed = {"type": "res", "id": "req-1", "ok": False, "error": {"message": "no such agent"}}
    with pytest.raises(UpstreamRunFailed, match=r"^no such agent$"):
        t.feed_frame(failed)
    assert t.done
    assert not t.accepted
    with pytest.raises(UpstreamRunFailed, match=r"^the gateway refused the request$"):
        tracker().feed_frame({"type": "res", "id": "req-1", "ok": "yes"})  # only true is ok


def test_failed_final_response_is_a_disconnect():
    # Issue 6: a failed final res ends the stream like a gateway gone away.
    t = accepted()
    t.feed_frame(chat("delta", "Hel"))
    with pytest.raises(UpstreamDisconnected, match=r"^the gateway's final response failed$"):
        t.feed_frame({"type": "res", "id": "req-1", "ok": False})
    with pytest.raises(UpstreamDisconnected, match=r"^gateway restarting$"):
        accepted().feed_frame(
            {"type": "res", "id": "req-1", "ok": False, "error": {"message": "gateway restarting"}}
        )
    assert t.done
    assert t.feed_frame(chat("delta", "Hello")) == []


def test_ok_final_response_does_not_end_the_stream():
    t = accepted()
    assert t.feed_frame(res(status="ok")) == []
    assert t.final_response
    assert not t.done
    assert t.feed_frame(chat("final", "All")) == [delta("All"), terminal("All")]


def test_unknown_state_is_dropped():
    t = accepted()
    assert t.feed_frame(chat("thinking", "…")) == []
    assert t.dropped["other_state"] == 1


# --- tool events ------------------------------------------------------------------------------


def test_tool_events_are_forwarded_when_enabled():
    t = accepted(WebSocketProfile(forward_tools=True))
    frame = agent(name="search", phase="start")
    assert t.feed_frame(frame) == [Event(json.dumps(frame["payload"]), "tool")]
    assert t.feed_frame(agent("lifecycle", phase="end")) == []
    assert t.feed_frame(agent(run_id="run-2", name="x")) == []
    assert t.dropped == {"not_tool": 1, "other_run": 1}


def test_tool_events_are_dropped_by_default():
    t = accepted()
    assert t.feed_frame(agent(name="search")) == []
    assert t.dropped["tool_not_forwarded"] == 1


# --- malformed frames are counted, never raised -----------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        pytest.param("not json", "not_json", id="not-json"),
        pytest.param('{"type": "event", "x": NaN}', "not_json", id="nan"),
        pytest.param("[" * 100_000 + "]" * 100_000, "not_json", id="deep-nesting"),
        pytest.param("1" * 5000, "not_json", id="huge-int"),
        pytest.param(b'{"type": "res"}', "binary", id="binary"),
        pytest.param("[1, 2]", "not_object", id="array"),
        pytest.param('"chat"', "not_object", id="string"),
        pytest.param("{}", "missing_field", id="no-type"),
        pytest.param('{"type": 3}', "missing_field", id="type-not-string"),
        pytest.param('{"type": "res", "ok": true}', "missing_field", id="res-without-id"),
        pytest.param('{"type": "event"}', "missing_field", id="event-without-name"),
        pytest.param(json.dumps(chat("delta", "x", run_id="")), "missing_field", id="no-run-id"),
        pytest.param(json.dumps(chat("delta", "x") | {"payload": {}}), "missing_field", id="bare"),
    ],
)
def test_malformed_frames_are_counted_and_skipped(message: str | bytes, kind: str):
    t = accepted()
    assert t.feed(message) == []
    assert t.malformed == {kind: 1}
    assert t.feed(json.dumps(chat("delta", "still fine"))) == [delta("still fine")]


def test_fields_of_our_run_that_are_missing_or_mistyped():
    t = accepted()
    no_state = chat("delta", "x")
    del no_state["payload"]["state"]
    no_text = chat("delta")
    wrong_text = chat("delta", {"not": "a list"})
    no_session = chat("delta", "x")
    del no_session["payload"]["sessionKey"]
    assert feed_all(t, [no_state, no_text, wrong_text, no_session]) == []
    assert t.malformed == {"missing_field": 4}


def test_tool_event_without_payload_is_malformed():
    profile = WebSocketProfile(forward_tools=True, event=Events(tool_payload="payload.data"))
    t = accepted(profile)
    frame = agent()
    del frame["payload"]["data"]
    assert t.feed_frame(frame) == []
    assert t.malformed == {"missing_field": 1}


@pytest.mark.parametrize(
    ("message", "too_large"),
    [
        pytest.param("x" * 64, False, id="ascii-at-limit"),
        pytest.param("x" * 65, True, id="ascii-over"),
        pytest.param("é" * 32, False, id="two-byte-at-limit"),
        pytest.param("é" * 32 + "x", True, id="two-byte-over"),
        pytest.param("🙂" * 16, False, id="four-byte-at-limit"),
        pytest.param("🙂" * 16 + "x", True, id="four-byte-over"),
        pytest.param("é" * 64, True, id="as-many-characters-as-bytes-allowed"),
        pytest.param("\ud800" * 21, False, id="lone-surrogates-under"),  # 3 bytes each
        pytest.param("\ud800" * 22, True, id="lone-surrogates-over"),
        pytest.param(b"\x00" * 64, False, id="binary-at-limit"),
        pytest.param(b"\x00" * 65, True, id="binary-over"),
    ],
)
def test_frames_over_max_frame_bytes_are_skipped(message: str | bytes, too_large: bool):
    t = accepted(WebSocketProfile(max_frame_bytes=64))
    assert t.feed(message) == []
    if too_large:
        assert t.malformed == {"too_large": 1}
    else:
        # Under the limit it is looked at, and is malformed for another reason.
        assert set(t.malformed) == {"binary" if isinstance(message, bytes) else "not_json"}
    assert t.frames == 1


# --- a gateway of another shape fits by configuration -----------------------------------------


def test_another_gateway_shape():
    profile = WebSocketProfile(
        request={"kind": "start", "ref": "{request_id}", "prompt": "{body.q}"},
        request_id="ref",
        request_session_key="",
        type="kind",
        response=Responses(type="ack", id="ref", ok="accepted", run_id="job", status=""),
        event=Events(
            type="update",
            name="channel",
            chat=("text",),
            session_key="",
            run_id="job",
            state="phase",
            text="so_far",
            error_message=("why",),
        ),
        states=States(delta=("streaming",), final=("complete",), error=("failed",)),
    )
    frame = render_request(
        profile.request, body={"q": "hi"}, session_key=None, request_id="r", idempotency_key="i"
    )
    t = RunTracker.for_request(profile, frame, "done")
    assert t.request_id == "r"

    def update(job: str, phase: str, so_far: str | None = None) -> dict[str, object]:
        return {"kind": "update", "channel": "text", "job": job, "phase": phase, "so_far": so_far}

    frames = [
        update("j1", "streaming", "Hi"),
        {"kind": "ack", "ref": "r", "accepted": True, "job": "j1"},
        update("j2", "streaming", "other"),
        update("j1", "streaming", "Hi there"),
        update("j1", "complete", "Hi there."),
    ]
    assert feed_all(t, frames) == [delta("Hi"), delta(" there"), delta("."), terminal("Hi there.")]
    t2 = RunTracker.for_request(profile, frame)
    t2.feed_frame(frames[1])
    with pytest.raises(UpstreamRunFailed, match=r"^quota$"):
        t2.feed_frame(update("j1", "failed") | {"why": "quota"})


# --- properties -------------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=30)


@SETTINGS
@given(st.lists(texts, max_size=20), texts)
def test_extensions_give_deltas_that_add_up_to_the_last_text(pieces: list[str], tail: str):
    cumulative = []
    so_far = ""
    for piece in [*pieces, tail]:
        so_far += piece
        cumulative.append(so_far)
    t = accepted()
    events = feed_all(t, [chat("delta", x) for x in cumulative])
    assert all(e.event == "delta" for e in events)
    assert "".join(json.loads(e.data or "")["text"] for e in events) == cumulative[-1]


@SETTINGS
@given(st.lists(texts, min_size=1, max_size=20), st.booleans())
def test_with_resets_a_client_holds_the_last_text(cumulative: list[str], final_has_text: bool):
    t = accepted()
    client = Client()
    for text in cumulative:
        client.apply(t.feed_frame(chat("delta", text)))
        assert client.text == text == t.text
    client.apply(t.feed_frame(chat("final", cumulative[-1] if final_has_text else None)))
    assert client.text == client.final == cumulative[-1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
WORDS = ["res", "event", "chat", "agent", "delta", "final", "error", "aborted", "tool"]
field_values = st.sampled_from([*WORDS, "req-1", "run-1", SESSION, True]) | json_values
PAYLOAD_KEYS = ("runId", "sessionKey", "state", "status", "message", "stream", "errorMessage")
frames = st.dictionaries(
    st.sampled_from(["type", "id", "ok", "event", "payload"]),
    field_values
    | st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(PAYLOAD_KEYS, field_values),
    ),
)


@SETTINGS
@given(st.lists(frames | json_values | st.binary(max_size=8) | st.text(max_size=8), max_size=30))
def test_any_frames_give_events_or_our_run_errors(messages: list[object]):
    t = tracker(WebSocketProfile(forward_tools=True, max_frame_bytes=256))
    for message in messages:
        raw = message if isinstance(message, bytes | str) else json.dumps(message)
        try:
            events = t.feed(raw)
        except (UpstreamRunFailed, UpstreamAborted):
            ended_by_error = t.done
            assert ended_by_error
            continue
        assert all(
            isinstance(e, Event) and e.event in {"delta", "reset", "done", "tool"} for e in events
        )
